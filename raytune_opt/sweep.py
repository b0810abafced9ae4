"""The sweep: a validated spec becomes a Ray Tune run whose trials run the recipe.

spec -> (searcher, scheduler, trainable) -> ``tune.Tuner.fit()`` -> results rows -> files.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from raytune_opt import objectives
from raytune_opt import experiment, heldout, ray_runtime, results, schedulers, searchers, tracking, trial, warm_start
from raytune_opt import budget as budgets
from raytune_opt import storage as stores  # `storage` is run_sweep's --storage argument
from raytune_opt._paths import ensure_under
from raytune_opt.errors import UsageError
from raytune_opt.experiment import BEST, HISTORY, RESULTS, RUN_INPUT, RUN_META, SPEC
from raytune_opt.redact import redact_data
from raytune_opt.spec import Spec, schema

# What --dry-run forces on every trial, after the trial's own config: toy scale, one worker.
DRY_RUN_FORCE = {
    "train.epochs": 1,
    "train.limit_batches": 3,
    "resources.num_workers": 1,
    "resources.cpus_per_worker": 1.0,
    "resources.gpus_per_worker": 0.0,
    "data.loader_workers": 0,
}


@dataclass
class SweepOutcome:
    exp_dir: Path  # the experiment's local directory (an S3 experiment's local mirror)
    rows: list
    best: results.TrialRow | None
    wall_seconds: float
    spec: Spec | None = None
    uri: str = ""  # where it lives: exp_dir, or s3://bucket/prefix/NAME
    promotion: dict | None = None  # the promotion's manifest, when the caller promoted the best trial
    # best.json's test record: the best trial on the test split (None: no test split; {"failed": WHY})
    test: dict | None = None
    budget: dict | None = None  # search.budget's summary (budget.Ledger.summary), when the spec sets one
    location: stores.Location | None = None  # where it lives, for what comes after the sweep (the report)

    @property
    def where(self) -> str:
        return self.uri or str(self.exp_dir)

    @property
    def exit_code(self) -> int:
        return 0 if any(r.successful for r in self.rows) else 1


def experiment_location(spec: Spec, storage_root: str | None) -> stores.Location:
    """Where the sweep's experiment goes: ``--storage`` or ``storage.path``, then the name."""
    return stores.locate(storage_root or spec.data["storage"]["path"], spec.name,
                          spec.data["storage"]["endpoint_url"])


def dry_run_spec(spec: Spec) -> Spec:
    """The spec as --dry-run runs it: every setting in DRY_RUN_FORCE, FIFO scheduling."""
    from raytune_opt.space import apply

    data = apply(copy.deepcopy(spec.data), DRY_RUN_FORCE)
    if data["train"]["precision"] == "fp16":  # no GPU in a dry run
        data["train"]["precision"] = "fp32"
    data["scheduler"]["name"] = "fifo"
    data["resources"]["max_concurrent_trials"] = None
    return Spec(data, spec.space, spec.source, spec.overrides, spec.code_dirs)


def check_data(spec: Spec) -> None:
    """Load the data set once before Ray starts: a built-in fills the node cache, a user's
    data callable runs once; either fails fast.

    Raises:
        DataError: the data is missing or unreadable, or the user's callable raised or
            returned something that is not a data set, with the fix.
    """
    from raytune_opt.recipe.bundle import load_bundle

    load_bundle(spec.data["data"], spec.data["seed"], spec.code_dirs)


def _trial_resources(spec: Spec) -> dict:
    res = spec.data["resources"]
    if res["num_workers"] == 1:
        out = {"cpu": res["cpus_per_worker"]}
        if res["gpus_per_worker"]:
            out["gpu"] = res["gpus_per_worker"]
        return out
    # The trial only drives a TorchTrainer whose workers hold the real resources.
    # Ray refuses an empty bundle; a token of memory keeps the trial off the CPU count.
    return {"cpu": 0, "memory": 1}


