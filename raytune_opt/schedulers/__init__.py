"""Schedulers: thin adapters over ``ray.tune.schedulers``, chosen by name.

Each scheduler is an entry of :data:`raytune_opt.registry.SCHEDULERS` that registers itself
here, beside its builder, exactly as a user's or a contributor's would: its name, target (the
builder), ``check`` (its rules on the spec) and ``settings``, the ``scheduler.*`` keys it reads
(Fields with their types, defaults and docs; the schema assembles the ``scheduler`` section
from them). A scheduler may also be a module of its own in this package: the registry imports
every module here whose name does not start with ``_`` (``percentile.py`` is one), so a new
scheduler is one new file. Those modules import neither torch nor Ray when imported (validation
imports them); a builder imports Ray when it runs. Train V2 reports no
``training_iteration``-style counters of its own, so every scheduler uses the epoch number the
recipe reports (:data:`TIME_ATTR`) as its time unit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from typing import TYPE_CHECKING

from raytune_opt import moasha as mo
from raytune_opt import objectives, registry
from raytune_opt.registry import Finding, SpecView
from raytune_opt.schedulers._persisted import PersistedState
from raytune_opt.schedulers._settings import (  # noqa: F401  (the shared settings, re-exported)
    GRACE_PERIOD, MAX_T, MIN_SAMPLES_REQUIRED, PERTURBATION_INTERVAL, QUANTILE_FRACTION, REDUCTION_FACTOR, SYNCH,
    TIME_ATTR, check_grace_period, check_max_t, max_epochs)
from raytune_opt.spec.fields import Field

if TYPE_CHECKING:
    from raytune_opt.spec import Spec


def _seed(spec: Spec) -> int:
    """search.seed, or the top-level seed."""
    search = spec.settings.search
    return search.seed if search.seed is not None else spec.settings.seed


def _max_t(spec: Spec) -> int:
    return spec.settings.scheduler.max_t or max_epochs(spec.data, spec.space)


# ---------------------------------------------------------------- the built-in schedulers
# registry.SCHEDULERS targets: target(spec, where) -> a Ray Tune TrialScheduler. Meta ``order``:
# where each is listed (the order they were added in, whichever module registers first).


registry.SCHEDULERS.register("fifo", f"{__name__}:fifo", doc="runs every trial to the end", order=10,
                             settings={}, multi_objective=True)


def fifo(spec: Spec, where: dict):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


registry.SCHEDULERS.register(
    "asha", f"{__name__}:asha", doc="asynchronous successive halving", check=f"{__name__}:check_asha", order=20,
    settings={"max_t": MAX_T, "grace_period": GRACE_PERIOD, "reduction_factor": REDUCTION_FACTOR,
              "brackets": Field("int", 1, "number of brackets.", ge=1, tunable=False)}, needs_storage=True)


def check_asha(view: SpecView) -> list[Finding]:
    return check_max_t(view) + check_grace_period(view)


def asha(spec: Spec, where: dict):
    s = spec.settings.scheduler
    return _persisted_asha_class()(time_attr=TIME_ATTR, max_t=_max_t(spec), grace_period=s.grace_period,
                                   reduction_factor=s.reduction_factor, brackets=s.brackets, where=where)


ASHA_STATE = "asha_state.json"  # in the experiment: ASHA's rungs and brackets, rewritten as they change


@functools.cache
def _persisted_asha_class():
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler

    class PersistedASHA(PersistedState, ASHAScheduler):
        """Ray's ASHA, its rungs kept across a resume.

        Tune keeps no scheduler state across a resume: the resumed sweep got ASHA as
        ``tuner.pkl`` holds it, with empty rungs, so a trial that reached a rung after the resume
        was judged only against the results reported since, and trials the killed sweep would
        have stopped went on. The rungs (the value each trial reached at each milestone) and
        each trial's bracket are written to the experiment (``asha_state.json``) when they
        change and read back by the resumed copy before its first decision; the decisions
        themselves are Ray's.
        """

        def __init__(self, *, where: dict, **kwargs):
            super().__init__(**kwargs)
            self._init_persisted(where, ASHA_STATE)

        def _state(self) -> dict:
            return {"brackets": [[[milestone, dict(recorded)] for milestone, recorded in b._rungs]
                                 for b in self._brackets],
                    "trials": {tid: self._brackets.index(b) for tid, b in self._trial_info.items()},
                    "num_stopped": self._num_stopped}

        def _set_state(self, state: dict) -> None:
            assert len(state["brackets"]) == len(self._brackets), "asha_state.json is of other brackets"
            for bracket, rungs in zip(self._brackets, state["brackets"]):
                bracket._rungs = [(milestone, dict(recorded)) for milestone, recorded in rungs]
            self._trial_info = {tid: self._brackets[i] for tid, i in state["trials"].items()}
            self._num_stopped = int(state["num_stopped"])

        def on_trial_add(self, tune_controller, trial):
            self._load()
            # A resumed sweep adds every trial again: a finished one has no bracket any more
            # (it never reports again), a resumed one keeps its own.
            if trial.status not in (Trial.TERMINATED, Trial.ERROR) and trial.trial_id not in self._trial_info:
                super().on_trial_add(tune_controller, trial)
                self._persist_if_changed()

        def on_trial_result(self, tune_controller, trial, result):
            self._load()
            decision = super().on_trial_result(tune_controller, trial, result)
            self._persist_if_changed()
            return decision

        def on_trial_complete(self, tune_controller, trial, result):
            self._load()
            if trial.trial_id in self._trial_info:
                super().on_trial_complete(tune_controller, trial, result)
                self._persist_if_changed()

        def on_trial_remove(self, tune_controller, trial):
            self._load()
            if trial.trial_id in self._trial_info:
                super().on_trial_remove(tune_controller, trial)
                self._persist_if_changed()

    PersistedASHA.__module__ = __name__
    return PersistedASHA


registry.SCHEDULERS.register(
    "hyperband", f"{__name__}:hyperband", doc="synchronous Hyperband (brackets admitted at once)",
    check=f"{__name__}:check_hyperband", order=30, settings={"max_t": MAX_T, "reduction_factor": REDUCTION_FACTOR})


def hyperband(spec: Spec, where: dict):
    s = spec.settings.scheduler
    return _resumable_hyperband_class()(time_attr=TIME_ATTR, max_t=_max_t(spec), reduction_factor=s.reduction_factor)


registry.SCHEDULERS.register(
    "hyperband_bohb", f"{__name__}:hyperband_bohb", doc="Hyperband for BOHB (Ray's HyperBandForBOHB): brackets "
    "largest first, trials paused at each milestone; with search.algorithm: bohb only",
    check=f"{__name__}:check_hyperband_bohb", order=80, settings={"max_t": MAX_T, "reduction_factor": REDUCTION_FACTOR})


def hyperband_bohb(spec: Spec, where: dict):
    s = spec.settings.scheduler
    return _resumable_hyperband_class("bohb")(time_attr=TIME_ATTR, max_t=_max_t(spec),
                                              reduction_factor=s.reduction_factor)


def hyperband_milestones(spec: Spec) -> list[int]:
    """The epochs at which the spec's hyperband(_bohb) judges trials. Ray's brackets, written
    again (Ray computes them only as trials arrive): bracket s starts at int(max_t * eta**-s)
    epochs and multiplies by eta up to max_t. BOHB's warm start tells earlier trials at these."""
    import math

    max_t, eta = _max_t(spec), spec.settings.scheduler.reduction_factor
    out = set()
    for s in range(int(round(math.log(max_t) / math.log(eta))) + 1):
        r = int(max_t * eta ** -s)
        if r == 0:  # Ray skips a bracket too small to start
            continue
        out.add(r)
        for _ in range(s):
            r = int(min(r * eta, max_t))
            out.add(r)
    return sorted(out)


