"""What the report shows, read from an experiment directory: finished, running or resumed.

A finished sweep has ``results.csv`` and ``history/<trial>.csv``. A sweep still running (or a
resumed one before it ends) has only Ray Tune's per-trial files, ``trial_*/params.json`` and
``trial_*/progress.csv``; those trials are read from there and shown as ``unfinished`` (or
ok/diverged/error where their last report says so), so the page can be refreshed while the
sweep goes on.

Everything is read as data (the resolved spec.yaml, results, Tune's files): the report never
validates the spec again and imports no code the experiment names, so it is safe to run on an
experiment from elsewhere.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from raytune_opt import _records, objectives
from raytune_opt.errors import RaytuneOptError, UsageError
from raytune_opt.experiment import BEST, BUDGET, RESULTS, SPEC, history_file

# Text columns of a history file; every other column is a number (the recipe's metrics for
# either task, or whatever a user loop reported).
_TEXT_HISTORY = ("stop_reason",)


@dataclass
class Trial:
    trial_id: str
    status: str  # ok | stopped | diverged | error, or unfinished (running, or its driver died)
    stop_reason: str
    config: dict
    epochs: int
    seconds: float | None
    best: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # per epoch: {metric: float}
    order: int = 0  # the order the searcher proposed it (trial start order)
    checkpoint: str = ""
    error: str = ""


@dataclass
class Experiment:
    exp_dir: Path
    spec: dict  # the resolved spec (spec.yaml)
    space: object  # raytune_opt.space.Space
    trials: list  # of Trial, in start order
    best: dict | None  # best.json
    manifest: dict | None  # promotion/manifest.json
    finished: bool  # results.csv exists
    warm: list = field(default_factory=list)  # of Trial: search.warm_start's told trials (warm_start.json)
    budget: dict | None = None  # budget.json: search.budget's state (raytune_opt/budget.py)

    @property
    def metric(self) -> str:
        return objectives.primary(self.spec["search"])[0]

    @property
    def mode(self) -> str:
        return objectives.primary(self.spec["search"])[1]


def load(exp_dir: str | Path) -> Experiment:
    """Read an experiment directory.

    Raises:
        UsageError: the directory is not a raytune-opt experiment (no spec.yaml).
    """
    from raytune_opt.spec.resolved import read_resolved

    exp_dir = Path(exp_dir).expanduser().resolve()
    spec_path = exp_dir / SPEC
    if not spec_path.is_file():
        raise UsageError(f"{exp_dir}: not a raytune-opt experiment (no spec.yaml); pass the directory "
                         "'raytune-opt run' printed (STORAGE/NAME)")
    spec = read_resolved(spec_path, UsageError, "restore it from a copy, or run the sweep again")
    space = _space(exp_dir, spec)
    trials: dict[str, Trial] = {}
    finished = (exp_dir / RESULTS).is_file()
    if finished:
        try:
            for t in _from_results(exp_dir):
                trials[t.trial_id] = t
        except (KeyError, ValueError, csv.Error, UnicodeDecodeError) as exc:
            raise UsageError(f"{exp_dir / RESULTS}: unreadable ({type(exc).__name__}: {exc}); move it aside and "
                             "the report reads the trials' own files instead") from None
    known = {t.order for t in trials.values()}
    for t in _from_tune_dirs(exp_dir, spec, space):
        # A trial results.csv already holds (a restarted trial of a resumed sweep included,
        # under its new id) is not shown twice.
        if t.trial_id not in trials and t.order not in known:
            trials[t.trial_id] = t
    best = _json(exp_dir / BEST)
    manifest = _json(exp_dir / "promotion" / "manifest.json")
    # A field of the wrong kind: one line here, not a TypeError while the page is drawn.
    if best is not None:
        _records.check_best(best, exp_dir / BEST)
    if manifest is not None:
        _records.check_manifest(manifest, exp_dir / "promotion" / "manifest.json")
    ordered = sorted(trials.values(), key=lambda t: (t.order, t.trial_id))
    warm = _warm_trials(exp_dir, spec)
    return Experiment(exp_dir, spec, space, ordered, best, manifest, finished, budget=_json(exp_dir / BUDGET),
                      warm=warm)


def _warm_trials(exp_dir: Path, spec: dict) -> list[Trial]:
    """search.warm_start's told trials as the report shows them (status ``warm start``)."""
    from raytune_opt import warm_start

    rec = warm_start.read(exp_dir)
    metric = objectives.primary(spec["search"])[0]
    out = []
    for t in (rec or {}).get("told", ()):
        if not isinstance(t, dict) or not isinstance(t.get("config"), dict):
            continue
        best = t.get("best")
        source = Path(str(t.get("experiment", ""))).name or str(t.get("experiment", ""))
        steps = [s for s in t.get("intermediate") or () if isinstance(s, (list, tuple)) and len(s) == 2]
        out.append(Trial(f"{source}/{t.get('trial_id')}", "warm start",
                         "told, not trained" + (" (pruned there)" if t.get("state") == "pruned" else ""),
                         t["config"], len(steps), None, {metric: _num(best)} if _num(best) is not None else {},
                         [{"epoch": e, metric: v} for e, v in steps], order=-1))
    return out