def _scheduler(spec: Spec, loc: stores.Location):
    return schedulers.build_scheduler(spec, {"exp_dir": loc.fs_path, "remote": loc.remote,
                                             "endpoint_url": loc.endpoint_url})


def _trainable(spec: Spec, loc: stores.Location, dry_run: bool, shipped: list, warm_pool: str | None = None):
    from ray import tune

    # Shipped modules are what trials import on a joined cluster; the driver's directories
    # mean nothing on other machines (and on this one would shadow what was shipped).
    # Trials get the spec without credentials: Tune pickles the trainable into its state, and
    # checkpoints carry the recipe; no trial needs the tracker's password.
    trainable = trial.make_trainable(redact_data(spec.data), spec.space, spec.sha256(), loc.fs_path,
                                     force=DRY_RUN_FORCE if dry_run else None, endpoint_url=loc.endpoint_url,
                                     remote=loc.remote, code_dirs=() if shipped else spec.code_dirs,
                                     warm_pool=warm_pool)
    return tune.with_resources(trainable, _trial_resources(spec))


def _start_warm_pool(spec: Spec, loc: stores.Location, dry_run: bool) -> str | None:
    """``resources.warm_workers``: the sweep's pool of warm worker groups (raytune_opt.warm_slots),
    when its trials may have several workers; slots of the spec's own shape start at once."""
    res = spec.data["resources"]
    if dry_run or not res.get("warm_workers") or res["num_workers"] == 1:  # resources are not searched
        return None
    from raytune_opt import warm_slots

    # A searched strategy makes several shapes: no slot is started before a trial asks for one.
    prewarm = None if "train.strategy" in spec.space.by_key else warm_slots.Shape.of(spec.data)
    planned = [n for n in (res["max_concurrent_trials"], spec.data["search"]["num_samples"]) if n]
    return warm_slots.start_pool(loc.fs_path, loc.remote, loc.endpoint_url, prewarm=prewarm,
                                 prewarm_slots=min(planned, default=1 << 20))


def _stop_warm_pool(pool: str | None) -> None:
    if pool is not None:
        from raytune_opt import warm_slots

        warm_slots.stop_pool(pool)


def code_to_ship(spec: Spec, address: str | None) -> list:
    """The user modules a joined cluster's nodes need (model, data set, loop named by import
    path, searched options too), from the spec's directories; none for the embedded local Ray
    and inside a Ray job (its working directory travels with it). None either when this process
    is already connected to Ray (a notebook, an API caller): a connection's ``runtime_env`` is
    fixed when it is made, so nothing could be shipped and the trials are given the spec's
    directories by path instead, which nodes that see the same paths import (this machine's,
    a shared file system). Before, they got neither, and every trial failed to import the code."""
    import ray

    if address is None or ray_runtime.in_ray_job() or ray.is_initialized():
        return []
    from raytune_opt import registry

    targets = []
    for reg, key in ((registry.MODELS, "model.name"), (registry.DATASETS, "data.dataset"),
                     (registry.LOOPS, "train.loop")):
        section, name = key.split(".")
        values = {spec.data[section][name]}
        p = spec.space.by_key.get(key)
        if p is not None and p.domain.categorical:
            values |= set(p.domain.args)
        targets += [reg.target_of(v) for v in values if isinstance(v, str)]
    # raytune_opt itself is installed on every node (and may sit in the current directory).
    targets = [t for t in targets if not t.startswith("raytune_opt.")]
    return registry.user_modules(sorted(targets), spec.code_dirs)