@functools.cache
def _resumable_hyperband_class(base: str = "hyperband"):
    """ResumableHyperBand over Ray's HyperBand (``base="hyperband"``) or over Ray's
    HyperBandForBOHB (``"bohb"``: brackets filled largest first, a trial paused at a milestone
    even before its bracket is full, BOHB told each result at a milestone)."""
    from ray.tune.experiment import Trial

    if base == "bohb":
        from ray.tune.schedulers import HyperBandForBOHB as HyperBandScheduler
    else:
        from ray.tune.schedulers import HyperBandScheduler

    class ResumableHyperBand(HyperBandScheduler):
        """Ray's HyperBand, minus a resume hang.

        A resumed sweep adds every trial of the experiment again, finished ones included; a
        finished trial in a bracket never reports, the bracket never reaches its milestone,
        and the trials it paused wait forever. Finished trials are not added.
        """

        def on_trial_add(self, tune_controller, trial):
            if trial.status in (Trial.TERMINATED, Trial.ERROR):
                return
            super().on_trial_add(tune_controller, trial)

    ResumableHyperBand.__module__ = __name__
    if base == "bohb":
        ResumableHyperBand.__name__ = ResumableHyperBand.__qualname__ = "ResumableHyperBandForBOHB"
    return ResumableHyperBand


