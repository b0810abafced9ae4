"""Schedulers: thin adapters over ``ray.tune.schedulers``, chosen by name.

The names, the settings each reads and each one's validation rules are entries of
:data:`raytune_opt.registry.SCHEDULERS`; the builders and ``check_*`` rules below are their
targets. Train V2 reports no ``training_iteration``-style counters of its own, so every scheduler
uses the epoch number the recipe reports (:data:`TIME_ATTR`) as its time unit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from typing import TYPE_CHECKING

from raytune_opt import registry
from raytune_opt.registry import Finding, SpecView

if TYPE_CHECKING:
    from raytune_opt.spec import Spec

TIME_ATTR = "epoch"


def max_epochs(data: dict, space) -> int:
    """The most epochs a trial can run: train.epochs, or the top of its searched domain."""
    p = space.by_key.get("train.epochs")
    if p is None:
        return data["train"]["epochs"]
    return max(p.domain.args) if p.domain.categorical else int(p.domain.args[1])


def _max_t(spec: Spec) -> int:
    return spec.data["scheduler"]["max_t"] or max_epochs(spec.data, spec.space)


# ---------------------------------------------------------------- the built-in schedulers
# registry.SCHEDULERS targets: target(spec, where) -> a Ray Tune TrialScheduler.


def fifo(spec: Spec, where: dict):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def asha(spec: Spec, where: dict):
    from ray.tune.schedulers import ASHAScheduler

    s = spec.data["scheduler"]
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=_max_t(spec), grace_period=s["grace_period"],
                         reduction_factor=s["reduction_factor"], brackets=s["brackets"])


def hyperband(spec: Spec, where: dict):
    s = spec.data["scheduler"]
    return _resumable_hyperband_class()(time_attr=TIME_ATTR, max_t=_max_t(spec), reduction_factor=s["reduction_factor"])


@functools.cache
def _resumable_hyperband_class():
    from ray.tune.experiment import Trial
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
    return ResumableHyperBand


def median(spec: Spec, where: dict):
    from ray.tune.schedulers import MedianStoppingRule

    s = spec.data["scheduler"]
    return MedianStoppingRule(time_attr=TIME_ATTR, grace_period=s["grace_period"],
                              min_samples_required=s["min_samples_required"])


def pbt(spec: Spec, where: dict):
    s = spec.data["scheduler"]
    seed = spec.data["search"]["seed"] if spec.data["search"]["seed"] is not None else spec.data["seed"]
    return _checkpointed_pbt_class()(
        snapshots=f"{where['exp_dir']}/{PBT_SNAPSHOTS}", endpoint_url=where.get("endpoint_url"),
        remote=where.get("remote", False), seed=seed,
        time_attr=TIME_ATTR, perturbation_interval=s["perturbation_interval"],
        quantile_fraction=s["quantile_fraction"], synch=s["synch"],
        hyperparam_mutations={p.key: _pbt_mutation(p.domain) for p in spec.space.params if pbt_mutable(p.key)},
    )


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


def pbt_mutable(key: str) -> bool:
    """Whether PBT may perturb searched key ``key`` while a trial trains."""
    return key in _PBT_MUTABLE or (key.startswith(_PBT_MUTABLE_PREFIXES) and key not in _PBT_FIXED)


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
def _checkpointed_pbt_class():
    from ray.tune import Checkpoint
    from ray.tune.schedulers import PopulationBasedTraining

    class CheckpointedPBT(PopulationBasedTraining):
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
            from pyarrow import fs

            from raytune_opt.storage import s3_filesystem

            if self._filesystem is None:  # built once (no descriptor state: Tune pickles this class by value)
                self._filesystem = s3_filesystem(self._endpoint_url) if self._remote else fs.LocalFileSystem()
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
    entry = registry.SCHEDULERS[spec.data["scheduler"]["name"]]
    assert where is not None or not entry.meta.get("needs_storage"), f"{entry.name} keeps files: pass where"
    return entry.load()(spec, where or {})


# ---------------------------------------------------------------- the schedulers' rules
# registry.SCHEDULERS checks: check(view) -> [Finding], run by validation for the chosen one.


def check_grace_period(view: SpecView) -> list[Finding]:
    sched = view.data["scheduler"]
    max_t = sched.get("max_t") or max_epochs(view.data, view.space)
    if sched["grace_period"] > max_t:
        return [Finding(("scheduler", "grace_period"), f"exceeds the epochs a trial can run (got "
                        f"{sched['grace_period']} > {max_t})", "lower scheduler.grace_period",
                        reads="train.epochs scheduler.max_t")]
    return []


def check_hyperband(view: SpecView) -> list[Finding]:
    """Ray's HyperBand is synchronous: it pauses a bracket's trials until the whole bracket has
    been admitted. Behind a concurrency limit, or a searcher that proposes one trial at a time,
    brackets never fill and it stops nothing (measured: every trial ran to max_t)."""
    from raytune_opt.searchers import proposes_one_at_a_time

    out = []
    limit, algorithm = view.data["resources"]["max_concurrent_trials"], view.data["search"]["algorithm"]
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


def check_pbt(view: SpecView) -> list[Finding]:
    d, space = view.data, view.space
    out = []
    algorithm = d["search"]["algorithm"]
    if registry.SEARCHERS[algorithm].meta["explores"]:
        usable = [n for n in registry.SEARCHERS if not registry.SEARCHERS[n].meta["explores"]]
        out.append(Finding(("scheduler", "name"), "pbt explores by itself and cannot be combined with a searcher "
                           f"(got search.algorithm={algorithm})", f"set search.algorithm: {' or '.join(usable)}",
                           reads="search.algorithm"))
    if not space:
        out.append(Finding(("scheduler", "name"), "pbt needs a space to mutate (got an empty space)",
                           "add space entries", reads="space"))
    if space.is_conditional:
        out.append(Finding(("scheduler", "name"), "pbt cannot mutate a conditional space (got conditional "
                           "parameters)", "remove the conditions or use asha", reads="space"))
    if space and not any(pbt_mutable(p.key) for p in space.params):
        out.append(Finding(("scheduler", "name"), "pbt can perturb none of the searched keys (got "
                           f"{', '.join(p.key for p in space.params)}: they change the model, the data or the run)",
                           "search an optimizer, loss, augmentation or schedule setting, train.batch_size or "
                           "model.dropout", reads="space"))
    if not d["train"]["checkpoint"]:
        out.append(Finding(("train", "checkpoint"), "pbt copies checkpoints between trials (got false)",
                           "set it to true", reads="train.checkpoint"))
    return out