def run_sweep(spec: Spec, *, address: str | None = None, storage: str | None = None,
              dry_run: bool = False, verbose: int = 1, live: bool = False,
              callbacks: Callable[[stores.Location], list] | None = None) -> SweepOutcome:
    """Run the sweep the spec describes and write its results.

    ``verbose`` is Ray Tune's console verbosity; ``live`` adds raytune-opt's compact view
    (``raytune_opt.live``; the CLI's default, with ``verbose=0``). ``callbacks`` gives the
    caller's own Tune callbacks for the experiment's location (the CLI's and the API's:
    ``report.callbacks``, the page refreshed as trials finish); a resumed sweep gets them back
    from Tune's state.

    Raises:
        UsageError: results for this name exist already, or the cluster is unreachable.
        DataError: the data set is missing or unreadable.
    """
    from ray import tune

    source_text = Path(spec.source).read_text()
    if dry_run:
        spec = dry_run_spec(spec)
    loc = experiment_location(spec, storage)
    exp_dir = loc.local
    loc.check_writable()
    if loc.exists(RESULTS) or loc.exists(SPEC):
        raise UsageError(f"{loc.uri}: a sweep named '{spec.name}' already has results there; pass name=NEW_NAME "
                         "or --storage OTHER_DIR (or 'raytune-opt resume' it)")
    _refuse_foreign(loc)
    address = ray_runtime.resolve_address(address)
    if address is None or dry_run:  # on a cluster the data may live only on the worker nodes
        check_data(spec)
    # Trackers and the caller's (the report's refresh); an unreachable MLflow fails here, before Ray starts.
    tune_callbacks = (tracking.callbacks(spec, loc) + (list(callbacks(loc)) if callbacks else [])
                      + (_live_callbacks(spec, loc) if live else []))
    from raytune_opt.tune_state import KeepState

    tune_callbacks.append(KeepState(loc.local, loc))  # resumable after a kill at any moment (tune_state.py)
    # search.budget: a callback keeps its ledger, Tune's stopper ends the sweep when it says so.
    budget_parts = budgets.tune_parts(spec, loc)
    if budget_parts is not None:
        tune_callbacks.append(budget_parts[0])
    search = spec.data["search"]
    # Earlier experiments' trials, read (as data) and checked before Ray starts.
    warm = warm_start.load(spec, loc.uri, loc.endpoint_url)
    for line in warm.lines if warm else ():
        print(line, file=sys.stderr)
    search_alg, param_space = searchers.build_searcher(spec, told=warm.told if warm else None)
    if address is None:  # a bad storage path fails before Ray starts
        experiment.write_inputs(loc, spec, source_text, dry_run)
        _record_warm_start(loc, warm)
    shipped = code_to_ship(spec, address)
    embedded = ray_runtime.start(address, py_modules=shipped)
    pool = None
    try:
        if address is not None:
            if not loc.remote:  # before anything is written there
                # Checkpoints of trials on a node that does not see the directory would be lost.
                stores.check_shared(exp_dir.parent)
            experiment.write_inputs(loc, spec, source_text, dry_run)
            _record_warm_start(loc, warm)
        pool = _start_warm_pool(spec, loc, dry_run)
        tuner = tune.Tuner(
            _trainable(spec, loc, dry_run, shipped, pool),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                # Several objectives: the searcher holds them; Tune would overwrite them with one.
                metric=None if objectives.is_multi(search) else search["metric"],
                mode=None if objectives.is_multi(search) else search["mode"], search_alg=search_alg,
                scheduler=_scheduler(spec, loc),
                # null: Tune proposes (its -1: without end) until the budget's stopper ends the sweep.
                num_samples=-1 if search["num_samples"] is None else search["num_samples"],
                max_concurrent_trials=None,  # build_searcher applies resources.max_concurrent_trials
                trial_dirname_creator=_trial_dirname,
                # A fresh actor per trial re-imports torch and Ray (~3 s here); ASHA lives on cheap trials.
                # Not with several workers: a reused actor must first see its trial's function return,
                # and a TorchTrainer.fit() that a scheduler stopped never returns (nothing stops its
                # Train run); the next trial then fails ("Could not re-use actor") and the sweep hangs.
                # A trial actor that is not reused is terminated, and its Train run with it.
                # Warm slots (resources.warm_workers): the trial only relays, and ends when stopped.
                reuse_actors=spec.data["resources"]["num_workers"] == 1 or pool is not None,
            ),
            run_config=tune.RunConfig(
                name=spec.name, verbose=verbose, **loc.tune_storage(),
                # On S3, Ray uploads the experiment state at most every sync_period (default 300 s):
                # a resume would start from a state minutes old.
                **({"sync_config": tune.SyncConfig(sync_period=10)} if loc.remote else {}),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=tune_callbacks, stop=budget_parts[1] if budget_parts else None,
            ),
        )
        return _fit_and_record(tuner, spec, loc, quiet_console=live)
    finally:
        _stop_warm_pool(pool)
        ray_runtime.stop(embedded)