registry.SCHEDULERS.register(
    "median", f"{__name__}:median", doc="median stopping rule", check=f"{__name__}:check_grace_period", order=40,
    settings={"grace_period": GRACE_PERIOD, "min_samples_required": MIN_SAMPLES_REQUIRED}, needs_storage=True)


def median(spec: Spec, where: dict):
    s = spec.settings.scheduler
    return _persisted_median_class()(time_attr=TIME_ATTR, grace_period=s.grace_period,
                                     min_samples_required=s.min_samples_required, where=where)


MEDIAN_STATE = "median_state.json"  # in the experiment: each trial's reported values, the stopped trials


@functools.cache
def _persisted_median_class():
    import dataclasses

    from ray.tune.schedulers import MedianStoppingRule

    @dataclasses.dataclass(frozen=True)
    class TrialKey:
        """A trial as the rule keys its records: by id. Ray's rule keys them by the Trial
        object, which a resumed sweep makes anew."""

        trial_id: str

    class PersistedMedian(PersistedState, MedianStoppingRule):
        """Ray's median stopping rule, its records kept across a resume (see
        :class:`PersistedASHA`): each trial's (epoch, metric) reports and the trials it stopped,
        in ``median_state.json``; the decisions are Ray's."""

        def __init__(self, *, where: dict, **kwargs):
            super().__init__(**kwargs)
            self._init_persisted(where, MEDIAN_STATE)

        def _state(self) -> dict:
            keep = (self._time_attr, self._metric)
            return {"results": {k.trial_id: [[r.get(a) for a in keep] for r in results]
                                for k, results in self._results.items()},
                    "stopped": sorted(k.trial_id for k in self._stopped_trials)}

        def _set_state(self, state: dict) -> None:
            self._results.clear()
            for tid, rows in state["results"].items():
                self._results[TrialKey(tid)] = [dict(zip((self._time_attr, self._metric), row)) for row in rows]
            self._stopped_trials = {TrialKey(tid) for tid in state["stopped"]}

        def on_trial_add(self, tune_controller, trial):
            self._load()
            super().on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            self._load()
            decision = super().on_trial_result(tune_controller, TrialKey(trial.trial_id), result)
            self._persist_if_changed()
            return decision

        def on_trial_complete(self, tune_controller, trial, result):
            self._load()
            if result:
                super().on_trial_complete(tune_controller, TrialKey(trial.trial_id), result)
                self._persist_if_changed()

    PersistedMedian.__module__ = __name__
    return PersistedMedian


_POPULATION_SETTINGS = {"perturbation_interval": PERTURBATION_INTERVAL, "quantile_fraction": QUANTILE_FRACTION,
                        "synch": SYNCH}
registry.SCHEDULERS.register(
    "pbt", f"{__name__}:pbt", doc="population-based training (exploits snapshots of trials' own checkpoints)",
    check=f"{__name__}:check_pbt", order=50, settings=_POPULATION_SETTINGS, needs_storage=True, exploits=True)


def pbt(spec: Spec, where: dict):
    s = spec.settings.scheduler
    seed = _seed(spec)
    return _checkpointed_pbt_class()(
        snapshots=f"{where['exp_dir']}/{PBT_SNAPSHOTS}", endpoint_url=where.get("endpoint_url"),
        remote=where.get("remote", False), seed=seed,
        time_attr=TIME_ATTR, perturbation_interval=s.perturbation_interval,
        quantile_fraction=s.quantile_fraction, synch=s.synch,
        hyperparam_mutations={p.key: _pbt_mutation(p.domain) for p in _mutable_keys(spec)},
    )


registry.SCHEDULERS.register(
    "pb2", f"{__name__}:pb2", doc="population-based bandits: PBT's exploit, a GP bandit's explore over uniform, "
    "loguniform or randint bounds (scikit-learn)", check=f"{__name__}:check_pb2", order=60,
    settings=_POPULATION_SETTINGS, needs_storage=True, exploits=True)


def pb2(spec: Spec, where: dict):
    s = spec.settings.scheduler
    seed = _seed(spec)
    bounds, log_keys = {}, []
    for p in _mutable_keys(spec):  # check_pb2 let only PB2_KINDS through
        low, high = p.domain.args[:2]
        bounds[p.key] = [low, high - 1] if p.domain.kind == "randint" else [low, high]  # randint: high excluded
        if p.domain.kind == "loguniform":
            log_keys.append(p.key)
    return _checkpointed_pb2_class()(
        snapshots=f"{where['exp_dir']}/{PBT_SNAPSHOTS}", endpoint_url=where.get("endpoint_url"),
        remote=where.get("remote", False), seed=seed, log_keys=log_keys,
        time_attr=TIME_ATTR, perturbation_interval=s.perturbation_interval,
        quantile_fraction=s.quantile_fraction, synch=s.synch, hyperparam_bounds=bounds,
    )


