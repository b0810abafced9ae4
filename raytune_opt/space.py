"""The search space: YAML domains -> one in-memory representation -> Ray Tune domains.

A space maps dotted recipe keys (``train.optimizer.lr``) to domains::

    train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}
    model.dropout: {uniform: [0.0, 0.5], when: {model.name: mlp}}
    train.optimizer.name:
      choice:                       # a choice whose options carry sub-spaces
        sgd: {train.optimizer.momentum: {uniform: [0.8, 0.99]}}
        adamw: {}

Conditional parameters (``when`` or nested under a choice option) exist in a trial's
config only while their parent holds one of the listed values. Bounds follow Ray Tune:
``randint``/``lograndint`` exclude ``high``, ``qrandint`` includes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

NUMERIC_KINDS = {
    # kind: (number of args, integer domain, log scale, quantized)
    "uniform": (2, False, False, False),
    "quniform": (3, False, False, True),
    "loguniform": (2, False, True, False),
    "qloguniform": (3, False, True, True),
    "randint": (2, True, False, False),
    "qrandint": (3, True, False, True),
    "lograndint": (2, True, True, False),
    "normal": (2, False, False, False),
}
CATEGORICAL_KINDS = ("choice", "grid")
KINDS = tuple(NUMERIC_KINDS) + CATEGORICAL_KINDS


@dataclass(frozen=True)
class Domain:
    """One dimension: a kind and its arguments (bounds, q, or categories)."""

    kind: str
    args: tuple

    @property
    def categorical(self) -> bool:
        return self.kind in CATEGORICAL_KINDS

    @property
    def integer(self) -> bool:
        return self.kind in NUMERIC_KINDS and NUMERIC_KINDS[self.kind][1]

    def to_tune(self):
        """The equivalent ``ray.tune`` domain (``tune.grid_search`` dict for grids)."""
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "normal":
            return tune.randn(*self.args)
        return getattr(tune, self.kind)(*self.args)

    def describe(self) -> str:
        if self.categorical:
            return f"{self.kind} of {len(self.args)}: {list(self.args)}"
        return f"{self.kind}{list(self.args)}"


@dataclass(frozen=True)
class Condition:
    """Active only while ``parent`` holds one of ``values``."""

    parent: str
    values: tuple


@dataclass(frozen=True)
class Param:
    key: str
    domain: Domain
    conditions: tuple = ()  # of Condition, all must hold


class Space:
    """An ordered set of parameters, parents before their conditional children."""

    def __init__(self, params: list[Param]):
        self.params = tuple(params)
        self.by_key = {p.key: p for p in self.params}
        assert len(self.by_key) == len(self.params), "duplicate keys must be rejected at parse time"

    def __len__(self) -> int:
        return len(self.params)

    def __bool__(self) -> bool:
        return bool(self.params)

    @property
    def is_conditional(self) -> bool:
        return any(p.conditions for p in self.params)

    def grid_size(self) -> int:
        """Points in the grid (product of the grid dimensions; 1 without any)."""
        return math.prod(len(p.domain.args) for p in self.params if p.domain.kind == "grid")

    def is_active(self, key: str, config: dict) -> bool:
        """Whether ``key`` belongs in a config whose other values are ``config``."""
        for cond in self.by_key[key].conditions:
            if cond.parent not in config or not self.is_active(cond.parent, config):
                return False
            if config[cond.parent] not in cond.values:
                return False
        return True

    def prune(self, config: dict) -> dict:
        """Drop the space keys that are inactive under ``config``; other keys stay."""
        return {k: v for k, v in config.items() if k not in self.by_key or self.is_active(k, config)}

    def to_tune(self) -> dict:
        """Flat ``{key: ray.tune domain}`` for the searchers that take Tune domains.

        Conditional spaces cannot be written as plain Tune domains; their searchers
        (Optuna define-by-run, HyperOpt nested choices) convert from :attr:`params`.
        """
        assert not self.is_conditional, "conditional spaces are converted per searcher"
        return {p.key: p.domain.to_tune() for p in self.params}

    def summary(self) -> list[str]:
        lines = []
        for p in self.params:
            cond = "".join(f"  [when {c.parent} in {list(c.values)}]" for c in p.conditions)
            lines.append(f"{p.key}: {p.domain.describe()}{cond}")
        return lines


def apply(base: dict, flat: dict[str, Any]) -> dict:
    """Return a deep copy of the nested ``base`` with dotted ``flat`` keys set."""
    import copy

    out = copy.deepcopy(base)
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
