"""Warm start and enqueued configs: what a sweep knows before its first proposal.

``search.warm_start`` names earlier experiments. Their finished trials (config, and the last
value of every objective: what the earlier sweep's searcher was told) are read as data, the
way the report reads an experiment (no code it names is imported), checked against today's
space, and told to the searcher before it proposes (:class:`Told`); they are not trained
again. A trial a scheduler stopped is told as Optuna's own pruners leave one: PRUNED, with its
epochs' values. ``search.enqueue`` lists configs trained first, as given.

Ray's ``points_to_evaluate`` + ``evaluated_rewards`` cover only part of this (Optuna over a
Tune space, complete trials of one objective; HyperOpt takes no rewards at all), so the
Optuna and HyperOpt adapters in :mod:`raytune_opt.searchers` tell the studies themselves
(``study.add_trial``; finished HyperOpt trial documents).

This module imports neither torch nor Ray: :func:`check` runs during validation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raytune_opt import _atomic, objectives, registry
from raytune_opt.errors import UsageError
from raytune_opt.space import Param, Space

# What an experiment keeps of its warm start (its told trials and the lines said about them).
WARM_START = "warm_start.json"
FORMAT = "raytune-opt/warm-start/v1"


@dataclass(frozen=True)
class Told:
    """One earlier trial as the searcher is told it."""

    experiment: str  # where it ran (a directory or s3:// URI)
    trial_id: str
    config: dict  # flat {space key: value}, the keys active in today's space
    values: tuple  # the last reported value of each objective (search.metric order)
    state: str  # "complete" | "pruned" (stopped by a scheduler)
    intermediate: tuple = ()  # ((epoch, value of the first objective), ...)
    best: float | None = None  # the first objective's best epoch value (the report's history)


# ---------------------------------------------------------------- validation (no IO)

def domain_problem(p: Param, value: Any) -> str | None:
    """Why ``value`` is not in ``p``'s domain (None: it is)."""
    kind, a = p.domain.kind, p.domain.args
    if p.domain.categorical:
        return None if any(value == o and type(value) is type(o) or _same_number(value, o) for o in a) \
            else f"not one of {list(a)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "not a finite number"
    if p.domain.integer and float(value) != int(value):
        return "not an integer"
    if kind == "normal":
        return None
    low, high = a[0], a[1]
    inclusive = kind not in ("randint", "lograndint")  # Ray's randint/lograndint exclude high
    if value < low or value > high or (not inclusive and value >= high):
        return f"outside [{low}, {high}{']' if inclusive else ')'}"
    return None


def _same_number(a, b) -> bool:
    return (isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)


def _inactive(space: Space, config: dict) -> list[str]:
    return [k for k in config if k in space.by_key and not space.is_active(k, config)]


def check(view: registry.SpecView) -> list[registry.Finding]:
    """The rules of ``search.enqueue`` and ``search.warm_start`` that need no file."""
    from raytune_opt.storage import is_remote, s3_problem

    search, space = view.data["search"], view.space
    out: list[registry.Finding] = []
    for i, uri in enumerate(search.get("warm_start") or ()):
        problem = s3_problem(uri) if is_remote(uri) else None
        if problem:
            out.append(registry.Finding(("search", "warm_start", i), f"{problem} (got {uri!r})",
                                        "or name a local experiment directory"))
    enqueue = search.get("enqueue") or ()
    if not enqueue:
        return out
    if not space:
        return out + [registry.Finding(("search", "enqueue"), "there is no search space to enqueue configs of",
                                       "add a space, or remove search.enqueue", reads="search.enqueue")]
    entry = registry.SEARCHERS[search["algorithm"]]
    if not entry.meta.get("enqueue") and search["algorithm"] != "grid":
        takes = [n for n in registry.SEARCHERS if registry.SEARCHERS[n].meta.get("enqueue")]
        return out + [registry.Finding(("search", "enqueue"), f"search.algorithm {search['algorithm']} does not take "
                                       "enqueued configs", f"use search.algorithm: {' / '.join(takes)}, or remove "
                                       "search.enqueue", reads="search.algorithm")]
    grid = [p.key for p in space.params if p.domain.kind == "grid"]
    if search["algorithm"] == "grid" or grid:
        return out + [registry.Finding(("search", "enqueue"), "grid search already trains every grid point (grid "
                                       f"keys: {', '.join(grid) or 'all'})", "use choice instead of grid, or remove "
                                       "search.enqueue", reads="search.algorithm")]
    if search["num_samples"] is not None and len(enqueue) > search["num_samples"]:
        out.append(registry.Finding(("search", "enqueue"), f"{len(enqueue)} configs but search.num_samples is "
                                    f"{search['num_samples']}", f"raise search.num_samples to at least {len(enqueue)} "
                                    "or enqueue fewer", reads="search.num_samples"))
    for i, config in enumerate(enqueue):
        if entry.meta["enqueue"] == "complete":  # hyperopt, bohb: they cannot sample the rest of a given point
            given = {k: v for k, v in config.items() if k in space.by_key}
            missing = [p.key for p in space.params if p.key not in given and space.is_active(p.key, given)]
            if missing:
                out.append(registry.Finding(("search", "enqueue", i), f"{search['algorithm']} needs every active key of an "
                                            f"enqueued config (missing: {', '.join(missing)})", "give a value for each "
                                            "(or use search.algorithm: optuna, which samples the keys left out)"))
        for key, value in config.items():
            p = space.by_key.get(key)
            if p is None:
                known = ", ".join(space.by_key)
                out.append(registry.Finding(("search", "enqueue", i, key), "not a key of the search space "
                                            f"(got {key}: {value!r})", f"use one of {known}, or add {key} to space"))
                continue
            problem = domain_problem(p, value)
            if problem:
                out.append(registry.Finding(("search", "enqueue", i, key), f"{problem} (got {value!r})",
                                            f"give a value in its domain: {p.domain.describe()}"))
        for key in _inactive(space, {k: v for k, v in config.items() if k in space.by_key}):
            cond = space.by_key[key].conditions[-1]
            out.append(registry.Finding(("search", "enqueue", i, key), f"inactive in this config (it exists only "
                                        f"when {cond.parent} is one of {list(cond.values)})",
                                        f"remove {key}, or set {cond.parent} to one of {list(cond.values)}"))
    return out