def _record_warm_start(loc: stores.Location, warm) -> None:
    """The told trials, for the report (a resume does not read the earlier experiments again:
    the searcher's saved state holds them)."""
    if warm is not None:
        warm_start.write(loc.local, warm)
        loc.publish(warm_start.WARM_START)


def _refuse_foreign(loc: stores.Location) -> None:
    """Refuse a place that holds something other than an experiment (a sweep would overwrite
    its best.json, report.html, history/... and, on S3, the stale mirror would be deleted).

    Raises:
        UsageError: ``loc`` is a file, or a non-empty directory (prefix) without a run record.
    """
    if loc.exists(RUN_META):
        return
    if loc.remote:
        from pyarrow import fs

        try:
            found = loc.filesystem().get_file_info(fs.FileSelector(loc.fs_path, allow_not_found=True))
        except OSError as exc:
            raise stores.s3_error(loc.uri, exc, loc.endpoint_url) from None
        foreign = bool(found)
    else:
        foreign = loc.local.exists() and (not loc.local.is_dir() or any(loc.local.iterdir()))
    if foreign:
        what = "is a file" if loc.local.exists() and not loc.local.is_dir() else "is not empty"
        raise UsageError(f"{loc.uri}: {what} and is not a raytune-opt experiment (no {RUN_META}); a sweep would "
                         "overwrite what is there: pass name=NEW_NAME or --storage OTHER_DIR, or move it away")


def _live_callbacks(spec: Spec, loc: stores.Location) -> list:
    from raytune_opt import live

    return live.callbacks(spec, loc.uri)