#: The domains PB2 explores (a GP bandit over continuous bounds): uniform and randint on their
#: own scale, loguniform on the log scale. A choice, a grid, a quantized or a normal domain has no
#: bounds to explore between.
PB2_KINDS = ("uniform", "loguniform", "randint")


def _pbt_mutation(domain):
    """What PBT's explore step draws a key from: a grid's values as a list (PBT resamples one
    or shifts to a neighbour); Tune's ``grid_search`` dict would read as a nested config and
    fail the first exploit. Other domains as Tune domains."""
    return list(domain.args) if domain.kind == "grid" else domain.to_tune()


# What PBT may change in the middle of a trial, which goes on from another trial's weights,
# optimizer and schedule state: not the model's shape, the data, the run's length, the
# optimizer's or the schedule's kind. Other searched keys are sampled once and, on an exploit,
# inherited from the donor with its weights (Ray's PBT copies the donor's whole config).
_PBT_MUTABLE_PREFIXES = ("train.optimizer.", "train.lr_schedule.", "train.loss.", "train.augment.")
_PBT_FIXED = {"train.optimizer.name", "train.lr_schedule.name", "train.loss.name"}
_PBT_MUTABLE = {"train.batch_size", "train.grad_clip_norm", "train.grad_accum_steps", "model.dropout"}


def pbt_mutable(key: str, loop: str = "builtin") -> bool:
    """Whether PBT may perturb searched key ``key`` while a trial of ``train.loop`` trains: a
    trainer's own keys (its ``LOOPS`` entry's ``pbt_mutable``: keys, and prefixes ending in a
    dot), else the built-in recipe's (user loops read the recipe's keys)."""
    own = _loop_mutable(loop)
    if own is not None:
        return any(key == k or (k.endswith(".") and key.startswith(k)) for k in own)
    return key in _PBT_MUTABLE or (key.startswith(_PBT_MUTABLE_PREFIXES) and key not in _PBT_FIXED)


def _loop_mutable(loop: str) -> tuple[str, ...] | None:
    entry = registry.LOOPS.get(loop)
    return None if entry is None else entry.meta.get("pbt_mutable")


def _mutable_keys(spec_or_view) -> list:
    """The searched parameters PBT (and PB2) perturb in this spec."""
    loop = spec_or_view.data["train"]["loop"]
    return [p for p in spec_or_view.space.params if pbt_mutable(p.key, loop)]


PBT_SNAPSHOTS = "pbt_snapshots"  # in the experiment: donors' last.pt, one directory per snapshot
# How long a snapshot nobody refers to any more is kept: longer than two of Tune's experiment
# state saves (every 10 s, or 19x what a save takes, by default) and than an S3 state sync (10 s).
SNAPSHOT_GRACE_S = 120.0


@contextlib.contextmanager
def _seeded_global_random(seed: int):
    """Run Ray's PBT explore step, which draws from the global ``random`` and ``numpy.random``,
    from our own seed, then put both global generators back as they were."""
    import numpy as np

    saved, saved_np = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(saved)
        np.random.set_state(saved_np)