def learns(search: dict) -> bool:
    """Whether the sweep's searcher learns from told results (random and grid do not)."""
    entry = registry.SEARCHERS[search["algorithm"]]
    if not entry.meta["explores"]:
        return False
    if entry.meta["caps"] == "sampler":  # Optuna: every sampler but random learns
        return registry.OPTUNA_SAMPLERS[search["sampler"]].meta.get("learns", True)
    return True


def enqueued(spec) -> list[dict]:
    """``search.enqueue`` with integer domains' values as ints (YAML may write 64.0)."""
    return [{k: _as_in_domain(spec.space.by_key[k], v) for k, v in config.items()}
            for config in spec.data["search"].get("enqueue") or ()]


# ---------------------------------------------------------------- reading earlier experiments

@dataclass
class WarmStart:
    told: list  # of Told
    lines: list  # what was said about them (kept, left out and why)
    sources: list  # the experiments read

    def to_json(self) -> dict:
        return {"format": FORMAT, "sources": self.sources, "lines": self.lines,
                "told": [asdict(t) for t in self.told]}


def load(spec, this_uri: str | None = None, endpoint_url: str | None = None) -> WarmStart | None:
    """Read ``search.warm_start``'s experiments and keep the trials today's space can take.

    Raises:
        UsageError: an experiment is missing or unreadable, names this sweep itself, or
            optimized another metric or mode.
    """
    uris = spec.data["search"].get("warm_start") or []
    if not uris:
        return None
    objs = objectives.objectives(spec.data["search"])
    told: list[Told] = []
    lines: list[str] = []
    sources = []
    for uri in uris:
        exp, where = _read(uri, this_uri, endpoint_url)
        sources.append(where)
        theirs = objectives.objectives(exp.spec.get("search") or {})
        if theirs != objs:
            said = ", ".join(f"{m} ({d})" for m, d in theirs)
            ours = ", ".join(f"{m} ({d})" for m, d in objs)
            raise UsageError(f"search.warm_start {uri}: that sweep optimized {said}, this one {ours}; warm-start "
                             "only from sweeps of the same search.metric and search.mode (or remove it)")
        kept, left = _trials(exp, spec, where, objs)
        told += kept
        line = f"warm start: {len(kept)} of {len(kept) + sum(left.values())} trial(s) of {where} kept"
        if left:
            line += " (left out: " + "; ".join(f"{n} {why}" for why, n in left.items()) + ")"
        lines.append(line)
    if not learns(spec.data["search"]):
        from raytune_opt.searchers import searcher_key

        name = searcher_key(spec.data["search"]["algorithm"], spec.data["search"]["sampler"])
        lines.append(f"warm start: {name} does not learn from results; the {len(told)} earlier trial(s) are not "
                     "used (search.algorithm: optuna or hyperopt would use them)")
    return WarmStart(told, lines, sources)