def resume_sweep(exp_dir: str | Path, *, address: str | None = None, restart_errored: bool = False,
                 endpoint_url: str | None = None) -> SweepOutcome:
    """Continue an interrupted sweep: finished trials stay, unfinished ones continue from
    their last checkpoint, errored ones are resumed (or restarted), and the searcher's state
    comes back so no config is proposed twice.

    Args:
        exp_dir: the experiment directory, or ``s3://BUCKET/PREFIX/NAME``.
        endpoint_url: an S3 experiment's endpoint (default: ``$AWS_ENDPOINT_URL_S3`` /
            ``$AWS_ENDPOINT_URL``, else AWS).

    Raises:
        UsageError: the directory is not a raytune-opt experiment or its Tune state is unusable.
    """
    from ray import tune

    from raytune_opt.spec import load_spec

    loc = _resume_location(str(exp_dir), endpoint_url)
    meta = experiment.read_record(loc.local)
    # User code is imported from where the run found it (older runs recorded no such key).
    code_dirs = meta.get("code_dirs")
    spec = load_spec(loc.local / RUN_INPUT, meta["overrides"], code_dirs=tuple(code_dirs) if code_dirs else None)
    dry_run = bool(meta["dry_run"])
    if dry_run:
        spec = dry_run_spec(spec)
    spec = recorded_spec(spec, meta["spec_sha256"], loc.uri)
    from raytune_opt import tune_state

    if not loc.remote:  # a crash during Tune's copy of its state (tune_state.py)
        notes = tune_state.repair(loc.local)
    else:
        try:
            notes = tune_state.repair_remote(loc)
        except OSError as exc:
            raise stores.s3_error(loc.uri, exc, loc.endpoint_url) from None
    for line in notes:
        print(line, file=sys.stderr)
    restore_path = loc.fs_path  # with a custom filesystem Ray takes the path without its scheme
    if not tune.Tuner.can_restore(restore_path, storage_filesystem=loc.filesystem()):
        raise UsageError(f"{loc.uri}: Ray Tune's experiment state is missing (tuner.pkl / experiment_state-*.json); "
                         "the sweep cannot be resumed — results.csv and trial_*/ still hold what finished")
    address = ray_runtime.resolve_address(address)
    shipped = code_to_ship(spec, address)
    embedded = ray_runtime.start(address, py_modules=shipped)
    pool = None
    try:
        try:
            # Trials keep the same Tune ids (RESUME), so the restored searcher and its
            # concurrency limit know every trial that comes back. Tune holds no checkpoint
            # of ours that could have been deleted since its state was saved: an unfinished
            # or errored trial starts its function again and continues from its own
            # ckpt/last.pt (trial._resume_point).
            if restart_errored:
                _forget_errored_checkpoints(loc)
            again = tune.ResumeConfig.ResumeType.RESUME
            pool = _start_warm_pool(spec, loc, dry_run)  # the slots died with the driver: new ones
            tuner = tune.Tuner.restore(restore_path, trainable=_trainable(spec, loc, dry_run, shipped, pool),
                                       storage_filesystem=loc.filesystem(),
                                       _resume_config=tune.ResumeConfig(unfinished=again, errored=again))
        except (EOFError, OSError, ValueError, RuntimeError) as exc:  # truncated state (ray#58179)
            raise UsageError(f"{loc.uri}: Ray Tune's experiment state cannot be read ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'truncated'}); results.csv and trial_*/ "
                             "still hold what finished") from None
        # The restored Tuner brings back our own loggers and trackers, the live view of a
        # sweep that had it and the budget's callback and stopper: Ray's console stays quiet either way.
        return _fit_and_record(tuner, spec, loc, quiet_console=True, fit=_budget_left(spec, loc))
    finally:
        _stop_warm_pool(pool)
        ray_runtime.stop(embedded)


def _budget_left(spec: Spec, loc: stores.Location) -> bool:
    """Whether a resumed sweep has budget left (say what is left); a spent one is not run again."""
    limits = budgets.Limits.from_spec(spec.data)
    ledger = budgets.read(loc, limits) if limits.any else None
    if ledger is None:
        return True
    if ledger.reached is None and ledger.check() is None:
        print(f"raytune-opt: budget: {ledger.time_spent_s:.0f} s spent over {ledger.sessions} session(s); "
              f"{ledger.left()}", flush=True)
        return True
    budgets.write(loc, ledger)  # a limit reached before the kill, and not yet recorded
    print(f"raytune-opt: budget: nothing left ({ledger.reached['text']}); the results of the trials it ran are "
          "written again", flush=True)
    return False


def recorded_spec(spec: Spec, recorded_sha256: str, where: str) -> Spec:
    """The spec an experiment ran with, given its re-validated spec and the hash it recorded.

    An experiment started before ``data.test_fraction`` existed had no test split: its spec
    now resolves to the default test split, which would move samples out of the training
    and validation splits its trials had. It resumes as it ran, without a test split (its
    figures stay validation figures), and says so.

    Raises:
        UsageError: the spec resolves to other settings (another raytune-opt version).
    """
    if spec.sha256() == recorded_sha256:
        return spec
    before = spec.without_test_split()
    if before.sha256() == recorded_sha256:
        print(f"raytune-opt: {where} was started before raytune-opt had a test split; it resumes as it ran, "
              "with no test split (data.test_fraction 0), so its figures are validation figures", file=sys.stderr)
        return before
    raise UsageError(f"{where}: the recorded spec no longer resolves to the same settings (another "
                     "raytune-opt version?); start a new sweep with 'raytune-opt run'")


