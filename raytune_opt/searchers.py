"""Searchers: which one can take which space, and (lazily) the Ray Tune adapter for each.

The searchers and Optuna's samplers are entries of :data:`raytune_opt.registry.SEARCHERS`
and :data:`~raytune_opt.registry.OPTUNA_SAMPLERS` (their names, capabilities and rules);
the adapters below are their targets. A searcher only proposes configs. Unconditional spaces go to Ray as Tune domains and Ray
converts them for Optuna / HyperOpt itself; conditional spaces, which Tune domains cannot
express, are written as an Optuna define-by-run function or a HyperOpt nested ``hp.choice``.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import sys
import random
from dataclasses import dataclass

from raytune_opt import objectives as objectives_
from raytune_opt import registry
from raytune_opt.space import Space


# The most trials one sweep may plan (search.num_samples times a grid's points): Tune keeps
# every trial's state in the driver (~70 ms of its CPU each at 1,000 trials, issue 14), so a
# larger count is a typo or a grid that multiplied out, not a sweep anyone can wait for.
MAX_TRIALS = 100_000


def planned_trials(search: dict, space: Space) -> int | None:
    """Trials a sweep will run: grid and random repeat every grid point num_samples times;
    None: as many as search.budget allows (num_samples null)."""
    if search["num_samples"] is None:
        return None
    grid = space.grid_size() if search["algorithm"] in ("grid", "random") else 1
    return search["num_samples"] * grid


@dataclass(frozen=True)
class Capabilities:
    """What a searcher can express. Refusals are found before Ray starts."""

    grid: bool  # tune.grid_search dimensions
    conditional: bool
    normal: bool
    categorical: bool
    qloguniform: bool  # Ray's Optuna adapter silently drops the quantization: we refuse instead
    all_grid: bool = False  # every dimension must be a grid


def capabilities(algorithm: str, sampler: str = "tpe") -> Capabilities:
    """What searcher ``algorithm`` (with Optuna sampler ``sampler``) can express, from the registries."""
    caps = registry.SEARCHERS[algorithm].meta["caps"]
    if caps == "sampler":
        caps = registry.OPTUNA_SAMPLERS[sampler].meta["caps"]
    return Capabilities(**caps)


def searcher_key(algorithm: str, sampler: str) -> str:
    """How a searcher is shown: ``optuna/<sampler>`` for Optuna, else the algorithm."""
    return f"optuna/{sampler}" if registry.SEARCHERS[algorithm].meta["caps"] == "sampler" else algorithm


def capabilities_markdown() -> str:
    """The README's table of what each searcher can take, generated from the registries."""
    rows = ["| searcher | grid | conditional | normal | categorical | qloguniform |", "|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for algorithm, sampler in searcher_keys():
        caps = capabilities(algorithm, sampler)
        # Refused only inside a conditional space (the searcher's own check says so).
        only_flat = {kind for kind in ("grid", "normal", "qloguniform")
                     if getattr(caps, kind) and caps.conditional and _refuses_when_conditional(algorithm, kind)}
        cells = []
        for kind in ("grid", "conditional", "normal", "categorical", "qloguniform"):
            if caps.all_grid:
                cells.append({"grid": "only grids", "categorical": "via grid"}.get(kind, "no"))
            else:
                cells.append(yes[getattr(caps, kind)] + ("*" if kind in only_flat else ""))
        label = f"`{algorithm}` + `{sampler}`" if searcher_key(algorithm, sampler) != algorithm else f"`{algorithm}`"
        rows.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(rows)


def _refuses_when_conditional(algorithm: str, kind: str) -> bool:
    from raytune_opt.space import Condition, Domain, Param

    args = {"grid": (1, 2), "normal": (0.0, 1.0), "qloguniform": (1.0, 10.0, 1.0)}[kind]
    space = Space([Param("a", Domain("choice", ("x", "y"))),
                   Param("b", Domain(kind, args), (Condition("a", ("x",)),))])
    view = registry.SpecView({"search": {"algorithm": algorithm}}, space, lambda path: False)
    return bool(registry.SEARCHERS[algorithm].checks(view))


def searcher_keys() -> list[tuple[str, str]]:
    """Every (algorithm, sampler) a spec can choose (the sampler matters to Optuna only)."""
    out = []
    for algorithm in registry.SEARCHERS:
        samplers = registry.OPTUNA_SAMPLERS.names() if registry.SEARCHERS[algorithm].meta["caps"] == "sampler" \
            else ("tpe",)
        out += [(algorithm, s) for s in samplers]
    return out


def refusals(space: Space, algorithm: str, sampler: str = "tpe") -> list[tuple[str, str, str]]:
    """Why the searcher cannot take ``space``: a list of (space key, what, fix)."""
    key = searcher_key(algorithm, sampler)
    caps = capabilities(algorithm, sampler)
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
    view = registry.SpecView({"search": {"algorithm": algorithm, "sampler": sampler}}, space, lambda path: False)
    out += [(f.at, f.what, f.fix) for f in registry.SEARCHERS[algorithm].checks(view)]
    return out


def check_hyperopt(view: registry.SpecView) -> list[registry.Finding]:
    """HyperOpt nests conditional parameters inside the branches of their parent's
    ``hp.choice``: each parameter may hang from one parent (which may itself hang)."""
    space, out = view.space, []
    for p in space.params:
        if p.conditions:
            parent = space.by_key.get(p.conditions[-1].parent)
            if parent is None or parent.conditions != p.conditions[:-1] or parent.domain.kind != "choice":
                out.append(registry.Finding(("space", p.key), "hyperopt needs each conditional parameter to depend "
                                            "on one choice (got conditions on several parameters)",
                                            "nest the sub-space under one choice, or use search.algorithm: optuna",
                                            at=p.key))
    return out


def check_random(view: registry.SpecView) -> list[registry.Finding]:
    """Conditional random search runs on Optuna's RandomSampler (define-by-run), which has no
    grid, no normal distribution and no quantized log-uniform (Optuna's log and step exclude
    each other)."""
    if not view.space.is_conditional:
        return []
    return [registry.Finding(("space", p.key), f"random search over a conditional space cannot take a "
                             f"{p.domain.kind} dimension", "use choice/uniform, or search.algorithm: hyperopt",
                             at=p.key)
            for p in view.space.params if p.domain.kind in ("grid", "normal", "qloguniform")]


def accepting(space: Space, several_objectives: bool = False) -> list[str]:
    """The searchers (as :func:`searcher_key` shows them) that can take ``space`` (and, if
    asked, several objectives)."""
    return [searcher_key(a, s) for a, s in searcher_keys() if not refusals(space, a, s)
            and (not several_objectives or takes_several_objectives(a, s))]


def proposes_one_at_a_time(algorithm: str, space: Space) -> bool:
    """Whether the searcher proposes a trial only once the last was admitted (no batch)."""
    sequential = registry.SEARCHERS[algorithm].meta["sequential"]
    return bool(space.is_conditional if sequential == "conditional" else sequential)


# ---------------------------------------------------------------- the Ray adapters


def _seed(spec) -> int:
    s = spec.data["search"]["seed"]
    return spec.data["seed"] if s is None else s


def _optuna_sampler(name: str, seed: int):
    return registry.OPTUNA_SAMPLERS[name].load()(seed=seed)


def takes_several_objectives(algorithm: str, sampler: str = "tpe") -> bool:
    takes = registry.SEARCHERS[algorithm].meta.get("multi_objective", False)
    return bool(registry.OPTUNA_SAMPLERS[sampler].meta.get("multi_objective") if takes == "sampler" else takes)


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


def _branches(space: Space) -> tuple[dict, list]:
    """``({(parent key, value): [params under that branch]}, [unconditional params])``."""
    children: dict[tuple, list] = {}
    roots = []
    for p in space.params:
        if p.conditions:
            cond = p.conditions[-1]
            for v in cond.values:
                children.setdefault((cond.parent, v), []).append(p)
        else:
            roots.append(p)
    return children, roots


def hyperopt_space(space: Space) -> dict:
    """A native HyperOpt space in which conditional parameters live inside ``hp.choice`` branches."""
    from hyperopt import hp
    import numpy as np

    children, roots = _branches(space)

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


def build_searcher(spec, told: list | None = None):
    """``(search_alg, param_space)`` for ``tune.Tuner`` as the spec asks, seeded from the spec.

    ``told``: earlier trials (:class:`raytune_opt.warm_start.Told`) for a searcher that learns
    from results; one that does not (random, grid) is not told.
    """
    search = spec.data["search"]
    space = spec.space
    seed = _seed(spec)
    limit = spec.data["resources"]["max_concurrent_trials"] or 0
    kwargs = dict(seed=seed, metric=search["metric"], mode=search["mode"], limit=limit)
    if not space:  # num_samples copies of the fixed config, whatever the algorithm
        searcher, param_space = build_basic(spec, **kwargs)
    else:
        searcher, param_space = registry.SEARCHERS[search["algorithm"]].load()(spec, **kwargs)
    from raytune_opt import warm_start

    if told and warm_start.learns(search):
        searcher.warm_start(told)  # every searcher that learns has it (tests/test_warm_start.py)
    from ray.tune.search import Searcher

    if limit and isinstance(searcher, Searcher):  # a generator limits itself
        searcher = _limiter_class()(searcher, max_concurrent=limit)
    return searcher, param_space


# The built-in searchers (registry.SEARCHERS): target(spec, seed=, metric=, mode=, limit=).


def build_basic(spec, *, seed: int, metric: str, mode: str, limit: int):
    """Ray's variant generator: grid points and random samples of Tune domains (it takes the
    concurrency limit itself)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from raytune_opt.warm_start import enqueued

    return (BasicVariantGenerator(random_state=seed, max_concurrent=limit, points_to_evaluate=enqueued(spec)),
            spec.space.to_tune())


def build_random(spec, *, seed: int, metric: str, mode: str, limit: int):
    """Random search; over a conditional space (which Tune domains cannot express), Optuna's
    RandomSampler define-by-run."""
    if not spec.space.is_conditional:
        return build_basic(spec, seed=seed, metric=metric, mode=mode, limit=limit)
    return _optuna(spec, "random", seed, metric, mode)


def build_optuna(spec, *, seed: int, metric: str, mode: str, limit: int):
    return _optuna(spec, spec.data["search"]["sampler"], seed, metric, mode)


def _optuna(spec, sampler_name: str, seed: int, metric, mode):
    space = spec.space
    constraints = spec.data["search"].get("constraints") or {}
    sampler = _optuna_sampler(sampler_name, seed)
    told = bool(registry.OPTUNA_SAMPLERS[sampler_name].meta.get("constraints"))
    cls = _optuna_class()
    from raytune_opt.warm_start import enqueued

    kwargs = dict(metric=metric, mode=mode, sampler=sampler, enqueue=enqueued(spec))
    if space.is_conditional:
        return cls(constraints, told, space=OptunaDefineByRun(space), **kwargs), {}
    return cls(constraints, told, space_def=space, **kwargs), space.to_tune()


class TellsEarlierTrials:
    """``warm_start(told)`` of the searchers that learn from results (search.warm_start): the
    earlier trials are told at once when the searcher's model (its ``_model_attr``) exists, else
    by the searcher's own set-up, which calls ``_tell_warm`` once Tune has given it the space."""

    _model_attr = ""

    def warm_start(self, told: list) -> None:
        self._warm = list(told)
        if getattr(self, self._model_attr, None) is not None:
            self._tell_warm()


@functools.cache
def _optuna_class():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # Optuna's own INFO lines ("A new study created in memory...") would land in the live view:
    # its records go to the standard logging tree instead, where Ray's go (ERROR and up shown).
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()

    class OptunaSearchForTrials(TellsEarlierTrials, OptunaSearch):
        """Ray's OptunaSearch, told what our trials mean.

        - A trial a scheduler stopped (its last result has no ``stop_reason``: the recipe sets
          one only on the epoch that ends it) is told PRUNED, as Optuna's own pruners leave
          it, with its epochs' values as intermediate values (step: the epoch; several objectives,
          stopped by moasha: none, Optuna takes none of several). Ray tells it
          COMPLETE with the value of the epoch it was stopped at, so TPE ranked an early-epoch
          accuracy against finished trials' final ones. (benchmarks/search_quality.py on
          mnist1d, 5 seeds, before and after: best accuracy [0.9788, 0.9738, 0.9375, 0.975,
          0.96] and [0.9788, 0.9738, 0.9375, 0.975, 0.9537], the same median as in-process
          Optuna's 0.9738: no measurable effect at 24 trials; it makes the semantics Optuna's.)
        - How far a trial broke ``search.constraints`` (``Trial.set_constraint``, one value
          per bound, which Optuna 5's TPE, GP and NSGA samplers read; its older
          ``constraints_func`` is deprecated).
        - An untrained, infeasible trial (its model broke a bound known before training)
          reports no metrics. Ray would tell Optuna nothing usable (PRUNED, or an exception
          with several objectives, which left the Optuna trial running). A sampler that
          takes constraints ranks infeasible trials by their violation alone, never by their
          values: it is told COMPLETE with the worst finite value of each objective. Other
          samplers are told FAIL.
        """

        def __init__(self, constraints: dict, told: bool, *, enqueue=(), space_def: Space | None = None,
                     **kwargs):
            # Before Ray's __init__: with a define-by-run space it creates the study at once.
            self._enqueue, self._warm = list(enqueue), []
            self._space_def = space_def if space_def is not None else kwargs["space"].space
            super().__init__(**kwargs)
            self._constraints, self._told = dict(constraints), told

        # -- search.enqueue and search.warm_start: Ray's points_to_evaluate wants every key of a
        # Tune space and its evaluated_rewards only complete single-objective trials over one,
        # so the study is told here, through Optuna's own enqueue_trial and add_trial.
        def _setup_study(self, mode):
            super()._setup_study(mode)
            for point in self._enqueue:  # keys left out are sampled (Optuna's enqueue_trial)
                self._ot_study.enqueue_trial(point)
            self._enqueue = []
            self._tell_warm()

        _model_attr = "_ot_study"

        def _tell_warm(self) -> None:
            import optuna
            from optuna.trial import TrialState

            several = isinstance(self.metric, list)
            modes = self.mode if several else [self.mode]
            skipped = 0
            for t in self._warm:
                dists = {k: (self._space[k] if isinstance(self._space, dict) else
                             _optuna_distribution(self._space_def.by_key[k])) for k in t.config}
                try:
                    if t.state == "pruned":
                        trial = optuna.trial.create_trial(
                            state=TrialState.PRUNED, params=t.config, distributions=dists,
                            intermediate_values=None if several else {e: v for e, v in t.intermediate})
                    else:
                        values = [v if math.isfinite(v) else (-1e30 if m == "max" else 1e30)
                                  for v, m in zip(t.values, modes)]
                        trial = optuna.trial.create_trial(
                            state=TrialState.COMPLETE, params=t.config, distributions=dists,
                            **({"values": values} if several else {"value": values[0]}))
                    self._ot_study.add_trial(trial)
                except ValueError:  # a value off a step grid Ray's conversion made
                    skipped += 1
            if skipped:
                print(f"warm start: Optuna could not take {skipped} of the {len(self._warm)} earlier trial(s) "
                      "(values off the space's step grid)", file=sys.stderr)
            self._warm = []  # told once; the study keeps them (and Tune's saved state, the study)

        def on_trial_result(self, trial_id, result):
            if isinstance(self.metric, list) or result.get("replayed"):
                return None  # Optuna takes no intermediate values of several objectives; a replay was told before
            epoch, value = result.get("epoch"), result.get(self.metric)
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials or not isinstance(epoch, (int, float)) \
                    or isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            ot_trial.report(float(value), int(epoch))  # the step is the epoch, as the schedulers count
            return None

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result, error)
            if result and not error and "stop_reason" in result and result["stop_reason"] is None:
                from optuna.trial import TrialState

                try:  # stopped by the scheduler: Optuna keeps its intermediate values
                    self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
                finally:
                    self._completed_trials.add(trial_id)
                return None
            if result and self._constraints:
                for key, value in objectives_.constraint_values(result, self._constraints).items():
                    ot_trial.set_constraint(key, value)
            if result and str(result.get("stop_reason") or "").startswith(objectives_.INFEASIBLE):
                from optuna.trial import TrialState

                metrics = self.metric if isinstance(self.metric, list) else [self.metric]
                modes = self.mode if isinstance(self.mode, list) else [self.mode]
                told = self._told and bool(self._constraints)
                worst = [-1e30 if m == "max" else 1e30 for m in modes]
                try:
                    self._ot_study.tell(ot_trial, (worst if len(metrics) > 1 else worst[0]) if told else None,
                                        state=TrialState.COMPLETE if told else TrialState.FAIL)
                finally:
                    self._completed_trials.add(trial_id)
                return None
            return super().on_trial_complete(trial_id, result, error)

    OptunaSearchForTrials.__module__ = __name__
    return OptunaSearchForTrials