@functools.cache
def _checkpointed_pbt_class(base: str = "pbt"):
    """CheckpointedPBT over Ray's PBT (``base="pbt"``) or over Ray's PB2 (``"pb2"``: the same
    exploit, a GP bandit's explore)."""
    from ray.tune import Checkpoint

    if base == "pb2":
        from ray.tune.schedulers.pb2 import PB2 as Base
    else:
        from ray.tune.schedulers import PopulationBasedTraining as Base

    class CheckpointedPBT(Base):
        """Ray's PBT, exploiting snapshots of the donor's own ``last.pt``.

        Ray's PBT remembers the checkpoint a top trial had when it was judged, and hands it to
        a bottom trial later; by then Tune's retention (one checkpoint per trial) may have
        deleted it ("does not exist on storage anymore"), and trials of several workers
        report no Tune checkpoint at all. Our trials keep their own ``ckpt/last.pt``
        (replaced atomically every epoch), so when a trial is judged a top trial its
        ``last.pt`` is snapshotted (a hard link; on S3 a server-side copy) into
        ``pbt_snapshots/``; an exploit hands that snapshot over, and the bottom trial adopts
        it (``trial._resume_point``). A snapshot is deleted once no trial can still ask for it.
        Donors are drawn from our own seeded generator, not the driver's global ``random``.
        """

        def __init__(self, *, snapshots: str, remote: bool, endpoint_url: str | None, seed: int, **kwargs):
            super().__init__(**kwargs)
            self._snapshots, self._remote, self._endpoint_url = snapshots, remote, endpoint_url
            self._rng = random.Random(seed)
            self._made: set[str] = set()
            self._unreferenced_since: dict[str, float] = {}
            self._count = 0
            self._filesystem = None
            self.perturbations: list[dict] = []  # (time, trial, donor): what the scheduler did
            self._persist_before_restart: set[str] = set()  # exploited trials (ids) not restarted yet

        @property
        def _fs(self):
            from raytune_opt import storage

            if self._filesystem is None:  # built once (no descriptor state: Tune pickles this class by value)
                self._filesystem = storage.filesystem(self._remote, self._endpoint_url)
            return self._filesystem

        def _snapshot(self, trial):
            from pyarrow import fs

            from raytune_opt.trial import CHECKPOINT_FILE, own_checkpoint_dir

            src = f"{own_checkpoint_dir(trial.path)}/{CHECKPOINT_FILE}"
            self._count += 1
            dest = f"{self._snapshots}/{trial.trial_id}-{TIME_ATTR}{self._trial_state[trial].last_train_time}-{self._count}"
            filesystem = self._fs
            try:
                if self._remote:
                    filesystem.create_dir(dest)
                    filesystem.copy_file(src, f"{dest}/{CHECKPOINT_FILE}")
                else:
                    os.makedirs(dest, exist_ok=True)
                    os.link(src, f"{dest}/{CHECKPOINT_FILE}")  # last.pt is replaced, never rewritten
            except (FileNotFoundError, OSError) as exc:
                if isinstance(exc, FileNotFoundError) or filesystem.get_file_info(src).type == fs.FileType.NotFound:
                    return None  # no epoch checkpointed yet (or train.checkpoint: false)
                raise
            self._made.add(dest)
            return Checkpoint(dest, filesystem if self._remote else None)

        def _checkpoint_or_exploit(self, trial, tune_controller, upper_quantile, lower_quantile):
            state = self._trial_state[trial]
            if trial in upper_quantile:
                state.last_checkpoint = self._snapshot(trial)
                self._num_checkpoints += 1
            else:
                state.last_checkpoint = None  # not a top trial
            if trial in lower_quantile:
                donor = self._rng.choice(upper_quantile)
                if self._trial_state[donor].last_checkpoint is None:
                    return  # the donor has no checkpoint to give yet: explore nothing this time
                self.perturbations.append({TIME_ATTR: state.last_train_time, "trial": trial.trial_id,
                                           "donor": donor.trial_id})
                self._exploit(tune_controller, trial, donor)
            self._collect_garbage()

        def _exploit(self, tune_controller, trial, trial_to_clone):
            _persist_driver_logs(trial)
            # When the trial's own result is the one that triggered the exploit (synchronous
            # PBT: the last trial to reach the interval perturbs them all), Tune logs that
            # result only after this returns, and the restart would then restore the logs
            # without it: they are persisted once more just before the trial restarts.
            self._persist_before_restart.add(trial.trial_id)
            super()._exploit(tune_controller, trial, trial_to_clone)

        def choose_trial_to_run(self, tune_controller):
            chosen = super().choose_trial_to_run(tune_controller)
            if chosen is not None and chosen.trial_id in self._persist_before_restart:
                self._persist_before_restart.discard(chosen.trial_id)
                _persist_driver_logs(chosen)
            return chosen

        def _get_new_config(self, trial, trial_to_clone):
            with _seeded_global_random(self._rng.getrandbits(63)):
                return super()._get_new_config(trial, trial_to_clone)

        def _collect_garbage(self) -> None:
            """Delete snapshots nobody can ask for: no top trial holds it, no trial restores from
            it, and none has for SNAPSHOT_GRACE_S (Tune's saved experiment state lags the live
            one: a driver killed now resumes from a state that may still hand a trial this
            snapshot, "does not exist on storage anymore" otherwise)."""
            import time

            live = {st.last_checkpoint.path for st in self._trial_state.values()
                    if isinstance(st.last_checkpoint, Checkpoint)}
            live |= {t.checkpoint.path for t in self._trial_state if t.checkpoint is not None}
            now = time.monotonic()
            for dest in live:
                self._unreferenced_since.pop(dest, None)
            for dest in self._made - live:
                if now - self._unreferenced_since.setdefault(dest, now) < SNAPSHOT_GRACE_S:
                    continue
                try:
                    self._fs.delete_dir(dest)
                except (FileNotFoundError, OSError):
                    pass  # already gone; a leftover snapshot only costs disk
                self._made.discard(dest)
                self._unreferenced_since.pop(dest, None)

    CheckpointedPBT.__module__ = __name__
    return CheckpointedPBT