def _resume_location(exp_dir: str, endpoint_url: str | None) -> stores.Location:
    """The experiment to resume; an S3 one gets a fresh local mirror of the run record."""
    if not stores.is_remote(exp_dir):
        loc = stores.from_uri(exp_dir)
        if loc.local.is_dir() and (loc.local / RUN_META).is_file():
            recorded = experiment.recorded_storage(loc.local)  # None: read_record says what is wrong
            if stores.is_remote(recorded):
                problem = stores.s3_problem(recorded)
                if problem:
                    raise UsageError(f"{loc.local / RUN_META}: storage {recorded!r}: {problem}; the run record is "
                                     "damaged: resume the S3 experiment by the URI 'raytune-opt run' printed")
                raise UsageError(f"{loc.local}: a local mirror of the S3 experiment {recorded}; resume the "
                                 f"experiment itself: raytune-opt resume {recorded}")
        return loc
    loc = stores.from_uri(exp_dir, endpoint_url)
    if not loc.exists(RUN_META):
        raise UsageError(f"{loc.uri}: not a raytune-opt experiment (no {RUN_META} there); pass the URI "
                         "'raytune-opt run' printed (s3://BUCKET/PREFIX/NAME)")
    if loc.local.exists():  # the bucket is the truth; a stale mirror must not mix in
        ensure_under(loc.local, stores.mirror_root(), f"the stale local mirror of {loc.uri}")
        shutil.rmtree(loc.local)
    loc.fetch(RUN_META, RUN_INPUT, SPEC)
    return loc


def _forget_errored_checkpoints(loc: stores.Location) -> None:
    """--restart-errored: errored trials start from scratch (their own ckpt/ is removed)."""
    if not loc.remote:
        for err in loc.local.glob("trial_*/error.txt"):
            ensure_under(err.parent / trial.CKPT_DIR, loc.local, "an errored trial's checkpoints")
            shutil.rmtree(err.parent / trial.CKPT_DIR, ignore_errors=True)
        return
    from pyarrow import fs

    s3 = loc.filesystem()
    for info in s3.get_file_info(fs.FileSelector(loc.fs_path, allow_not_found=True)):
        if info.type == fs.FileType.Directory and info.base_name.startswith("trial_"):
            if s3.get_file_info(f"{info.path}/error.txt").type == fs.FileType.File:
                s3.delete_dir_contents(f"{info.path}/{trial.CKPT_DIR}", missing_dir_ok=True)


def _trial_dirname(t) -> str:
    """``trial_<n>``: the n-th trial the searcher proposed (Tune's experiment tag starts with n).

    Stable across a resume: Tune gives a restarted trial a new id but the same tag, so the
    restarted trial finds its own ``ckpt/last.pt`` in the same directory.
    """
    index = str(t.experiment_tag).split("_", 1)[0]
    return f"trial_{index}" if index.isdigit() else f"trial_{t.trial_id}"


