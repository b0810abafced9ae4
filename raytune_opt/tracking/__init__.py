"""Trackers: TensorBoard event files, MLflow runs and W&B runs, as Ray Tune callbacks in the driver.

``callbacks(spec, loc)`` is called before Ray starts: an MLflow tracker that cannot be
reached is a one-line :class:`UsageError` then (exit 2), not minutes into the sweep. Once the
sweep runs, a tracker that fails warns once and never fails a trial (the sweep's own files
are the record; trackers are views of it).

Ray Tune's own TBXLoggerCallback is replaced, not used: it writes into each trial's Ray
directory with every Ray-internal key and ``training_iteration`` as the step, and makes Tune
print a ``tensorboard --logdir /tmp/ray/...`` pointer to a directory nothing here fills on
purpose. Ours writes ``EXPERIMENT/tensorboard/<trial>/`` with the recipe's metrics per
epoch and the hparams plugin's summary. Ray's MLflowLoggerCallback makes one flat run per
trial; we need a parent run with nested trial runs, flat (active) config keys as params and
epoch steps, so that one is ours too. W&B's is ours for reasons given in tracking/wandb.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from raytune_opt import redact
from raytune_opt import storage as stores
from raytune_opt._warn import first_line, keep_traceback
from raytune_opt.errors import UsageError
from raytune_opt.experiment import BEST, REPORT, RESULTS

__all__ = ["callbacks", "check", "check_mlflow", "log_sweep_artifacts", "QUIET_LOGGERS"]

MLFLOW_RUN = "mlflow_run.json"  # the parent run's id, for the artifacts logged after promotion
WANDB_RUN = "wandb_run.json"  # the W&B runs' project and ids, for the best tag and the sweep-level run


def callbacks(spec, loc: stores.Location) -> list:
    """The Tune callbacks the spec's ``tracking`` section asks for (checked now, before Ray starts).

    Raises:
        MissingDependencyError: MLflow or W&B is configured but not installed.
        UsageError: the MLflow tracking URI or (online) W&B cannot be reached, or W&B has no API key.
    """
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    tcfg = spec.settings.tracking
    out = [CSVLoggerCallback(), JsonLoggerCallback()]
    if tcfg.tensorboard:
        from raytune_opt.tracking.tensorboard import TensorBoardCallback

        out.append(TensorBoardCallback(loc.local / "tensorboard", spec))
    ml = tcfg.mlflow
    if ml.tracking_uri:
        experiment = ml.experiment or spec.name
        uri = redact.usable(redact.remember(ml.tracking_uri))
        if redact.lost_credentials(ml.tracking_uri) and not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
            print(f"raytune-opt: warning: tracking.mlflow.tracking_uri {ml.tracking_uri}: the experiment keeps no "
                  "password; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD if the server needs them",
                  file=sys.stderr)
        check_mlflow(uri, experiment)
        from raytune_opt.tracking.mlflow import MLflowCallback

        out.append(MLflowCallback(uri, experiment, spec, loc.local))
    wb = tcfg.wandb
    if wb.project:
        from raytune_opt.tracking import wandb as wandb_tracking

        mode = wandb_tracking.check_wandb(wb.mode)
        if mode != "disabled":  # W&B's disabled runs log nothing: no callback, no W&B process
            out.append(wandb_tracking.WandbCallback(spec, loc.local, loc.uri, mode))
    return out


def check(view) -> list:
    """The ``tracking`` section's rules across keys (``validate`` calls it; imports no W&B).

    Args:
        view: a :class:`raytune_opt.registry.SpecView`.

    Returns:
        :class:`raytune_opt.registry.Finding` s.
    """
    from raytune_opt import _imports
    from raytune_opt.registry import Finding
    from raytune_opt.spec.checker import fmt

    wb, out = view.settings.tracking.wandb, []
    if wb.project is None:
        for key in ("entity", "group", "mode"):
            if view.given(("tracking", "wandb", key)) and wb[key] is not None:
                out.append(Finding(("tracking", "wandb", key), f"does nothing without tracking.wandb.project (got "
                                   f"{fmt(wb[key])})", f"set tracking.wandb.project: NAME, or remove tracking.wandb.{key}",
                                   reads="tracking.wandb.project"))
    elif wb.mode != "disabled" and not _imports.is_available("wandb"):
        out.append(Finding(("tracking", "wandb", "project"), f"W&B tracking needs the Python package 'wandb', which "
                           f"is not installed (got project {fmt(wb.project)})",
                           "install the wandb extra: pip install 'raytune-opt[wandb]'"))
    return out


# No TBX logger from Tune (nor its /tmp/ray pointer) while our sweep runs, for run and resume:
# Tune adds CSV, JSON and TBX loggers unless told not to; ``callbacks`` passes the first two
# itself (Tune's experiment analysis and the report's view of a running sweep read them), and
# a resumed Tuner gets them back from its saved state. Set only around the fit (sweep.py).
QUIET_LOGGERS = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


def check_mlflow(uri: str, experiment: str, timeout_s: float = 5.0) -> None:
    """Reach the tracking server (or open the store) and find or create the experiment.

    Raises:
        MissingDependencyError: mlflow is not installed.
        UsageError: the tracker cannot be reached, in one line.
    """
    from raytune_opt._imports import require

    require("mlflow", "tracking.mlflow")
    # MLflow's HTTP client retries for minutes by default; a check must answer fast.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_s)))
    from raytune_opt.tracking._common import mlflow_client

    try:
        client = mlflow_client(uri)
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment)
    except Exception as exc:  # MlflowException, requests' ConnectionError, sqlalchemy's OperationalError...
        first = redact.redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
        raise UsageError(f"tracking.mlflow.tracking_uri {redact.redact(uri)}: cannot reach MLflow ({first[:200]}); start the "
                         "server (mlflow server --host 127.0.0.1 --port 5000), fix the URI, or set "
                         "tracking.mlflow.tracking_uri: null") from None


def log_sweep_artifacts(exp_dir: str | Path) -> None:
    """Log the best checkpoint, the promotion (manifest and models) and report.html to the sweep's
    parent MLflow run; tag the best trial's W&B run and write the W&B sweep-level run with the
    leaderboard. Nothing for a tracker the sweep did not have. Warns, never raises."""
    import json

    exp_dir = Path(exp_dir)
    if (exp_dir / WANDB_RUN).is_file():
        from raytune_opt.tracking.wandb import finish_sweep

        finish_sweep(exp_dir)  # warns, never raises
    try:
        rec = json.loads((exp_dir / MLFLOW_RUN).read_text())
    except (OSError, ValueError):
        return
    try:
        from raytune_opt.tracking._common import mlflow_client

        client = mlflow_client(redact.usable(rec["tracking_uri"]))
        run_id = rec["parent_run_id"]
        try:
            best = json.loads((exp_dir / BEST).read_text())
        except (OSError, ValueError):
            best = {}
        if best.get("checkpoint") and Path(best["checkpoint"]).is_file():
            client.log_artifact(run_id, best["checkpoint"], artifact_path="best")
            client.log_artifact(run_id, str(exp_dir / BEST), artifact_path="best")
        promotion = exp_dir / "promotion"
        if (promotion / "manifest.json").is_file():
            client.log_artifacts(run_id, str(promotion), artifact_path="promotion")
        for name in (REPORT, RESULTS):
            if (exp_dir / name).is_file():
                client.log_artifact(run_id, str(exp_dir / name))
    except Exception as exc:  # a tracker is a view; the files in exp_dir are the record
        where = keep_traceback(exp_dir, "MLflow artifacts", exc)
        print(redact.redact(f"raytune-opt: warning: MLflow artifacts not logged ({type(exc).__name__}: "
                            f"{first_line(exc)}){where}"), file=sys.stderr)