@functools.cache
def _checkpointed_pb2_class():
    import math

    base = _checkpointed_pbt_class("pb2")

    class CheckpointedPB2(base):
        """Ray's PB2 with CheckpointedPBT's donor snapshots, exploring log-uniform keys on
        their log scale.

        Ray's PB2 fits its GP to the raw values between each key's bounds: a learning rate in
        [1e-5, 3e-2] would be explored almost only above 1e-3. Its data and bounds hold the
        log10 of a log-uniform key instead; the value chosen goes back to the config as 10**x.
        """

        def __init__(self, *, log_keys=(), **kwargs):
            super().__init__(**kwargs)
            self._log_keys = set(log_keys)
            self._scaled_bounds = {k: ([math.log10(lo), math.log10(hi)] if k in self._log_keys else [lo, hi])
                                   for k, (lo, hi) in self._hyperparam_bounds_flat.items()}

        def _save_trial_state(self, state, time, result, trial):
            score = super()._save_trial_state(state, time, result, trial)
            if self._log_keys and len(self.data):  # PB2 just appended this result's row
                row = self.data.index[-1]
                for key in self._log_keys:
                    self.data.loc[row, key] = math.log10(float(self.data.loc[row, key]))
            return score

        def _get_new_config(self, trial, trial_to_clone):
            with _seeded_global_random(self._rng.getrandbits(63)):  # the GP's acquisition starts at random
                return self._explore_scaled(trial, trial_to_clone)

        def _explore_scaled(self, trial, trial_to_clone):
            """Ray's PB2._get_new_config, on the scaled data and bounds."""
            import numpy as np
            from ray.tune.schedulers.pb2 import _explore
            from ray.tune.utils.util import flatten_dict, unflatten_dict

            if self.data["Time"].max() > self.last_exploration_time:
                self.current = None  # a new time step: trials still going are not penalised
            donor = flatten_dict(trial_to_clone.config)
            scaled = {k: (math.log10(v) if k in self._log_keys else v) for k, v in donor.items()}
            new_flat, data = _explore(self.data, self._scaled_bounds, self.current, trial_to_clone, trial, scaled)
            self.data = data.copy()
            new = np.array([new_flat[k] for k in self._scaled_bounds]).reshape(1, -1)
            if self.data["Time"].max() > self.last_exploration_time:
                self.last_exploration_time = self.data["Time"].max()
                self.current = new.copy()
            else:
                self.current = np.concatenate((self.current, new), axis=0)
            out = dict(new_flat)
            for key, (lo, hi) in self._hyperparam_bounds_flat.items():
                # Back from the log scale; PB2's GP works in float32, a hair outside a bound.
                value = float(10 ** new_flat[key]) if key in self._log_keys else new_flat[key]
                out[key] = type(value)(min(max(value, lo), hi))
            return unflatten_dict(out), {}

    CheckpointedPB2.__module__ = __name__
    return CheckpointedPB2


registry.SCHEDULERS.register(
    "moasha", f"{__name__}:moasha", doc="multi-objective ASHA: each rung ranked by non-dominated sorting (infeasible "
    "trials last); several objectives only", check=f"{__name__}:check_moasha", order=70,
    settings={"max_t": MAX_T, "grace_period": GRACE_PERIOD, "reduction_factor": REDUCTION_FACTOR},
    needs_storage=True, multi_objective=True)


def moasha(spec: Spec, where: dict):
    s = spec.settings.scheduler
    max_t = _max_t(spec)
    return _moasha_class()(objectives=objectives.objectives(spec.settings.search),
                           constraints=spec.settings.search.constraints or {}, max_t=max_t,
                           grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                           where=where)


MOASHA_STATE = "moasha_state.json"  # in the experiment: MO-ASHA's rungs, rewritten at every decision