def _fit_and_record(tuner, spec: Spec, loc: stores.Location, quiet_console: bool,
                    fit: bool = True) -> SweepOutcome:
    """Run the Tuner (``fit``; else only read what it holds: a resumed sweep whose budget is
    spent), then write the results."""
    from raytune_opt.live import QUIET_CONSOLE

    exp_dir = loc.local
    started = time.monotonic()
    # Tune reads these during the fit; a Python user's own Tune runs later keep their defaults.
    with _environ({**tracking.QUIET_LOGGERS, **(QUIET_CONSOLE if quiet_console else {})}):
        grid = tuner.fit() if fit else tuner.get_results()
    wall = time.monotonic() - started
    limits = budgets.Limits.from_spec(spec.data)
    ledger = budgets.read(loc, limits) if limits.any else None
    rows = collect_rows(grid, spec, remote=loc.remote, budget_reached=ledger.reached if ledger else None)
    search = spec.data["search"]
    try:  # atomic: a full or read-only disk leaves no half-written results.csv / best.json
        (metric, mode), *more = objectives.objectives(search)
        best = results.write_results(exp_dir, rows, [p.key for p in spec.space.params], metric, mode,
                                     spec.sha256(), more=tuple(more), budget=ledger.summary() if ledger else None)
    except OSError as exc:
        raise UsageError(f"{exp_dir}: cannot write results.csv / best.json ({exc.strerror or exc}); the trials "
                         f"and their checkpoints are kept: free the disk, then 'raytune-opt resume {exp_dir}' "
                         "writes them") from None
    test = None
    if best is not None:  # the chosen trial, measured once on the split no trial saw
        test = heldout.record(exp_dir, spec.data["seed"], spec.code_dirs, loc.endpoint_url,
                              selected=bool(spec.data["promote"].get("select")))
    loc.publish(RESULTS, HISTORY, BEST)
    return SweepOutcome(exp_dir, rows, best, wall, spec, uri=loc.uri, test=test, location=loc,
                        budget=ledger.summary() if ledger else None)


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """Set environment variables for the block, then put back what was there."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def collect_rows(grid, spec: Spec, remote: bool = False,
                 budget_reached: dict | None = None) -> list[results.TrialRow]:
    """One row per trial of a Tune ResultGrid, in our terms.

    ``budget_reached``: why search.budget ended the sweep (budget.Ledger.reached): the trials
    it stopped (Tune stopped them without a last result marked ``done``) say so.
    """
    metric, mode = objectives.primary(spec.data["search"])
    constraints = spec.data["search"].get("constraints") or {}
    wanted = {m for m, _ in objectives.objectives(spec.data["search"])} | set(constraints)
    planned = spec.data["train"]["epochs"]
    loops_own = spec.data["train"]["loop"] != "builtin"
    # Ray's Result.config is the config in the trial's last result. A trial that never
    # reported has one only while its actor lives (Tune fills it in from the actor), so a
    # sweep read back without running (a resumed sweep whose budget is spent) lost the config
    # of a trial stopped before its first epoch, which the live sweep had written. Tune's own
    # trials keep it whatever happened; the ResultGrid holds them only privately.
    analysis = getattr(grid, "_experiment_analysis", None)
    trial_configs = {t.path: t.config for t in getattr(analysis, "trials", None) or ()}
    rows = []
    for res in grid:
        m = res.metrics or {}
        history = []
        df = res.metrics_dataframe
        # The trial's own id from its own results: after a PBT exploit, Tune's metrics of an
        # errored trial can be the donor's last result.
        ids = df["trial_id"].dropna() if df is not None and "trial_id" in df else ()
        trial_id = (ids.iloc[-1] if len(ids) else None) or m.get("trial_id") or Path(res.path).name
        if df is not None and len(df):
            # Ours, and the sweep's metric whatever its name (a user loop may report its own);
            # every metric a loop other than the built-in one reported (a trainer's eval_loss, loss,
            # learning_rate: its curves in the report).
            keep = [c for c in df.columns if c in _HISTORY_KEYS or c in wanted or (loops_own and _reported(c, wanted))]
            history = [_history_row(rec, spec) for rec in df[keep + [c for c in ("replayed",) if c in df]]
                       .to_dict("records")]
            history = _without_replays(history)
        best = results.best_epoch(history, metric, mode)
        last = history[-1] if history else {}
        reason = m.get("stop_reason") or ""
        epochs = int(last.get("epoch", 0) or 0)
        trial_planned = int(_config_value(res.config, spec, "train.epochs", planned))
        if res.error is not None:
            status, reason = "error", f"error: {type(res.error).__name__}"
        elif reason.startswith("diverged"):
            status = "diverged"
        elif reason.startswith(objectives.INFEASIBLE):
            status = objectives.INFEASIBLE
        elif reason in ("completed", "early_stopping"):
            status = "ok"
        elif epochs < trial_planned:
            status, reason = "stopped", f"stopped by {spec.data['scheduler']['name']} at epoch {epochs}"
            if budget_reached and not m.get("done"):  # a scheduler's stop marks the trial's last result done
                reason = budgets.row_reason(budget_reached, epochs)
        else:
            status, reason = "ok", reason or "completed"
        broken = objectives.violations(best, constraints) if status in ("ok", "stopped") else []
        if broken:  # a bound only its results could show (a metric's)
            status, reason = objectives.INFEASIBLE, f"{objectives.INFEASIBLE}: {'; '.join(broken)}"
        ckpt = m.get(trial.TRIAL_CHECKPOINT) or m.get("checkpoint_path") or (res.checkpoint.path if res.checkpoint
                                                                             else None)
        if ckpt and remote and not stores.is_remote(ckpt):  # Ray's paths on S3 are bucket/key
            ckpt = stores.S3 + ckpt
        config = searchers.flatten_config(res.config or trial_configs.get(res.path) or {}, spec.space)
        if best and any(k.startswith("config.") for k in best):  # PBT: the config of the best epoch
            config = {k.removeprefix("config."): v for k, v in best.items() if k.startswith("config.")}
        rows.append(results.TrialRow(
            trial_id=trial_id, status=status, stop_reason=reason, config=config, epochs=epochs,
            seconds=float(m.get("time_total_s", 0.0) or 0.0),
            train_seconds=float(sum(h.get("epoch_s", 0.0) or 0.0 for h in history)),
            best=best, last=last, checkpoint=ckpt, error=str(res.error) if res.error else None, history=history,
            node_id=str(m.get("node_id") or ""),
        ))
    return sorted(rows, key=lambda r: r.trial_id)


_HISTORY_KEYS = {"epoch", "stop_reason", trial.TRIAL_CONFIG, *schema.METRICS, *schema.EPOCH_STATS}
# What a trial's results hold besides its metrics: Tune's bookkeeping and the runner's own.
_NOT_METRICS = {"done", "trial_id", "node_id", "replayed", "should_checkpoint", "checkpoint_path",
                trial.TRIAL_CHECKPOINT}


def _reported(column: str, wanted: set) -> bool:
    """Whether a results column is a metric the loop reported (not Tune's bookkeeping, a
    flattened ``config/...`` column, or the runner's ``best_<objective>``)."""
    from ray.tune.result import AUTO_RESULT_KEYS

    return ("/" not in column and column not in AUTO_RESULT_KEYS and column not in _NOT_METRICS
            and column.removeprefix("best_") not in wanted)


def _without_replays(history: list[dict]) -> list[dict]:
    """One report per epoch: a resumed trial re-reports the epoch it had finished (marked
    ``replayed``, once or twice: the epoch and, if it was the last, the finished run). The
    original report wins; when the crash lost it, the first replay stands in for it."""
    originals = {h.get("epoch") for h in history if not h.get("replayed")}
    out, stood_in = [], set()
    for h in history:
        if h.get("replayed"):
            if h.get("epoch") in originals or h.get("epoch") in stood_in:
                continue
            stood_in.add(h.get("epoch"))
        out.append({k: v for k, v in h.items() if k != "replayed"})
    return out


def _history_row(rec: dict, spec: Spec) -> dict:
    """One epoch of a trial's history; a PBT epoch's config becomes ``config.<key>`` columns."""
    import json

    row = {k: _plain(v) for k, v in rec.items() if k != trial.TRIAL_CONFIG}
    config = rec.get(trial.TRIAL_CONFIG)
    if isinstance(config, str) and config:
        row.update({f"config.{k}": v for k, v in json.loads(config).items() if k in spec.space.by_key})
    return row


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _config_value(config: dict | None, spec: Spec, key: str, default):
    flat = searchers.flatten_config(config or {}, spec.space)
    return flat.get(key, default)
