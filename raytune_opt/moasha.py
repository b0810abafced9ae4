"""Multi-objective asynchronous successive halving (MO-ASHA): the rung decision.

Schmucker et al., 2021, "Multi-objective multi-fidelity hyperparameter optimization with
application to fairness" (MO-ASHA), after Syne Tune's ``MOASHA``: ASHA's rungs, with the
trials that reached a rung ranked by non-dominated sorting over the objectives instead of by
one metric. Within a front, ties are broken by Syne Tune's default, the epsilon-net of
Salinas et al. (2021): the member best in the first objective first, then, again and again,
the member farthest from those already picked (here in objectives scaled to the rung's range,
so that an accuracy and a latency in milliseconds weigh alike; identical points keep the order
they reached the rung in). Infeasible trials (they break ``search.constraints``) and trials
missing an objective rank after every feasible one.

A trial that reaches a rung continues when its rank among the trials recorded there (itself
included) is within the top ``ceil(n / reduction_factor)``, and is stopped otherwise: the
stopping form of ASHA that Ray's ``ASHAScheduler`` implements. Earlier decisions are never
revisited. The Ray scheduler around this is :func:`raytune_opt.schedulers.moasha`.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

CONTINUE, STOP = "CONTINUE", "STOP"


def milestones(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """The rungs' epochs, ascending: ``grace_period * rf**k`` up to ``max_t`` (as Ray's ASHA)."""
    n = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1 + 1e-9)
    return sorted({int(round(grace_period * reduction_factor ** k)) for k in range(max(n, 1))})


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Lower is better in every coordinate."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _epsilon_net(points: list[Sequence[float]], members: list[int], scale: list[float]) -> list[int]:
    """``members`` (indices into ``points``, in arrival order) ordered farthest-first, from
    the member best in the first objective."""
    def dist(i: int, j: int) -> float:
        return math.sqrt(sum(((points[i][d] - points[j][d]) / scale[d]) ** 2 for d in range(len(scale))))

    first = min(members, key=lambda i: (points[i][0], members.index(i)))
    order, left = [first], [i for i in members if i != first]
    while left:
        # max() keeps the first of equal distances: arrival order breaks exact ties.
        pick = max(left, key=lambda i: min(dist(i, j) for j in order))
        order.append(pick)
        left.remove(pick)
    return order


def nondominated_order(points: list[Sequence[float]]) -> list[int]:
    """Indices of ``points`` (each a vector, lower better in every coordinate), best first:
    front by front, each front in epsilon-net order."""
    if not points:
        return []
    dims = len(points[0])
    scale = []
    for d in range(dims):
        lo, hi = min(p[d] for p in points), max(p[d] for p in points)
        scale.append(hi - lo if hi > lo else 1.0)
    remaining, order = list(range(len(points))), []
    while remaining:
        front = [i for i in remaining if not any(_dominates(points[j], points[i]) for j in remaining if j != i)]
        order += _epsilon_net(points, front, scale)
        remaining = [i for i in remaining if i not in front]
    return order


@dataclass
class Point:
    """One trial's result at a rung: its objectives (lower better) and whether it is feasible."""

    values: list[float] | None  # None: an objective was missing or not finite
    feasible: bool


def rank(points: dict[str, Point]) -> list[str]:
    """Trial ids best first: feasible trials by non-dominated sorting, then infeasible ones
    (sorted alike among themselves), then those without every objective."""
    ids = list(points)
    out = []
    for group in ([t for t in ids if points[t].feasible and points[t].values is not None],
                  [t for t in ids if not points[t].feasible and points[t].values is not None]):
        out += [group[i] for i in nondominated_order([points[t].values for t in group])]
    return out + [t for t in ids if points[t].values is None]


@dataclass
class Rungs:
    """MO-ASHA's bookkeeping: the points recorded at each rung, and the trials it stopped.

    Plain data (:meth:`to_dict` / :meth:`from_dict`), so that the Ray scheduler can keep it in
    the experiment and a resumed sweep decides as the killed one would have."""

    milestones: list[int]
    reduction_factor: float
    recorded: dict[int, dict[str, Point]] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)

    def __post_init__(self):
        for m in self.milestones:
            self.recorded.setdefault(m, {})

    def on_result(self, trial_id: str, t: float, point: Point) -> str:
        """The decision for ``trial_id`` reporting ``point`` at epoch ``t``."""
        if trial_id in self.stopped:
            return STOP  # a resumed sweep may start a trial again that was stopped before the kill
        for m in reversed(self.milestones):
            if t < m or trial_id in self.recorded[m]:
                continue
            rung = self.recorded[m]
            rung[trial_id] = point
            place = rank(rung).index(trial_id)
            if place >= math.ceil(len(rung) / self.reduction_factor):
                self.stopped.add(trial_id)
                return STOP
            break
        return CONTINUE

    def record(self, trial_id: str, t: float, point: Point) -> None:
        """Record a finished trial's last point at the highest rung it reached (no decision)."""
        for m in reversed(self.milestones):
            if t >= m:
                self.recorded[m].setdefault(trial_id, point)
                return

    def to_dict(self) -> dict:
        return {"milestones": self.milestones, "reduction_factor": self.reduction_factor,
                "recorded": {str(m): {t: {"values": p.values, "feasible": p.feasible} for t, p in rung.items()}
                             for m, rung in self.recorded.items()},
                "stopped": sorted(self.stopped)}

    @classmethod
    def from_dict(cls, d: dict) -> "Rungs":
        recorded = {int(m): {t: Point(p["values"], p["feasible"]) for t, p in rung.items()}
                    for m, rung in d["recorded"].items()}
        return cls(list(d["milestones"]), float(d["reduction_factor"]), recorded, set(d["stopped"]))


def point_of(result: dict, objectives: Sequence[tuple[str, str]], constraints: dict | None) -> Point:
    """A result's :class:`Point`: objectives sign-adjusted so that lower is better; infeasible
    when it breaks a constraint or its trial says so (``stop_reason``)."""
    from raytune_opt.objectives import INFEASIBLE, violations

    values = []
    for metric, mode in objectives:
        v = result.get(metric)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            values = None
            break
        values.append(-float(v) if mode == "max" else float(v))
    feasible = not violations(result, constraints or {}) and \
        not str(result.get("stop_reason") or "").startswith(INFEASIBLE)
    return Point(values, feasible)