@functools.cache
def _moasha_class():
    import json

    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class MOASHA(PersistedState, FIFOScheduler):
        """Multi-objective ASHA (:mod:`raytune_opt.moasha`) as a Ray Tune scheduler.

        Its objectives and constraints come from the spec: with several objectives Tune's own
        metric is None. Its rungs are written to the experiment (``moasha_state.json``) at
        every decision and read back by a resumed copy before its first one
        (:class:`PersistedState`): a trial stopped before a kill stays stopped, and one
        promoted at a rung is not judged there again.
        """

        def __init__(self, *, objectives, constraints, max_t, grace_period, reduction_factor, where: dict):
            super().__init__()
            self._objectives = [tuple(o) for o in objectives]
            self._constraints = dict(constraints)
            self._max_t = max_t
            self._rungs = mo.Rungs(mo.milestones(grace_period, max_t, reduction_factor), reduction_factor)
            self._init_persisted(where, MOASHA_STATE)
            self._num_stopped = 0

        def _state(self) -> dict:
            return self._rungs.to_dict()

        def _set_state(self, state: dict) -> None:
            self._rungs = mo.Rungs.from_dict(state)

        def set_search_properties(self, metric, mode, **spec) -> bool:
            return True  # the objectives are its own (Tune passes None with several)

        def on_trial_add(self, tune_controller, trial):
            self._load()

        def on_trial_result(self, tune_controller, trial, result):
            self._load()
            t = result.get(TIME_ATTR)
            if not isinstance(t, (int, float)):
                return TrialScheduler.CONTINUE
            if t >= self._max_t:
                return TrialScheduler.STOP
            decision = self._rungs.on_result(trial.trial_id, t, mo.point_of(result, self._objectives,
                                                                             self._constraints))
            self._persist_if_changed()
            if decision == mo.STOP:
                self._num_stopped += 1
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

        def on_trial_complete(self, tune_controller, trial, result):
            self._load()
            if result and isinstance(result.get(TIME_ATTR), (int, float)):
                self._rungs.record(trial.trial_id, result[TIME_ATTR],
                                   mo.point_of(result, self._objectives, self._constraints))
                self._persist_if_changed()

        def save(self, checkpoint_path: str) -> None:
            from raytune_opt import _atomic

            _atomic.write_text(checkpoint_path, json.dumps(self._rungs.to_dict()))

        def restore(self, checkpoint_path: str) -> None:
            with open(checkpoint_path) as f:
                self._rungs = mo.Rungs.from_dict(json.load(f))
            self._loaded = True

        def debug_string(self) -> str:
            sizes = ", ".join(f"epoch {m}: {len(r)}" for m, r in self._rungs.recorded.items())
            return f"Using MO-ASHA: num_stopped={self._num_stopped}; trials per rung: {sizes}"

    MOASHA.__module__ = __name__
    return MOASHA


def _persist_driver_logs(trial) -> None:
    """Copy a trial's ``result.json`` and ``progress.csv`` from the driver's staging directory
    to its directory on storage.

    Ray restarts an exploited trial from the checkpoint PBT hands it and, doing so, copies the
    trial's logs back from storage over the driver's copy (``LoggerCallback._restore_from_remote``);
    storage is synced only now and then, so the epochs reported since the last sync vanished
    from the trial's history (seen with 2-worker trials, whose actors are never reused).
    """
    from pyarrow import fs

    for name in ("result.json", "progress.csv"):
        src = os.path.join(trial.local_path, name)
        if os.path.isfile(src) and os.path.realpath(src) != os.path.realpath(os.path.join(trial.path, name)):
            # The trial's directory on storage may not exist yet: a trial restarted by a
            # resume under a new directory (trial_<n>_<suffix>) before Tune's first sync.
            trial.storage.storage_filesystem.create_dir(trial.path, recursive=True)
            fs.copy_files(src, f"{trial.path}/{name}", source_filesystem=fs.LocalFileSystem(),
                          destination_filesystem=trial.storage.storage_filesystem)


def build_scheduler(spec: Spec, where: dict | None = None):
    """The Ray Tune scheduler the spec names (metric and mode come from TuneConfig).

    Args:
        where: the experiment's storage, for schedulers that keep files there (PBT's
            snapshots): ``{"exp_dir": fs path, "remote": bool, "endpoint_url": str | None}``.
    """
    entry = registry.SCHEDULERS[spec.settings.scheduler.name]
    assert where is not None or not entry.meta.get("needs_storage"), f"{entry.name} keeps files: pass where"
    return entry.load()(spec, where or {})


# ---------------------------------------------------------------- the schedulers' rules
# registry.SCHEDULERS checks: check(view) -> [Finding], run by validation for the chosen one.


