"""Searchers: which one can take which space, and (lazily) the Ray Tune adapter for each.

A searcher only proposes configs. Unconditional spaces go to Ray as Tune domains and Ray
converts them for Optuna / HyperOpt itself; conditional spaces, which Tune domains cannot
express, are written as an Optuna define-by-run function or a HyperOpt nested ``hp.choice``.
"""

from __future__ import annotations

from dataclasses import dataclass

from raytune_opt.space import Space


@dataclass(frozen=True)
class Capabilities:
    """What a searcher can express. Refusals are found before Ray starts."""

    grid: bool  # tune.grid_search dimensions
    conditional: bool
    normal: bool
    categorical: bool
    qloguniform: bool  # Ray's Optuna adapter silently drops the quantization: we refuse instead
    all_grid: bool = False  # every dimension must be a grid


CAPABILITIES = {
    "grid": Capabilities(grid=True, conditional=False, normal=False, categorical=True, qloguniform=False,
                         all_grid=True),
    "random": Capabilities(grid=True, conditional=True, normal=True, categorical=True, qloguniform=True),
    "optuna/tpe": Capabilities(grid=False, conditional=True, normal=False, categorical=True, qloguniform=False),
    "optuna/random": Capabilities(grid=False, conditional=True, normal=False, categorical=True, qloguniform=False),
    "optuna/gp": Capabilities(grid=False, conditional=False, normal=False, categorical=True, qloguniform=False),
    "optuna/cmaes": Capabilities(grid=False, conditional=False, normal=False, categorical=False, qloguniform=False),
    "hyperopt": Capabilities(grid=False, conditional=True, normal=True, categorical=True, qloguniform=True),
}


def searcher_key(algorithm: str, sampler: str) -> str:
    return f"optuna/{sampler}" if algorithm == "optuna" else algorithm


def refusals(space: Space, key: str) -> list[tuple[str, str, str]]:
    """Why searcher ``key`` cannot take ``space``: a list of (space key, what, fix)."""
    caps = CAPABILITIES[key]
    out = []
    for p in space.params:
        kind = p.domain.kind
        if caps.all_grid and kind != "grid":
            out.append((p.key, f"grid search needs every dimension to be a grid (got {kind})",
                        "write {grid: [...]} or use search.algorithm: random/optuna/hyperopt"))
        elif kind == "grid" and not caps.grid:
            out.append((p.key, f"{key} cannot take a grid dimension",
                        "use {choice: [...]} or search.algorithm: grid/random"))
        elif kind == "normal" and not caps.normal:
            out.append((p.key, f"{key} cannot sample a normal distribution",
                        "use uniform, or search.algorithm: hyperopt/random"))
        elif kind == "qloguniform" and not caps.qloguniform:
            out.append((p.key, f"{key} cannot quantize a log-uniform dimension",
                        "use loguniform or lograndint, or search.algorithm: hyperopt/random"))
        elif kind in ("choice", "grid") and not caps.categorical:
            out.append((p.key, f"{key} cannot search categorical dimensions",
                        "use search.sampler: tpe or gp, or make the dimension numeric"))
        if p.conditions and not caps.conditional:
            out.append((p.key, f"{key} cannot search conditional parameters",
                        "use search.algorithm: optuna with sampler tpe, hyperopt or random"))
    if key == "random" and space.is_conditional:
        # Conditional random search runs on Optuna's RandomSampler (define-by-run).
        for p in space.params:
            if p.domain.kind in ("grid", "normal"):
                out.append((p.key, f"random search over a conditional space cannot take a {p.domain.kind} "
                            "dimension", "use choice/uniform, or search.algorithm: hyperopt"))
    return out


def accepting(space: Space) -> list[str]:
    """The searcher keys that can take ``space``."""
    return [k for k in CAPABILITIES if not refusals(space, k)]