def build_hyperopt(spec, *, seed: int, metric: str, mode: str, limit: int):
    from raytune_opt.warm_start import enqueued

    space = spec.space
    cls = _hyperopt_class()
    kwargs = dict(metric=metric, mode=mode, random_state_seed=seed)
    if space.is_conditional:
        return cls(space, enqueued(spec), space=hyperopt_space(space), **kwargs), {}
    return cls(space, enqueued(spec), **kwargs), space.to_tune()


def _optuna_distribution(p):
    """The Optuna distribution :func:`_suggest` asks for ``p``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kind, a = p.domain.kind, p.domain.args
    return {"choice": lambda: CategoricalDistribution(list(a)),
            "uniform": lambda: FloatDistribution(a[0], a[1]),
            "quniform": lambda: FloatDistribution(a[0], a[1], step=a[2]),
            "loguniform": lambda: FloatDistribution(a[0], a[1], log=True),
            "randint": lambda: IntDistribution(a[0], a[1] - 1),
            "qrandint": lambda: IntDistribution(a[0], a[1], step=a[2]),
            "lograndint": lambda: IntDistribution(a[0], a[1] - 1, log=True)}[kind]()


def hyperopt_labels(space: Space) -> list[tuple]:
    """``(label, param, conditions)`` of every node of the HyperOpt space: the labels
    :func:`hyperopt_space` gives (a Tune space converted by Ray: the keys), and the
    ``(parent key, value)`` pairs under which each is active."""
    children, roots = _branches(space)
    out = []

    def walk(params, prefix: str, conds: tuple) -> None:
        for p in params:
            label = prefix + p.key
            out.append((label, p, conds))
            for v in (p.domain.args if p.domain.kind == "choice" else ()):
                if (p.key, v) in children:
                    walk(children[(p.key, v)], f"{label}={v}/", conds + ((p.key, v),))

    walk(roots, "", ())
    return out


@functools.cache
def _hyperopt_class():
    from ray.tune.search.hyperopt import HyperOptSearch

    class HyperOptForTrials(TellsEarlierTrials, HyperOptSearch):
        """Ray's HyperOptSearch that takes enqueued configs of a conditional space and earlier
        trials: Ray's points_to_evaluate are converted for a Tune space only, and it takes no
        evaluated rewards. Both become HyperOpt trial documents here (as hyperopt's own
        ``generate_trials_to_calculate`` writes them): enqueued ones new, first in line (Ray's
        ``suggest`` takes those first); earlier trials done, with their loss."""

        def __init__(self, space_def: Space, enqueue: list, **kwargs):
            self._space_def, self._enqueue, self._warm = space_def, list(enqueue), []
            super().__init__(**kwargs)

        def _setup_hyperopt(self) -> None:
            self._points_to_evaluate = None
            super()._setup_hyperopt()
            if self._enqueue:  # Ray's suggest takes trials[n - 1] while n > 0: the first in line last
                self._insert([self._vals(c) for c in reversed(self._enqueue)], None)
                self._points_to_evaluate = len(self._enqueue)
                self._enqueue = []
            self._tell_warm()

        _model_attr = "_hpopt_trials"

        def _tell_warm(self) -> None:
            sign = -1.0 if self._mode == "max" else 1.0  # HyperOpt minimizes a loss
            results = []
            for t in self._warm:
                # A trial a scheduler stopped: its last value, as Ray tells HyperOpt a stopped trial.
                value = t.values[0] if t.values else t.intermediate[-1][1]
                results.append({"loss": sign * value, "status": "ok"} if math.isfinite(value)
                               else {"status": "fail"})
            if self._warm:
                self._insert([self._vals(t.config) for t in self._warm], results)
            self._warm = []

        def _vals(self, config: dict) -> dict:
            vals = {}
            for label, p, conds in hyperopt_labels(self._space_def):
                active = p.key in config and all(config.get(k) == v for k, v in conds)
                value = config.get(p.key)
                if active and p.domain.kind == "choice":
                    value = next(i for i, o in enumerate(p.domain.args) if o == value)
                vals[label] = [value] if active else []
            return vals

        def _insert(self, vals_list: list, results: list | None) -> None:
            import hyperopt as hpo

            trials = self._hpopt_trials
            docs = []
            for i, (tid, vals) in enumerate(zip(trials.new_trial_ids(len(vals_list)), vals_list)):
                misc = {"tid": tid, "cmd": ("domain_attachment", "FMinIter_Domain"), "workdir": None,
                        "idxs": {k: [tid] if v else [] for k, v in vals.items()}, "vals": vals}
                doc, = trials.new_trial_docs([tid], [None], [results[i] if results else {"status": "new"}], [misc])
                if results:
                    doc["state"] = hpo.JOB_STATE_DONE
                docs.append(doc)
            trials.insert_trial_docs(docs)
            trials.refresh()

    HyperOptForTrials.__module__ = __name__
    return HyperOptForTrials


# ---------------------------------------------------------------- BOHB

#: Domains Ray's TuneBOHB would change: it drops a quantization with only a warning (a batch size
#: of 37 where the space says multiples of 16); we refuse them instead.
_BOHB_REFUSED = ("quniform", "qrandint", "qloguniform")
#: What ConfigSpace takes as a choice's options.
_BOHB_OPTION_TYPES = (str, int, float, bool)


def check_bohb(view: registry.SpecView) -> list[registry.Finding]:
    """What BOHB's space conversion cannot take beyond its capabilities: quantized domains
    (Ray drops the quantization) and choices whose options are not plain values."""
    out = []
    for p in view.space.params:
        if p.domain.kind in _BOHB_REFUSED:
            plain = {"quniform": "uniform", "qrandint": "randint", "qloguniform": "loguniform"}[p.domain.kind]
            out.append(registry.Finding(("space", p.key), f"bohb cannot quantize (got {{{p.domain.kind}: "
                                        f"{list(p.domain.args)}}})", f"use {plain} or a choice of the values you "
                                        "want, or search.algorithm: hyperopt/random", at=p.key))
        elif p.domain.kind == "choice" and not all(isinstance(v, _BOHB_OPTION_TYPES) for v in p.domain.args):
            out.append(registry.Finding(("space", p.key), f"bohb takes choices of strings, numbers or booleans (got "
                                        f"{list(p.domain.args)})", "choose among names and look the values up in "
                                        "your own code, or use search.algorithm: optuna/hyperopt", at=p.key))
    return out


def build_bohb(spec, *, seed: int, metric: str, mode: str, limit: int):
    """BOHB (Falkner et al., 2018): Ray's TuneBOHB (hpbandster), with scheduler ``hyperband_bohb``.
    The concurrency limit counts running trials only (TuneBOHB's own, which Ray's limiter defers
    to): a trial paused at a milestone frees its place for the next one of its bracket."""
    from raytune_opt import _imports

    from raytune_opt.schedulers import hyperband_milestones

    for module in registry.SEARCHERS["bohb"].meta["requires"]:  # hpbandster, ConfigSpace (the bohb extra)
        _imports.require(module, "search.algorithm: bohb")
    from raytune_opt.warm_start import enqueued

    return (_bohb_class()(metric=metric, mode=mode, seed=seed, milestones=hyperband_milestones(spec),
                          points_to_evaluate=enqueued(spec) or None), spec.space.to_tune())


def _plain(value):
    """A numpy scalar as the Python value it holds (ConfigSpace hands back np.str_, np.int64)."""
    import numpy as np

    return value.item() if isinstance(value, np.generic) else value


@functools.cache
def _bohb_class():
    from ray.tune.search.bohb import TuneBOHB
    from ray.tune.search.bohb.bohb_search import _BOHBJobWrapper

    from raytune_opt.schedulers import TIME_ATTR, _seeded_global_random

    class SeededBOHB(TellsEarlierTrials, TuneBOHB):
        """Ray's TuneBOHB, seeded all through, told every result a milestone decided on.

        - hpbandster draws from numpy's global generator (which configs are random, the kernel
          density samples): each proposal draws from the searcher's own generator instead, kept
          with its saved state, so the same seed proposes the same configs, across a resume too.
        - Values go to Tune as Python values (ConfigSpace hands back np.str_ / np.int64).
        - The result on which HyperBandForBOHB stops a trial (a loser at a milestone, every trial
          at max_t) is told too, at its completion: Tune gives a searcher no result of a trial its
          scheduler stops, and Ray's TuneBOHB ignores the completion's, so BOHB never heard of
          the trials it should learn to avoid (seen: 9 of an 8-trial sweep's 13 milestone results told).
        - A result is told once, at the budget it was measured at (its epoch). Ray tells the
          bracket's milestone; the two differ only after a resume, when a trial continued from
          a later epoch than its new bracket's milestone.
        - A trial it did not propose is not told (Ray raised KeyError), and a finished trial's
          config is kept: a resumed sweep resumes errored trials too, under the same id.
        - ``search.warm_start``: each earlier trial is told its value at every milestone of this
          sweep it reached, as if it had run here; budgets in increasing order, since hpbandster
          records no result of a budget below the largest it has a model of.
        """

        def __init__(self, *, seed: int, milestones: list[int], **kwargs):
            super().__init__(seed=seed, **kwargs)
            self._rng = random.Random(seed)
            self._told: dict[str, float] = {}  # trial id -> the epoch it was last told at
            self._milestones, self._warm = tuple(milestones), []

        def _setup_bohb(self):
            super()._setup_bohb()
            self._tell_warm()

        _model_attr = "bohber"

        def _tell_warm(self) -> None:
            jobs = sorted(((epoch, t.config, value) for t in self._warm for epoch, value in t.intermediate
                           if epoch in self._milestones), key=lambda job: job[0])
            skipped = 0
            for i, (epoch, config, value) in enumerate(jobs):
                last_of_budget = i + 1 == len(jobs) or jobs[i + 1][0] != epoch
                try:
                    self.bohber.new_result(_BOHBJobWrapper(self._metric_op * value, epoch, config),
                                           update_model=last_of_budget)
                except ValueError:  # a value ConfigSpace's conversion of the space does not take
                    skipped += 1
            if skipped:
                print(f"warm start: BOHB could not take {skipped} of the {len(jobs)} earlier result(s)",
                      file=sys.stderr)
            self._warm = []  # told once; hpbandster keeps them (and Tune's saved state, the searcher)

        def suggest(self, trial_id):
            with _seeded_global_random(self._rng.getrandbits(63)):
                config = super().suggest(trial_id)
            return config if config is None else {k: _plain(v) for k, v in config.items()}

        def on_trial_result(self, trial_id, result):
            if trial_id not in self.trial_to_params:
                return
            if trial_id not in self.paused:
                self.running.add(trial_id)
            if "budget" in result.get("hyperband_info", {}):  # HyperBandForBOHB decided on it
                self._tell(trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.paused.discard(trial_id)
            self.running.discard(trial_id)
            if result and not error and trial_id in self.trial_to_params:
                self._tell(trial_id, result)

        def _tell(self, trial_id, result) -> None:
            epoch = result.get(TIME_ATTR)
            value = result.get(self.metric)
            # An untrained trial (epoch 0: it broke a constraint known before training) is no budget.
            if not isinstance(epoch, (int, float)) or epoch < 1 or not isinstance(value, (int, float)) \
                    or self._told.get(trial_id) == epoch:
                return
            self.bohber.new_result(self.to_wrapper(trial_id, result))  # a NaN (diverged) counts as worst
            self._told[trial_id] = epoch

        def to_wrapper(self, trial_id, result):
            return _BOHBJobWrapper(self._metric_op * result[self.metric], result[TIME_ATTR],
                                   self.trial_to_params[trial_id])

    SeededBOHB.__module__ = __name__
    return SeededBOHB
