"""The experiment directory's layout: its file names, the run record and the code directories.

``STORAGE/NAME`` (or ``s3://BUCKET/PREFIX/NAME`` and its local mirror) holds what the sweep
wrote (``RUN_INPUT``, ``RUN_META``, ``SPEC`` before the first trial; ``RESULTS``, ``HISTORY``,
``BEST`` and, for several objectives, ``PARETO`` when it ends), the trials' own ``trial_*/``
and what later steps add (``REPORT``, ``promotion/``). The sweep, the results, promotion, the
report and the API name these files through this module only.

Torch-free and Ray-free: ``import raytune_opt`` and validation import it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from raytune_opt import _atomic
from raytune_opt import storage as stores
from raytune_opt._paths import ensure_under
from raytune_opt.errors import UsageError
from raytune_opt.redact import redact, redact_data

if TYPE_CHECKING:
    from raytune_opt.spec import Spec

__all__ = ["RUN_META", "RUN_INPUT", "RUN_FORMAT", "SPEC", "RESULTS", "BEST", "HISTORY", "PARETO", "REPORT",
           "BUDGET", "history_file", "write_inputs", "read_record", "record_problem", "recorded_storage",
           "code_dirs_of"]

RUN_META = "raytune_opt_run.json"  # the run record: marks an experiment directory; read by resume
RUN_INPUT = "spec.input.yaml"  # the spec file as given, re-validated on resume
RUN_FORMAT = "raytune-opt/experiment/v1"
SPEC = "spec.yaml"  # the resolved spec the sweep ran (overrides applied, defaults filled in)
RESULTS = "results.csv"  # one row per trial
BEST = "best.json"  # the best trial, and its test record
HISTORY = "history"  # one CSV per trial: its epochs
PARETO = "pareto.csv"  # several objectives: the non-dominated trials
REPORT = "report.html"
BUDGET = "budget.json"  # search.budget's state: time and resource-hours spent, why it ended (raytune_opt/budget.py)


def history_file(exp_dir: str | Path, trial_id: str) -> Path:
    """The trial's epochs: ``history/<trial_id>.csv``."""
    return Path(exp_dir) / HISTORY / f"{trial_id}.csv"


def write_inputs(loc: stores.Location, spec: Spec, source_text: str, dry_run: bool) -> None:
    """The experiment's first files, then uploaded: what ``resume`` needs to rebuild exactly this sweep.

    Raises:
        UsageError: the directory cannot be written.
    """
    exp_dir = loc.local
    if loc.remote and exp_dir.exists():  # a stale mirror of an earlier experiment of that name
        ensure_under(exp_dir, stores.mirror_root(), f"the stale local mirror of {loc.uri}")
        shutil.rmtree(exp_dir)
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        # Credentials in URIs are redacted here too (resume asks the environment for them).
        _atomic.write_text(exp_dir / RUN_INPUT, redact(source_text))
        _atomic.write_json(exp_dir / RUN_META, {"format": RUN_FORMAT, "spec_source": spec.source,
                                                "overrides": redact_data(list(spec.overrides)), "dry_run": dry_run,
                                                "spec_sha256": spec.sha256(), "storage": redact(loc.uri),
                                                "endpoint_url": loc.endpoint_url,
                                                "code_dirs": list(spec.code_dirs)})
        _atomic.write_text(exp_dir / SPEC, spec.to_yaml())
    except OSError as exc:
        raise UsageError(f"storage.path {exp_dir.parent}: cannot write the experiment there ({exc.strerror or exc}); "
                         "pass --storage DIR with a writable directory") from None
    loc.publish(RUN_INPUT, RUN_META, SPEC)


def read_record(exp_dir: Path) -> dict:
    """The run record of the experiment in ``exp_dir``, its fields checked.

    Raises:
        UsageError: not an experiment directory, or its record is unreadable, from another
            format, or has a field of the wrong kind.
    """
    meta_path = exp_dir / RUN_META
    if not exp_dir.is_dir():
        raise UsageError(f"{exp_dir}: not a directory; pass the experiment directory (STORAGE/NAME)")
    if not meta_path.is_file() or not (exp_dir / RUN_INPUT).is_file():
        raise UsageError(f"{exp_dir}: not a raytune-opt experiment (no {RUN_META}); pass the directory "
                         "'raytune-opt run' printed (STORAGE/NAME)")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a mapping")
        fmt = meta.get("format")
        meta["overrides"], meta["dry_run"], meta["spec_sha256"]
    except (ValueError, KeyError):
        raise UsageError(f"{meta_path}: unreadable or truncated; the experiment cannot be resumed") from None
    if fmt != RUN_FORMAT:
        raise UsageError(f"{meta_path}: written by another raytune-opt version (format {fmt!r}, "
                         f"this one reads {RUN_FORMAT!r}); start a new sweep")
    problem = record_problem(meta)
    if problem:
        raise UsageError(f"{meta_path}: {problem}; the run record is damaged: restore it from a copy, or start a new "
                         "sweep with 'raytune-opt run'")
    return meta


def _strings(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# The run record's fields that resume reads: what each must be.
_RECORD_FIELDS = {
    "overrides": (_strings, "a list of strings"),
    "dry_run": (lambda v: isinstance(v, bool), "true or false"),
    "spec_sha256": (lambda v: isinstance(v, str), "a string"),
    "code_dirs": (lambda v: v is None or _strings(v), "a list of strings"),
    "storage": (lambda v: v is None or isinstance(v, str), "a string"),
}


def record_problem(meta: dict) -> str | None:
    """What is wrong with the run record's fields (their types, the storage URI), or None."""
    for key, (ok, want) in _RECORD_FIELDS.items():
        if key in meta and not ok(meta[key]):
            return f"{key} must be {want} (got {json.dumps(meta[key])[:80]})"
    storage = meta.get("storage")
    problem = stores.s3_problem(storage) if stores.is_remote(storage) else None
    return f"storage {storage!r}: {problem}" if problem else None


def recorded_storage(exp_dir: Path):
    """The record's ``storage`` as written, unchecked (the record must exist); None when it does not parse
    (:func:`read_record` then says what is wrong)."""
    try:
        return json.loads((exp_dir / RUN_META).read_text()).get("storage")
    except (ValueError, AttributeError):
        return None


def code_dirs_of(exp_dir: str | Path) -> list[str]:
    """Where the sweep in ``exp_dir`` imported user code from (its run file; none for older runs)."""
    try:
        dirs = json.loads((Path(exp_dir) / RUN_META).read_text()).get("code_dirs") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [d for d in dirs if isinstance(d, str)]