def _read(uri: str, this_uri: str | None, endpoint_url: str | None):
    from raytune_opt import storage
    from raytune_opt.experiment import HISTORY, RESULTS, SPEC
    from raytune_opt.report.data import load as load_experiment

    loc = storage.from_uri(uri, endpoint_url)
    if this_uri is not None and loc.uri.rstrip("/") == str(this_uri).rstrip("/"):
        raise UsageError(f"search.warm_start {uri}: that is this sweep's own experiment; name an earlier one")
    if loc.remote:
        try:
            loc.fetch(SPEC, RESULTS, HISTORY)
        except UsageError as exc:
            raise UsageError(f"search.warm_start {uri}: {exc}") from None
    if not (loc.local / SPEC).is_file():
        raise UsageError(f"search.warm_start {uri}: not a raytune-opt experiment (no {SPEC} at "
                         f"{loc.uri if loc.remote else loc.local}); name "
                         "the directory an earlier 'raytune-opt run' printed (STORAGE/NAME)")
    try:
        exp = load_experiment(loc.local)
    except UsageError as exc:
        raise UsageError(f"search.warm_start {uri}: {str(exc).splitlines()[0]}") from None
    return exp, loc.uri


def _trials(exp, spec, where: str, objs: list) -> tuple[list[Told], dict[str, int]]:
    """The experiment's trials today's space can take, and how many were left out, by why."""
    space: Space = spec.space
    # A key today's space has that theirs did not: the value the earlier sweep held it at.
    held = {p.key: v for p in space.params if exp.space is not None and p.key not in exp.space.by_key
            and (v := _value_at(exp.spec, p.key)) is not _MISSING}
    left: dict[str, int] = {}
    kept = []

    def leave(why: str) -> None:
        left[why] = left.get(why, 0) + 1

    for t in exp.trials:
        if t.status not in ("ok", "stopped"):
            leave(f"{t.status}")
            continue
        config = space.prune({**held, **t.config})
        gone = [k for k in config if k not in space.by_key and _value_at(spec.data, k) != config[k]]
        if gone:
            leave(f"with a key no longer searched at another value ({gone[0]})")
            continue
        config = {k: v for k, v in config.items() if k in space.by_key}
        missing = [p.key for p in space.params if p.key not in config and space.is_active(p.key, config)]
        if missing:
            leave(f"without a value of {missing[0]}")
            continue
        bad = next((k for k in config if domain_problem(space.by_key[k], config[k])), None)
        if bad is not None:
            leave(f"outside today's domain ({bad})")
            continue
        config = {k: _as_in_domain(space.by_key[k], v) for k, v in config.items()}
        metric = objs[0][0]
        steps = tuple((int(h["epoch"]), float(h[metric])) for h in t.history
                      if h.get(metric) is not None and h.get("epoch") is not None)
        last = next((h for h in reversed(t.history) if all(h.get(m) is not None for m, _ in objs)), None)
        if t.status == "stopped":
            if not steps:
                leave("stopped before any value")
                continue
            kept.append(Told(where, t.trial_id, config, (), "pruned", steps, _best(steps, objs[0][1])))
            continue
        if last is None:
            leave(f"without a value of every objective ({', '.join(m for m, _ in objs)})")
            continue
        kept.append(Told(where, t.trial_id, config, tuple(float(last[m]) for m, _ in objs), "complete", steps,
                         _best(steps, objs[0][1])))
    return kept, left


def _as_in_domain(p: Param, value):
    """``value`` as the domain writes it: a choice's own option (a CSV's 0.0 is the option 0),
    an integer domain's int."""
    if p.domain.categorical:
        return next(o for o in p.domain.args if o == value)
    return int(value) if p.domain.integer else value


def _best(steps: tuple, mode: str) -> float | None:
    vals = [v for _, v in steps if math.isfinite(v)]
    return (max(vals) if mode == "max" else min(vals)) if vals else None


_MISSING = object()


def _value_at(data: dict, key: str):
    """The setting at dotted ``key`` of a resolved spec (``_MISSING``: no such setting, or a section)."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return _MISSING if isinstance(node, dict) else node


# ---------------------------------------------------------------- the experiment's record

def write(exp_dir: Path, warm: WarmStart) -> None:
    _atomic.write_json(Path(exp_dir) / WARM_START, warm.to_json())


def read(exp_dir: Path) -> dict | None:
    """An experiment's warm-start record (None: it had none, or it cannot be read)."""
    import json

    try:
        rec = json.loads((Path(exp_dir) / WARM_START).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or not isinstance(rec.get("told"), list):
        return None
    return rec
