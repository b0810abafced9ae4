"""What both trackers share: the recipe's per-epoch metrics, flat configs, warn-once."""

from __future__ import annotations

import math
import sys

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


class WarnOnce:
    """A tracker that fails mid-sweep says so once, on stderr, and then stays quiet.

    The warning is one line; the traceback goes to the experiment's ``warnings.log`` (a
    tracker is a view, so it never fails the sweep, but a bug in it must stay findable).
    """

    def __init__(self, name: str, exp_dir=None):
        self.name, self.exp_dir, self.warned = name, exp_dir, False

    def __call__(self, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            where = keep_traceback(self.exp_dir, self.name, exc)
            print(f"raytune-opt: warning: {self.name} failed ({type(exc).__name__}: {first[:200]}); the sweep goes "
                  f"on without it{where}", file=sys.stderr, flush=True)


WARNINGS_LOG = "warnings.log"


def keep_traceback(exp_dir, what: str, exc: BaseException) -> str:
    """Append ``exc``'s traceback to ``exp_dir/warnings.log``; the text to add to the warning line."""
    import time
    import traceback
    from pathlib import Path

    if exp_dir is None:
        return ""
    path = Path(exp_dir) / WARNINGS_LOG
    try:
        with open(path, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n{''.join(traceback.format_exception(exc))}")
    except OSError:
        return ""
    return f" (traceback in {path})"
