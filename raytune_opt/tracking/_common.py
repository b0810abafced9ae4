"""What both trackers share: the recipe's per-epoch metrics and flat configs."""

from __future__ import annotations

import math

# The recipe's per-epoch numbers (what history/<trial>.csv holds), not Ray's bookkeeping.
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "grad_norm",
                 "lr", "samples_per_s", "epoch_s", "rank_param_max_diff")


def epoch_metrics(result: dict) -> tuple[int | None, dict]:
    """(epoch, {metric: finite float}) of one Tune result."""
    epoch = result.get("epoch")
    out = {}
    for k in EPOCH_METRICS:
        v = result.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return (int(epoch) if isinstance(epoch, (int, float)) else None), out


def flat_config(trial, spec) -> dict:
    """The trial's active config as flat dotted keys (HyperOpt branches unfolded)."""
    from raytune_opt.searchers import flatten_config

    return flatten_config(trial.config or {}, spec.space)
