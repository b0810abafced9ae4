"""What both trackers share: the recipe's per-epoch metrics and flat configs."""

from __future__ import annotations

import math

from raytune_opt.spec import schema

# The recipe's per-epoch numbers (what history/<trial>.csv holds), not Ray's bookkeeping.
EPOCH_METRICS = (*schema.METRICS, *schema.EPOCH_STATS)


def mlflow_client(tracking_uri: str):
    """MLflow's client, with MLflow's own usage telemetry off unless the user set
    ``MLFLOW_DISABLE_TELEMETRY`` (:data:`raytune_opt.ray_runtime.NO_TELEMETRY_ENV`): the tracker
    talks to the user's tracking server and nothing else."""
    from raytune_opt.ray_runtime import no_telemetry

    no_telemetry()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def epoch_metrics(result: dict, *metrics: str) -> tuple[int | None, dict]:
    """(epoch, {metric: finite float}) of one Tune result: the recipe's numbers and the sweep's
    ``metrics`` (a user loop may report ones of its own)."""
    epoch = result.get("epoch")
    out = {}
    for k in (*EPOCH_METRICS, *(m for m in metrics if m not in EPOCH_METRICS)):
        v = result.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return (int(epoch) if isinstance(epoch, (int, float)) else None), out


def flat_config(trial, spec) -> dict:
    """The trial's active config as flat dotted keys (HyperOpt branches unfolded)."""
    from raytune_opt.searchers import flatten_config

    return flatten_config(trial.config or {}, spec.space)
