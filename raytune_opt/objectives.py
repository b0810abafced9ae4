"""A sweep's objectives: one metric, or several (``search.metric: [val_accuracy, latency_ms]``).

``search.metric`` and ``search.mode`` are a name and a direction, or lists of equal length.
The first objective is the *primary* one: it picks each trial's best epoch (its ``best.pt``),
the early stopping, the best trial of ``best.json`` and, unless ``promote.select`` says
otherwise, the promoted trial. With several, the non-dominated feasible trials form the
Pareto front (``pareto.csv``). ``search.constraints`` bounds metrics or deployment measures.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

#: What every trial reports about its model besides its metrics (recipe/footprint.py): the
#: deployment measures an objective or a constraint may name. All are better lower.
MEASURES = ("params", "macs", "model_bytes", "latency_ms")
#: Those known before training: a config that breaks a constraint on one is never trained.
STATIC_MEASURES = ("params", "macs", "model_bytes")
#: The status of a trial whose model breaks a constraint (results.csv).
INFEASIBLE = "infeasible"


def objectives(search: dict) -> list[tuple[str, str]]:
    """``[(metric, mode), ...]`` of a resolved ``search`` section (one or several)."""
    metric, mode = search["metric"], search["mode"]
    if isinstance(metric, str):
        return [(metric, mode if isinstance(mode, str) else mode[0])]
    modes = [mode] * len(metric) if isinstance(mode, str) else list(mode)
    return list(zip(metric, modes))


def primary(search: dict) -> tuple[str, str]:
    """The first objective: what picks best epochs, the best trial and early stopping."""
    return objectives(search)[0]


def is_multi(search: dict) -> bool:
    return len(objectives(search)) > 1


def _value(point: dict, metric: str) -> float | None:
    v = point.get(metric)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def dominates(a: dict, b: dict, objs: Sequence[tuple[str, str]]) -> bool:
    """Whether point ``a`` is at least as good as ``b`` in every objective and better in one."""
    better = False
    for metric, mode in objs:
        x, y = _value(a, metric), _value(b, metric)
        if x is None or y is None:
            return False
        if (x < y) if mode == "max" else (x > y):
            return False
        better |= x != y
    return better


def pareto_front(points: Iterable[tuple[Any, dict]], objs: Sequence[tuple[str, str]]) -> list[Any]:
    """The keys of the non-dominated points among ``(key, values)`` pairs that have every objective."""
    have = [(k, p) for k, p in points if all(_value(p, m) is not None for m, _ in objs)]
    return [k for k, p in have if not any(dominates(q, p, objs) for _, q in have if q is not p)]


def violations(values: dict, constraints: dict, only: Sequence[str] | None = None) -> list[str]:
    """What ``values`` breaks of ``constraints`` (``{key: {min: x, max: y}}``), one phrase each,
    e.g. ``"params 1.2e+06 > max 1e+06"``; ``only``: check these keys only (those known yet).
    A key without a value is not judged here."""
    out = []
    for key, bound in constraints.items():
        if only is not None and key not in only:
            continue
        v = _value(values, key)
        if v is None:
            continue
        if bound.get("max") is not None and v > bound["max"]:
            out.append(f"{key} {v:.4g} > max {bound['max']:.4g}")
        if bound.get("min") is not None and v < bound["min"]:
            out.append(f"{key} {v:.4g} < min {bound['min']:.4g}")
    return out


def constraint_values(values: dict, constraints: dict) -> dict[str, float]:
    """Optuna's constraint convention, one number per bound (``"params.max"``): <= 0 when it
    holds, else by how much it is broken, relative to the bound."""
    out = {}
    for key, bound in constraints.items():
        v = _value(values, key)
        for side, sign in (("max", 1.0), ("min", -1.0)):
            limit = bound.get(side)
            if limit is None:
                continue
            # A value not known (not measured yet) is not held against the config.
            out[f"{key}.{side}"] = 0.0 if v is None else sign * (v - limit) / max(abs(limit), 1e-12)
    return out
