"""Searchers: which one can take which space, and (lazily) the Ray Tune adapter for each.

A searcher only proposes configs. Unconditional spaces go to Ray as Tune domains and Ray
converts them for Optuna / HyperOpt itself; conditional spaces, which Tune domains cannot
express, are written as an Optuna define-by-run function or a HyperOpt nested ``hp.choice``.
"""

from __future__ import annotations

import functools
import os
import pickle
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
    if key == "hyperopt":
        # HyperOpt nests conditional parameters inside the branches of their parent's
        # hp.choice: each parameter may hang from one parent (which may itself hang).
        for p in space.params:
            if p.conditions:
                parent = space.by_key.get(p.conditions[-1].parent)
                if parent is None or parent.conditions != p.conditions[:-1] or parent.domain.kind != "choice":
                    out.append((p.key, "hyperopt needs each conditional parameter to depend on one choice "
                                "(got conditions on several parameters)",
                                "nest the sub-space under one choice, or use search.algorithm: optuna"))
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


# ---------------------------------------------------------------- the Ray adapters


def _seed(spec) -> int:
    s = spec.data["search"]["seed"]
    return spec.data["seed"] if s is None else s


def _optuna_sampler(name: str, seed: int):
    import optuna

    return {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }[name]()


class OptunaDefineByRun:
    """An Optuna define-by-run function: only active parameters are suggested.

    A class, not a closure: Ray pickles the searcher's state with the experiment.
    """

    def __init__(self, space: Space):
        self.space = space

    def __call__(self, trial) -> None:
        values: dict = {}
        for p in self.space.params:
            if self.space.is_active(p.key, values):
                values[p.key] = _suggest(trial, p)
        return None  # Ray keeps exactly the suggested values


def _suggest(trial, p):
    kind, a = p.domain.kind, p.domain.args
    if kind == "choice":
        return trial.suggest_categorical(p.key, list(a))
    if kind == "uniform":
        return trial.suggest_float(p.key, a[0], a[1])
    if kind == "quniform":
        return trial.suggest_float(p.key, a[0], a[1], step=a[2])
    if kind == "loguniform":
        return trial.suggest_float(p.key, a[0], a[1], log=True)
    if kind == "randint":
        return trial.suggest_int(p.key, a[0], a[1] - 1)
    if kind == "qrandint":
        return trial.suggest_int(p.key, a[0], a[1], step=a[2])
    if kind == "lograndint":
        return trial.suggest_int(p.key, a[0], a[1] - 1, log=True)
    raise AssertionError(f"validation lets no {kind} reach Optuna")


_BRANCH = "__value__"  # key holding a choice's own value inside its hyperopt branch dict


def hyperopt_space(space: Space) -> dict:
    """A native HyperOpt space in which conditional parameters live inside ``hp.choice`` branches."""
    from hyperopt import hp
    import numpy as np

    children: dict[tuple, list] = {}
    roots = []
    for p in space.params:
        if p.conditions:
            cond = p.conditions[-1]
            for v in cond.values:
                children.setdefault((cond.parent, v), []).append(p)
        else:
            roots.append(p)

    def node(p, label: str):
        kind, a = p.domain.kind, p.domain.args
        if kind == "choice":
            if not any((p.key, v) in children for v in a):
                return hp.choice(label, list(a))
            return hp.choice(label, [{_BRANCH: v, **group(children.get((p.key, v), []), f"{label}={v}/")}
                                     for v in a])
        if kind == "uniform":
            return hp.uniform(label, a[0], a[1])
        if kind == "quniform":
            return hp.quniform(label, a[0], a[1], a[2])
        if kind == "loguniform":
            return hp.loguniform(label, np.log(a[0]), np.log(a[1]))
        if kind == "qloguniform":
            return hp.qloguniform(label, np.log(a[0]), np.log(a[1]), a[2])
        if kind == "normal":
            return hp.normal(label, a[0], a[1])
        if kind == "randint":
            return hp.uniformint(label, a[0], a[1] - 1)
        if kind == "qrandint":
            return hp.quniform(label, a[0], a[1], a[2])
        if kind == "lograndint":
            return hp.qloguniform(label, np.log(a[0]), np.log(a[1] - 1), 1)
        raise AssertionError(f"validation lets no {kind} reach HyperOpt")

    def group(params, prefix: str) -> dict:
        return {p.key: node(p, prefix + p.key) for p in params}

    return group(roots, "")


