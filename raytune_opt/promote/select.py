"""Which trial to promote: the experiment's best trial, checked against its own files.

``best.json`` records the sweep's choice (:func:`raytune_opt.results.select_best`: the spec's
metric and mode, ties to fewer epochs). Before anything is exported we check that it agrees
with the spec and with ``results.csv``, and that its checkpoint is there and belongs to it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from raytune_opt import _records, objectives, results, storage
from raytune_opt._paths import ensure_under
from raytune_opt.experiment import BEST, RESULTS, SPEC
from raytune_opt.promote.errors import NoSuccessfulTrialError, NotAnExperimentError
from raytune_opt.spec.resolved import read_resolved

_RERUN = "run the sweep again ('raytune-opt run SPEC') or pass another experiment directory"


@dataclass(frozen=True)
class Source:
    """The trial being promoted and the experiment it comes from."""

    exp_dir: Path
    spec: dict  # the resolved spec the sweep ran (spec.yaml)
    trial_id: str
    metric: str
    mode: str
    value: float
    epochs: int
    config: dict
    checkpoint: Path  # best.pt of the trial
    checkpoint_sha256: str
    spec_sha256: str
    checkpoint_origin: str = ""  # where best.json says it is (an s3:// URI for S3 experiments)
    rule: dict | None = None  # promote.select's rule and why it chose this trial (None: best.json's best)

    @property
    def promote_cfg(self) -> dict:
        return self.spec["promote"]


def select_source(exp_dir: str | Path) -> Source:
    """Find and check the best trial of the experiment in ``exp_dir``.

    Raises:
        NotAnExperimentError: ``exp_dir`` is missing or holds no ``spec.yaml``.
        NoSuccessfulTrialError: no ``best.json``, or it disagrees with the spec or
            ``results.csv``, or its checkpoint is missing or from another sweep.
    """
    exp_dir = Path(exp_dir).expanduser().resolve()
    spec_path = exp_dir / SPEC
    if not exp_dir.is_dir() or not spec_path.is_file():
        what = "does not exist" if not exp_dir.exists() else "holds no spec.yaml"
        raise NotAnExperimentError(
            f"{exp_dir}: not a raytune-opt experiment ({what}); pass the directory 'raytune-opt run' wrote, "
            f"STORAGE/NAME (e.g. ./results/sweep)")
    spec = read_resolved(spec_path, NotAnExperimentError, _RERUN, sections=("promote",))
    metric, mode = objectives.primary(spec["search"])
    if spec["promote"].get("select"):
        return _selected(exp_dir, spec, spec["promote"]["select"])

    best_path = exp_dir / BEST
    if not best_path.is_file():
        raise NoSuccessfulTrialError(f"{exp_dir}: no successful trial to promote (no best.json; "
                                     f"{_trial_summary(exp_dir)}); {_RERUN}")
    best = _read_best(best_path)
    if (best.get("metric"), best.get("mode")) != (metric, mode):
        raise NoSuccessfulTrialError(
            f"{best_path}: selected by {best.get('metric')} ({best.get('mode')}) but the spec optimizes "
            f"{metric} ({mode}); the files do not belong together, {_RERUN}")
    expected = _best_in_results(exp_dir, metric, mode)
    if expected is not None and expected != best.get("trial_id"):
        raise NoSuccessfulTrialError(
            f"{best_path}: names trial {best.get('trial_id')} but results.csv's best by {metric} ({mode}) is trial "
            f"{expected}; the files disagree, {_RERUN}")

    return _source(exp_dir, spec, best, metric, mode)


def _source(exp_dir: Path, spec: dict, best: dict, metric: str, mode: str, rule: dict | None = None) -> Source:
    checkpoint = locate_checkpoint(exp_dir, best, (spec.get("storage") or {}).get("endpoint_url"))
    from raytune_opt.recipe.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)  # CheckpointError (exit 2) when unreadable
    spec_sha = best.get("spec_sha256") or ""
    if spec_sha and ckpt.get("spec_sha256") and ckpt["spec_sha256"] != spec_sha:
        raise NoSuccessfulTrialError(
            f"{checkpoint}: written by another sweep (spec sha256 {ckpt['spec_sha256'][:12]}, best.json has "
            f"{spec_sha[:12]}); {_RERUN}")
    return Source(exp_dir=exp_dir, spec=spec, trial_id=str(best["trial_id"]), metric=metric, mode=mode,
                  value=float(best["value"]), epochs=int(best.get("epochs") or 0),
                  config=dict(best.get("config") or {}), checkpoint=checkpoint,
                  checkpoint_sha256=sha256_file(checkpoint), spec_sha256=spec_sha,
                  checkpoint_origin=str(best["checkpoint"]) if storage.is_remote(best["checkpoint"]) else "",
                  rule=rule)


def _direction(spec: dict, metric: str, given: str | None) -> str:
    from raytune_opt.spec.schema import METRICS

    return (given or dict(objectives.objectives(spec["search"])).get(metric) or METRICS.get(metric)
            or ("min" if metric in objectives.MEASURES else "max"))


def _selected(exp_dir: Path, spec: dict, select: dict) -> Source:
    """The trial ``promote.select`` picks: the best by its metric among the successful trials of
    results.csv whose best epoch keeps every bound of ``where``.

    Raises:
        NoSuccessfulTrialError: no results.csv, a column the rule reads is missing, or no trial
            keeps the bounds.
    """
    metric, where = select["metric"], select.get("where") or {}
    mode = _direction(spec, metric, select.get("mode"))
    path = exp_dir / RESULTS
    if not path.is_file():
        raise NoSuccessfulTrialError(f"{exp_dir}: no results.csv to apply promote.select to; {_RERUN}")
    with open(path, newline="") as f:
        recs = list(csv.DictReader(f))
    for key in (metric, *where):
        if recs and f"best_{key}" not in recs[0]:
            raise NoSuccessfulTrialError(f"{path}: promote.select reads {key}, which no trial reported (no best_{key} "
                                         "column); select by a metric or measure the trials report")
    ok = [r for r in recs if r.get("status") in ("ok", "stopped") and _float(r.get(f"best_{metric}")) is not None]
    values = [{k: _float(r.get(f"best_{k}")) for k in (metric, *where)} for r in ok]
    keep = [(r, v) for r, v in zip(ok, values) if not objectives.violations(v, where)
            and all(v[k] is not None for k in where)]
    bounds = ", ".join(f"{k} {side} {b[side]:g}" for k, b in where.items() for side in ("min", "max") if side in b)
    if not keep:
        raise NoSuccessfulTrialError(
            f"{path}: no successful trial keeps promote.select.where ({bounds}); {len(ok)} successful trial(s) "
            "were judged: loosen the bounds, or set promote.select: null to promote the best trial")
    sign = 1 if mode == "max" else -1
    rec, vals = max(keep, key=lambda rv: (sign * rv[1][metric], -int(_float(rv[0].get("epochs")) or 0)))
    why = (f"the best {metric} ({mode}) = {vals[metric]:.6g} among {len(keep)} of {len(ok)} successful trials"
           + (f" with {bounds}" if bounds else ""))
    best = {"trial_id": rec["trial_id"], "value": vals[metric], "epochs": rec.get("epochs"),
            "config": json.loads(rec.get("config") or "{}"),
            "checkpoint": f"{rec['checkpoint'].rstrip('/')}/best.pt" if rec.get("checkpoint") else None,
            "spec_sha256": _best_sha(exp_dir)}
    return _source(exp_dir, spec, best, metric, mode, rule={"select": select, "why": why})


def _best_sha(exp_dir: Path) -> str:
    """The sweep's spec hash, as best.json records it (checkpoints carry the same)."""
    try:
        return str(json.loads((exp_dir / BEST).read_text()).get("spec_sha256") or "")
    except (OSError, ValueError):
        return ""