def _space(exp_dir: Path, spec: dict):
    """The sweep's search space with its conditions, read as data from spec.yaml (the space as
    the sweep ran it, overrides applied). The spec is not validated again: that would import
    the code it names, and the report, a read-only view, imports no user code at all."""
    from raytune_opt.spec.validate import space_from_data

    try:
        return space_from_data(spec.get("space"), str(exp_dir / SPEC))
    except RaytuneOptError as exc:
        raise UsageError(f"{exp_dir / SPEC}: its search space does not parse ({str(exc).splitlines()[0]}); "
                         "the report needs it: restore spec.yaml from a copy") from None


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or being replaced (every writer is atomic, so only absent)


def _num(v):
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _order(trial_id: str, checkpoint: str = "") -> int:
    """The n of the trial's directory ``trial_<n>`` (or ``trial_<n>_<suffix>`` once restarted)."""
    m = re.search(r"(?:^|/)trial_(\d+)(?:_[^/]*)?(?:/|$)", checkpoint or "")
    return int(m.group(1)) if m else 1 << 30


def _history(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    out = []
    for r in rows:
        # A row longer than the header (a history appended to as it grew) has its extra
        # values under the key None: they have no name, so they are left out.
        rec = {k: _num(v) for k, v in r.items()
               if isinstance(k, str) and k not in _TEXT_HISTORY and not k.startswith("config")}
        if rec.get("epoch") is not None:
            out.append(rec)
    return out


def _from_results(exp_dir: Path) -> list[Trial]:
    with open(exp_dir / RESULTS, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i, r in enumerate(rows, start=2):
        if None in r.values() or None in r:  # a short or a long row: the file was cut or edited
            raise ValueError(f"line {i} does not have the header's columns")
        tid = r["trial_id"]
        try:
            config = json.loads(r.get("config") or "{}")
        except ValueError:
            config = {}
        best = {k.removeprefix("best_"): _num(v) for k, v in r.items() if k.startswith("best_") and _num(v) is not None}
        out.append(Trial(tid, r["status"], r.get("stop_reason", ""), config, int(float(r.get("epochs") or 0)),
                         _num(r.get("seconds")), best, _history(history_file(exp_dir, tid)),
                         _order(tid, r.get("checkpoint", "")), r.get("checkpoint", ""), r.get("error", "")))
    return out


def _from_tune_dirs(exp_dir: Path, spec: dict, space) -> list[Trial]:
    """Trials of a sweep that has not written results.csv yet, from Tune's own files."""
    from raytune_opt.searchers import flatten_config

    metric, mode = objectives.primary(spec["search"])
    latest: dict[int, Path] = {}  # a restarted trial (trial_<n>_<suffix>/) supersedes trial_<n>/
    for d in exp_dir.glob("trial_*"):
        progress = d / "progress.csv"
        n = _order("", str(d))
        if progress.is_file() and (n not in latest or progress.stat().st_mtime > (latest[n] / "progress.csv").stat().st_mtime):
            latest[n] = d
    out = []
    for n, d in sorted(latest.items()):
        progress = d / "progress.csv"
        try:
            params = json.loads((d / "params.json").read_text())
        except (OSError, ValueError):
            params = {}
        try:
            with open(progress, newline="") as f:
                raw = list(csv.DictReader(f))
        except OSError:
            continue
        if not raw:
            continue
        history = _history(progress)
        tid = raw[-1].get("trial_id") or d.name
        config = flatten_config(params, space)
        vals = [h for h in history if h.get(metric) is not None]
        best = max(vals, key=lambda h: h[metric] if mode == "max" else -h[metric]) if vals else {}
        reason = raw[-1].get("stop_reason") or ""
        status = ("error" if (d / "error.txt").is_file() else "diverged" if reason.startswith("diverged")
                  else "ok" if reason in ("completed", "early_stopping") else "unfinished")
        out.append(Trial(tid, status, reason, config, int(history[-1]["epoch"]) if history else 0,
                         _num(raw[-1].get("time_total_s")), {k: v for k, v in best.items() if v is not None},
                         history, n, str(d)))
    return out