def flatten_config(config: dict, space: Space) -> dict:
    """A trial's config as flat ``{dotted key: value}`` of active parameters only.

    HyperOpt hands back conditional branches as nested dicts; integer domains come back
    as floats from ``quniform``/``qloguniform``.
    """
    flat: dict = {}

    def walk(d: dict) -> None:
        for key, value in d.items():
            if isinstance(value, dict) and _BRANCH in value:
                flat[key] = value[_BRANCH]
                walk({k: v for k, v in value.items() if k != _BRANCH})
            else:
                flat[key] = value

    walk(config)
    for key, value in flat.items():
        p = space.by_key.get(key)
        if p is not None and p.domain.integer and isinstance(value, float):
            flat[key] = int(round(value))
    return space.prune({k: v for k, v in flat.items() if k in space.by_key})


@functools.cache
def _limiter_class():
    from ray.tune.search import ConcurrencyLimiter

    class ResumableLimiter(ConcurrencyLimiter):
        """Ray's ConcurrencyLimiter, whose saved state includes its own.

        Ray's saves only the searcher it wraps: after a resume it has forgotten the trials that
        were running, drops their completions (``trial_id not in self.live_trials``) and the
        searcher never learns their results. Here one file holds both states.
        """

        def save(self, checkpoint_path: str) -> None:
            inner = checkpoint_path + ".inner"
            self.searcher.save(inner)
            try:
                with open(inner, "rb") as f:
                    state = {"limiter": self.get_state(), "searcher": f.read()}
            finally:
                os.unlink(inner)
            with open(checkpoint_path, "wb") as f:
                pickle.dump(state, f)

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path, "rb") as f:
                state = pickle.load(f)
            inner = checkpoint_path + ".inner"
            with open(inner, "wb") as f:
                f.write(state["searcher"])
            try:
                self.searcher.restore(inner)
            finally:
                os.unlink(inner)
            self.set_state(state["limiter"])

    ResumableLimiter.__module__ = __name__
    return ResumableLimiter


def build_searcher(spec):
    """``(search_alg, param_space)`` for ``tune.Tuner`` as the spec asks, seeded from the spec."""
    search = spec.data["search"]
    space = spec.space
    key = searcher_key(search["algorithm"], search["sampler"])
    seed = _seed(spec)
    metric, mode = search["metric"], search["mode"]
    limit = spec.data["resources"]["max_concurrent_trials"] or 0
    searcher, param_space = _searcher(spec, key, seed, metric, mode, limit)
    from ray.tune.search import Searcher

    if limit and isinstance(searcher, Searcher):  # a generator limits itself
        searcher = _limiter_class()(searcher, max_concurrent=limit)
    return searcher, param_space


def _searcher(spec, key: str, seed: int, metric: str, mode: str, limit: int):
    space = spec.space
    if not space or (key in ("grid", "random") and not space.is_conditional):
        # An empty space runs num_samples copies of the fixed config, whatever the algorithm.
        # A generator takes the concurrency limit itself.
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=limit), space.to_tune()
    if key.startswith("optuna") or key == "random":
        from ray.tune.search.optuna import OptunaSearch

        sampler = _optuna_sampler("random" if key == "random" else spec.data["search"]["sampler"], seed)
        if space.is_conditional:
            return OptunaSearch(space=OptunaDefineByRun(space), metric=metric, mode=mode, sampler=sampler), {}
        return OptunaSearch(metric=metric, mode=mode, sampler=sampler), space.to_tune()
    assert key == "hyperopt", key
    from ray.tune.search.hyperopt import HyperOptSearch

    if space.is_conditional:
        return HyperOptSearch(space=hyperopt_space(space), metric=metric, mode=mode, random_state_seed=seed), {}
    return HyperOptSearch(metric=metric, mode=mode, random_state_seed=seed), space.to_tune()