def _read_best(path: Path) -> dict:
    """best.json, checked for what promotion reads from it.

    Raises:
        NoSuccessfulTrialError: truncated, not JSON, or without a trial id and a numeric value.
    """
    try:
        best = json.loads(path.read_text())
        ok = isinstance(best, dict) and "trial_id" in best and float(best.get("value")) == float(best.get("value"))
    except (ValueError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise NoSuccessfulTrialError(f"{path}: unreadable or truncated (needs trial_id and a numeric value); {_RERUN}")
    _records.check_best(best, path, NoSuccessfulTrialError)
    return best


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def locate_checkpoint(exp_dir: Path, best: dict, endpoint_url: str | None = None) -> Path:
    """best.json's checkpoint, or the same file under ``exp_dir`` when the experiment was moved.

    A checkpoint on S3 (``s3://...``) is downloaded into ``exp_dir/.checkpoints/`` first.
    """
    recorded = best.get("checkpoint")
    if not recorded:
        raise NoSuccessfulTrialError(f"{exp_dir / BEST}: trial {best.get('trial_id')} has no checkpoint "
                                     f"(was train.checkpoint false?); promotion needs one, {_RERUN}")
    if storage.is_remote(recorded):
        problem = storage.s3_problem(recorded)
        if problem:
            raise NoSuccessfulTrialError(f"{exp_dir / BEST}: checkpoint {recorded!r}: {problem}; {_RERUN}")
        local = exp_dir.joinpath(".checkpoints", *recorded.split("/")[-3:])
        ensure_under(local, exp_dir / ".checkpoints", "the local copy of the best trial's checkpoint")
        if not local.is_file():
            storage.download(recorded, local, storage.resolve_endpoint(endpoint_url))
        return local
    path = Path(recorded)
    if path.is_file():
        return path
    # trial_<id>/checkpoint_NNNNNN/best.pt: the last three parts survive copying the experiment elsewhere.
    moved = exp_dir.joinpath(*path.parts[-3:])
    if moved.is_file():
        return moved
    raise NoSuccessfulTrialError(f"{exp_dir}: the best trial's checkpoint {recorded} is missing (also looked for "
                                 f"{moved}); restore it or {_RERUN}")


def _read_rows(exp_dir: Path, metric: str) -> list[results.TrialRow] | None:
    path = exp_dir / RESULTS
    if not path.is_file():
        return None
    rows = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            value = _float(rec.get(f"best_{metric}"))
            rows.append(results.TrialRow(
                trial_id=rec.get("trial_id", ""), status=rec.get("status", ""), stop_reason=rec.get("stop_reason", ""),
                config={}, epochs=int(_float(rec.get("epochs")) or 0), seconds=0.0, train_seconds=0.0,
                best={metric: value} if value is not None else {}, checkpoint=rec.get("checkpoint") or None))
    return rows


def _best_in_results(exp_dir: Path, metric: str, mode: str) -> str | None:
    rows = _read_rows(exp_dir, metric)
    best = results.select_best(rows, metric, mode) if rows else None
    return best.trial_id if best is not None else None


def _trial_summary(exp_dir: Path) -> str:
    rows = _read_rows(exp_dir, "val_accuracy")
    if rows is None:
        return "no results.csv either: the sweep did not finish"
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    if not counts:
        return "results.csv lists no trials"
    return "results.csv: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "; see its error column"


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
