"""The sweep report: ``EXPERIMENT/report.html`` and an Optuna journal for optuna-dashboard.

``write_report(exp)`` reads whatever the experiment holds now (a finished, running or
resumed sweep) and writes one self-contained HTML page (inline SVG, no network). The CLI and
the API pass :func:`callbacks` (the Tune callback that refreshes the page while trials
finish) to the sweep, call :func:`after_sweep` when it ends and :func:`after_promotion` after
its promotion; the sweep itself does not know the report exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

from raytune_opt import _atomic
from raytune_opt._warn import first_line, keep_traceback
from raytune_opt import storage as stores
from raytune_opt.errors import RaytuneOptError, UsageError
from raytune_opt.experiment import BEST, BUDGET, HISTORY, REPORT, RESULTS, RUN_INPUT, RUN_META, SPEC

__all__ = ["REPORT", "write_report", "after_sweep", "after_promotion", "callbacks"]


def write_report(exp_dir: str | Path, out: str | Path | None = None, *, journal: bool = True,
                 endpoint_url: str | None = None) -> Path:
    """Build the report of an experiment and write it atomically.

    Args:
        exp_dir: the experiment directory (STORAGE/NAME) or ``s3://BUCKET/PREFIX/NAME``.
        out: where to write the page (default ``EXPERIMENT/report.html``); then nothing else is
            written (the experiment stays as it is: a view of it may be all a reader may do).
        journal: also write ``EXPERIMENT/optuna.journal.log`` (the trials as an Optuna study),
            unless ``out`` is given.
        endpoint_url: S3-compatible endpoint of an ``s3://`` experiment.

    Returns:
        The path of the page.

    Raises:
        UsageError: not an experiment directory, or the S3 experiment cannot be read.
    """
    from raytune_opt.report import data, page, study

    loc = stores.from_uri(str(exp_dir), endpoint_url)
    if loc.remote:  # the driver's small files; trials' files stay in the bucket
        # RUN_INPUT and RUN_META: the search space is rebuilt from them.
        loc.fetch(RUN_INPUT, RUN_META, SPEC, RESULTS, BEST, BUDGET, "promotion/manifest.json")
        if loc.exists(HISTORY):
            loc.fetch(HISTORY)
    exp = data.load(loc.local)
    st = study.build_study(exp)
    importance = study.importances(st)
    html = page.render(exp, importance, _best_checkpoint(exp, loc))
    target = Path(out).expanduser().resolve() if out else loc.local / REPORT
    _atomic.write_text(target, html)
    if journal and out is None:
        study.write_journal(st, loc.local)
    if loc.remote and out is None:
        loc.publish(REPORT, *([study.JOURNAL] if journal else []))
    return target


def _best_checkpoint(exp, loc: stores.Location) -> dict | None:
    """The best trial's best.pt (its config, metrics and validation confusion matrix), or None."""
    path = (exp.best or {}).get("checkpoint")
    if not path:
        return None
    from raytune_opt.recipe.checkpoint import load_checkpoint
    from raytune_opt.recipe.errors import CheckpointError

    try:
        if stores.is_remote(path):
            path = stores.download(path, loc.local / ".report" / "best.pt", loc.endpoint_url)
        ckpt = load_checkpoint(path)
    except (CheckpointError, OSError, UsageError):
        return None
    ckpt.pop("model_state", None)
    ckpt.pop("optimizer_state", None)
    return ckpt


def after_sweep(loc: stores.Location) -> Path | None:
    """Write the report when a run or resume ends; a failure warns and never fails the sweep."""
    try:
        return write_report(loc.uri, endpoint_url=loc.endpoint_url)
    except Exception as exc:  # the sweep's results are written already; the page is a view of them
        where = keep_traceback(loc.local, "report", exc) if not isinstance(exc, RaytuneOptError) else ""
        print(f"raytune-opt: warning: the report could not be written ({type(exc).__name__}: "
              f"{first_line(exc)}){where}; run 'raytune-opt report {loc.uri}'",
              file=sys.stderr)
        return None


def after_promotion(outcome) -> Path | None:
    """The report again after the sweep's own promotion (the sweep's page did not have it
    yet), then MLflow's artifacts; the report's path, if there is one.

    Args:
        outcome: the :class:`~raytune_opt.sweep.SweepOutcome` of a run or a resume.
    """
    from raytune_opt import tracking

    if outcome.spec.data["promote"]["enabled"]:
        page = after_sweep(stores.from_uri(outcome.where, outcome.spec.data["storage"]["endpoint_url"]))
    else:
        page = outcome.exp_dir / REPORT
    tracking.log_sweep_artifacts(outcome.exp_dir)
    return page if page is not None and page.is_file() else None


def callbacks(loc: stores.Location) -> list:
    """Tune callbacks that refresh ``report.html`` as trials finish (throttled).

    None for an ``s3://`` experiment: Tune writes its trials' files straight to the bucket, so
    the local mirror has nothing to show before the sweep ends (the page is written then).
    """
    if loc.remote:
        return []
    from raytune_opt.report.refresh import RefreshReport  # imports Ray: only where a sweep runs

    return [RefreshReport(loc.local)]