def check_hyperband(view: SpecView) -> list[Finding]:
    """Ray's HyperBand is synchronous: it pauses a bracket's trials until the whole bracket has
    been admitted. Behind a concurrency limit, or a searcher that proposes one trial at a time,
    brackets never fill and it stops nothing (measured: every trial ran to max_t)."""
    from raytune_opt.searchers import proposes_one_at_a_time

    out = check_max_t(view)
    limit, algorithm = view.settings.resources.max_concurrent_trials, view.settings.search.algorithm
    if limit is not None:
        out.append(Finding(("resources", "max_concurrent_trials"), f"hyperband fills its brackets before it "
                           f"halves them; a limit of {limit} keeps them from filling and it stops no trial",
                           "remove it (resources per trial bound concurrency), or use scheduler.name: asha",
                           reads="scheduler.name"))
    if proposes_one_at_a_time(algorithm, view.space):
        out.append(Finding(("scheduler", "name"), "hyperband needs its brackets admitted at once, and "
                           f"{algorithm} proposes one trial at a time (it would stop no trial)",
                           "use search.algorithm: random or grid with hyperband, or scheduler.name: asha",
                           reads="search.algorithm"))
    return out


def check_hyperband_bohb(view: SpecView) -> list[Finding]:
    """HyperBandForBOHB tells BOHB's searcher which trials it pauses and at which budget each
    result was measured: with another searcher it fails at its first milestone."""
    out, algorithm = check_max_t(view), view.settings.search.algorithm
    if algorithm != "bohb":
        out.append(Finding(("scheduler", "name"), f"hyperband_bohb schedules trials for BOHB's searcher (got "
                           f"search.algorithm={algorithm})", "set search.algorithm: bohb, or use scheduler.name: "
                           "hyperband or asha", reads="search.algorithm"))
    return out


def check_pbt(view: SpecView) -> list[Finding]:
    return _population_rules(view, "pbt")


def _population_rules(view: SpecView, name: str) -> list[Finding]:
    """What PBT and PB2 both need: no searcher that explores, a flat space with keys they may
    perturb, checkpoints to hand over."""
    space = view.space
    out = []
    algorithm = view.settings.search.algorithm
    if registry.SEARCHERS[algorithm].meta["explores"]:
        usable = [n for n in registry.SEARCHERS if not registry.SEARCHERS[n].meta["explores"]]
        out.append(Finding(("scheduler", "name"), f"{name} explores by itself and cannot be combined with a searcher "
                           f"(got search.algorithm={algorithm})", f"set search.algorithm: {' or '.join(usable)}",
                           reads="search.algorithm"))
    if not space:
        out.append(Finding(("scheduler", "name"), f"{name} needs a space to mutate (got an empty space)",
                           "add space entries", reads="space"))
    if space.is_conditional:
        out.append(Finding(("scheduler", "name"), f"{name} cannot mutate a conditional space (got conditional "
                           "parameters)", "remove the conditions or use asha", reads="space"))
    if space and not _mutable_keys(view):
        own = _loop_mutable(view.data["train"]["loop"])
        keys = (", ".join(own) if own is not None else "an optimizer, loss, augmentation or schedule setting, "
                "train.batch_size or model.dropout")
        out.append(Finding(("scheduler", "name"), f"{name} can perturb none of the searched keys (got "
                           f"{', '.join(p.key for p in space.params)}: they change the model, the data or the run)",
                           f"search {keys}", reads="space train.loop"))
    if not view.settings.train.checkpoint:
        out.append(Finding(("train", "checkpoint"), f"{name} copies checkpoints between trials (got false)",
                           "set it to true", reads="train.checkpoint"))
    return out


def check_pb2(view: SpecView) -> list[Finding]:
    """PBT's rules, and bounds to explore: every key PB2 perturbs must be uniform, loguniform
    or randint (keys it may not perturb are sampled once, any domain)."""
    out = _population_rules(view, "pb2")
    for p in _mutable_keys(view):
        if p.domain.kind not in PB2_KINDS:
            out.append(Finding(("space", p.key), f"pb2 explores continuous bounds ({', '.join(PB2_KINDS)}), not a "
                               f"{p.domain.kind} (got {{{p.domain.kind}: {list(p.domain.args)}}})",
                               "give it bounds, e.g. {uniform: [low, high]} or {loguniform: [low, high]}, "
                               "or use scheduler.name: pbt", at=p.key))
    return out


def check_moasha(view: SpecView) -> list[Finding]:
    """MO-ASHA ranks by several objectives; with one, ASHA does the same job."""
    out = check_max_t(view) + check_grace_period(view)
    metric = view.settings.search.metric
    if len(objectives.objectives(view.settings.search)) < 2:
        out.append(Finding(("scheduler", "name"), f"moasha ranks trials by several objectives, and search.metric "
                           f"names one (got {metric})", "use scheduler.name: asha, or list several objectives in "
                           "search.metric", reads="search.metric search.mode"))
    return out