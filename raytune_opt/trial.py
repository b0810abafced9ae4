"""One trial: the Tune function trainable.

With one worker the recipe's loop runs inside the Tune trial itself (a 2-worker
TorchTrainer costs ~20 s of start-up here before its first epoch, and ASHA lives on cheap
trials). With several, the trial builds a Ray Train ``TorchTrainer`` whose workers run the
same loop under DDP or DeepSpeed, and a relay (``_ReportRelay``: Ray's ``TuneReportCallback``
without its end-of-run deadlock) forwards rank 0's metrics and checkpoint path to Tune (the
Train V2 pattern: ``tune.Tuner(TorchTrainer)`` no longer works). With
``resources.warm_workers: true`` the trial sends its loop config to a warm slot instead, a
worker group kept across trials (:mod:`raytune_opt.warm_slots`), and relays what comes back.

Under DeepSpeed every rank reports its own ZeRO shard files with the checkpoint; Train V2
syncs one checkpoint directory name across the ranks and each rank uploads into it
(``ray/train/v2/_internal/execution/context.py``), so the persisted checkpoint holds every
rank's shard, not only rank 0's (ray-project/ray#33369).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from raytune_opt import _atomic, registry, searchers
from raytune_opt._paths import ensure_under
from raytune_opt.recipe.session import Session
from raytune_opt.registry import add_code_paths
from raytune_opt.space import Space, apply
from raytune_opt.timeline import mark

CHECKPOINT_FILE = "last.pt"
CKPT_DIR = "ckpt"  # inside the trial directory: the trial's own best.pt / last.pt
TRIAL_CONFIG = "trial_config"  # reported key under a scheduler that exploits (PBT): the config (JSON) it trained with
TRIAL_CHECKPOINT = "trial_checkpoint"  # reported key: the trial's own checkpoint directory (a URI)
OWNER = "owner.txt"  # in ckpt/: the Tune id of the trial whose checkpoints these are
ADOPTED = "adopted_from.txt"  # in ckpt/: the PBT donor snapshot last.pt was last taken from
RECORDED = "recorded_epoch.txt"  # in ckpt/: the last epoch whose report Tune took (see TuneSession.report)
HEALTH_CHECK_INTERVAL_S = 0.2  # how often a trial's Train controller polls its workers (see _fit_torch_trainer)


def _stage(checkpoint_dir: str, top_level: bool = True, shards: Sequence[str] = ()) -> str:
    """Hard-link a checkpoint's files into a fresh directory for Ray to persist.

    Ray may delete a reported directory after uploading it; the loop keeps writing best/last
    into its own directory, so Ray gets links (no copy) in a directory of its own.

    Args:
        checkpoint_dir: the rank's checkpoint directory.
        top_level: stage its top-level files (``best.pt``, ``last.pt``: rank zero's).
        shards: paths under it that this rank wrote as its shard (kept at the same relative path).
    """
    root, staged = Path(checkpoint_dir), Path(tempfile.mkdtemp(prefix="raytune_opt_report_"))
    names = [f.name for f in root.iterdir() if f.is_file() and not f.name.startswith(".")] if top_level else []
    for rel in [*names, *shards]:
        (staged / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(root / rel, staged / rel)
        except OSError:  # another filesystem
            shutil.copy2(root / rel, staged / rel)
    return str(staged)


class TuneSession(Session):
    """The loop inside a Tune trial (one worker): reports go to ``ray.tune.report``.

    Checkpoints are written to ``root`` (the trial's own ``ckpt/`` directory) and are *not*
    handed to Tune: Tune keeps one checkpoint per trial and its experiment state can name one
    that has been deleted since, which then breaks a resume. The trial's own directory is
    the one place a trial continues from (a resumed sweep, a PBT exploit: see
    :func:`_resume_point`); each report names it as ``trial_checkpoint``.
    """

    def __init__(self, device: str, num_threads: int | None, root: str, store: "OwnStore", extra: dict | None = None):
        import torch

        self.device = torch.device(device)
        self.num_threads = num_threads
        self._root = root
        self._store = store
        self._extra = extra or {}  # reported with every epoch (PBT: the trial's current config)

    def report(self, metrics: dict, checkpoint_dir: str | None, shards: Sequence[str] = ()) -> None:
        from ray import tune

        if checkpoint_dir:
            self._store.push(checkpoint_dir)
        try:
            # A function trainable's report returns (or exits, when the trial is stopped or
            # paused) only once the driver has processed it: result.json and the history
            # have this epoch. Noted, so that a resume knows whether to replay it.
            tune.report({**metrics, **self._extra, "node_id": _node_id(), TRIAL_CHECKPOINT: self._store.uri})
        finally:
            if metrics.get("epoch") is not None:
                _atomic.write_text(Path(self._root) / RECORDED, str(int(metrics["epoch"])))
                self._store.push(self._root)

    def recorded_epoch(self) -> int | None:
        return _recorded_epoch(self._root)

    def close(self) -> None:
        pass  # the checkpoint directory is the trial's own: it must outlive the process

    def checkpoint_root(self) -> str:
        return self._root


class TrainSession(Session):
    """The loop on one Ray Train worker: DDP model, sharded loaders, ``ray.train.report``.

    Args:
        num_threads: torch threads for the loop.
        root: the trial's checkpoint directory (on storage every node reaches).
        shared_checkpoints: every rank writes its shard into ``root`` (DeepSpeed ZeRO);
            otherwise only rank 0 writes there and the others get a temporary directory.
    """

    def __init__(self, num_threads: int | None, root: str | None = None, shared_checkpoints: bool = False,
                 store: "OwnStore | None" = None, extra: dict | None = None):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.num_threads = num_threads
        # Rank 0 writes into the trial's checkpoint directory (shared storage on clusters), and
        # so does every rank when each saves its own shard.
        self._temporary = root is None or (self.rank != 0 and not shared_checkpoints)
        self._root = tempfile.mkdtemp(prefix=f"raytune_opt_rank{self.rank}_") if self._temporary else root
        self._model = None
        self._store = store  # rank 0 keeps the trial's own best.pt / last.pt there (S3: uploads)
        self._extra = extra or {}

    def prepare_model(self, model):
        import ray.train.torch

        self._model = ray.train.torch.prepare_model(model)
        return self._model

    def prepare_loader(self, loader):
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader)

    def watch_model(self, model) -> None:
        self._model = model  # its replicas are compared in the last report (rank_param_max_diff)

    def report(self, metrics: dict, checkpoint_dir: str | None, shards: Sequence[str] = ()) -> None:
        import ray.train

        if metrics.get("stop_reason") and self.world_size > 1 and self._model is not None:
            # The last report says whether the DDP replicas stayed identical.
            metrics = {**metrics, "rank_param_max_diff": _rank_param_max_diff(self._model)}
        # Rank 0 reports best.pt/last.pt (and its shard); every other rank its own shard only.
        # Train V2 merges the ranks' files into one checkpoint directory.
        metrics = {**metrics, **self._extra, "node_id": _node_id()}
        if self._store is not None and self.is_rank_zero:
            if checkpoint_dir:
                self._store.push(checkpoint_dir)
            metrics[TRIAL_CHECKPOINT] = self._store.uri
        has_files = checkpoint_dir and (self.is_rank_zero or shards)
        staged = _stage(checkpoint_dir, self.is_rank_zero, shards) if has_files else None
        try:  # uploaded synchronously (Train V2's default upload mode)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staged) if staged else None)
        finally:
            if staged:
                ensure_under(staged, tempfile.gettempdir(), "a staged checkpoint")
                shutil.rmtree(staged, ignore_errors=True)

    def close(self) -> None:
        if self._temporary:
            ensure_under(self._root, tempfile.gettempdir(), "a rank's scratch checkpoint directory")
            shutil.rmtree(self._root, ignore_errors=True)

    def checkpoint_root(self) -> str:
        return self._root


def _node_id() -> str:
    """The Ray node this process runs on (recorded in results.csv: where did each trial run?)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def _rank_param_max_diff(model) -> float:
    """Largest difference of any parameter between ranks (0.0 when DDP kept them in sync)."""
    import torch
    import torch.distributed as dist

    vec = torch.nn.utils.parameters_to_vector([p.detach() for p in model.parameters()]).float()
    hi, lo = vec.clone(), vec.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).abs().max())


def _threads(cfg: dict) -> int:
    return max(1, int(cfg["resources"]["cpus_per_worker"]))


def _device(cfg: dict) -> str:
    import torch

    return "cuda" if cfg["resources"]["gpus_per_worker"] > 0 and torch.cuda.is_available() else "cpu"


class OwnStore:
    """A trial's own checkpoint directory on the experiment's storage: ``<experiment>/trial_<n>/ckpt``.

    Local (or mounted) storage: the loop writes there directly. S3: the loop writes into a
    scratch directory and every report uploads what changed (``best.pt`` / ``last.pt``; one PUT
    each, so a reader never sees half a file); :meth:`pull` brings them back for a resume.
    Picklable: a multi-worker trial hands it to its rank 0.
    """

    def __init__(self, fs_dir: str, remote: bool = False, endpoint_url: str | None = None):
        self.fs_dir = fs_dir  # local directory, or bucket/prefix/NAME/trial_<n>/ckpt
        self.remote = remote
        self.endpoint_url = endpoint_url
        self._sent: dict[str, float] = {}
        self._s3 = None

    @property
    def uri(self) -> str:
        from raytune_opt.storage import S3

        return S3 + self.fs_dir if self.remote else self.fs_dir

    def _fs(self):
        from raytune_opt.storage import s3_filesystem

        if self._s3 is None:  # built once per process (a push happens every epoch)
            self._s3 = s3_filesystem(self.endpoint_url)
        return self._s3

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_s3": None}  # rank 0 builds its own

    def pull(self, scratch: str) -> None:
        """S3: download the trial's own files into ``scratch`` (nothing there yet: nothing to do)."""
        if not self.remote:
            return
        from pyarrow import fs

        s3 = self._fs()
        for info in s3.get_file_info(fs.FileSelector(self.fs_dir, allow_not_found=True)):
            if info.type == fs.FileType.File:
                ensure_under(os.path.join(scratch, info.base_name), scratch, f"the local copy of s3://{info.path}")
                fs.copy_files(info.path, os.path.join(scratch, info.base_name), source_filesystem=s3,
                              destination_filesystem=fs.LocalFileSystem())

    def owner(self) -> str | None:
        """S3: the trial id in the directory's owner file, None without one."""
        from pyarrow import fs

        s3 = self._fs()
        path = f"{self.fs_dir}/{OWNER}"
        if s3.get_file_info(path).type != fs.FileType.File:
            return None
        with s3.open_input_stream(path) as f:
            return f.read().decode().strip()

    def push(self, local_dir: str) -> None:
        """S3: upload the top-level files of ``local_dir`` that changed since the last push."""
        if not self.remote:
            return
        from pyarrow import fs

        s3 = self._fs()
        for f in Path(local_dir).iterdir():
            if f.is_file() and not f.name.startswith(".") and self._sent.get(f.name) != f.stat().st_mtime:
                fs.copy_files(str(f), f"{self.fs_dir}/{f.name}", source_filesystem=fs.LocalFileSystem(),
                              destination_filesystem=s3)
                self._sent[f.name] = f.stat().st_mtime


def _train_worker(loop_config: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: the same loop, one DDP rank."""
    import ray.train

    from raytune_opt.recipe.loop import train
    from raytune_opt.strategies import strategy_class

    mark("worker_start", rank=ray.train.get_context().get_world_rank())
    cfg = loop_config["cfg"]
    add_code_paths(loop_config.get("code_dirs", ()))
    resume = loop_config["resume_from"]
    restored = ray.train.get_checkpoint()  # set when Train restarts a failed worker group
    if restored is not None:
        resume = os.path.join(restored.to_directory(), CHECKPOINT_FILE)
    shared = strategy_class(cfg["train"]["strategy"]).sharded_checkpoints
    session = TrainSession(_threads(cfg), loop_config["checkpoint_root"], shared_checkpoints=shared,
                           store=loop_config["store"], extra=loop_config["extra"])
    try:
        train(cfg, session, spec_sha256=loop_config["spec_sha256"], resume_from=resume)
    finally:
        session.close()


def records_config(scheduler: str) -> bool:
    """Whether every epoch of a trial records the config it trained with: its scheduler's
    entry says it ``exploits`` (PBT restarts trials from others' checkpoints with changed configs)."""
    entry = registry.SCHEDULERS.get(scheduler)
    return entry is not None and bool(entry.meta.get("exploits"))


def make_trainable(base: dict, space: Space, spec_sha256: str, exp_dir: str,
                   force: dict | None = None, *, remote: bool = False,
                   endpoint_url: str | None = None, code_dirs: Sequence[str] = (),
                   warm_pool: str | None = None) -> Callable[[dict], None]:
    """The Tune function trainable for a sweep.

    Args:
        base: the resolved spec (every setting at its fixed value).
        space: the search space; a trial's config holds its active parameters.
        spec_sha256: stored in every checkpoint.
        exp_dir: the experiment directory (trial checkpoints and Train runs go there); on S3
            its ``bucket/prefix/NAME`` path.
        force: dotted settings applied after the trial's config (dry runs).
        remote: the experiment is on S3: a trial keeps its checkpoints in a local scratch
            directory and uploads them to its own directory in the bucket.
        endpoint_url: the S3 endpoint (None: AWS).
        code_dirs: directories put at the front of the trial's (and its Train workers')
            ``sys.path`` so that a user model (``model.name: module:callable``) imports there
            as it did on the driver. They must exist on the node that runs the trial.
        warm_pool: the sweep's slot pool (``resources.warm_workers``): a multi-worker trial
            runs in a warm slot (:mod:`raytune_opt.warm_slots`) instead of a Train run of its own.
    """
    base = {k: v for k, v in base.items() if k != "space"}
    code_dirs = tuple(code_dirs)
    exploits = records_config(base["scheduler"]["name"])

    def run_trial(config: dict) -> None:
        from ray import tune

        mark("trial_start", trial_id=tune.get_context().get_trial_id())
        add_code_paths(code_dirs)
        flat = searchers.flatten_config(config, space)
        cfg = apply(apply(base, flat), force or {})
        # The trial's directory in the experiment (storage), not its local working directory
        # (which lives in Ray's session temp dir and is gone after a restart).
        store = OwnStore(own_checkpoint_dir(f"{exp_dir}/{os.path.basename(tune.get_context().get_trial_dir())}"),
                         remote, endpoint_url)
        ckpt_dir = tempfile.mkdtemp(prefix="raytune_opt_ckpt_") if remote else store.fs_dir
        try:
            _claim(store, ckpt_dir, tune.get_context().get_trial_id())
            resume = _resume_point(tune.get_checkpoint(), ckpt_dir, store)
            # A scheduler that exploits (PBT) changes a trial's config as it goes: every epoch
            # says which config it trained with.
            extra = {TRIAL_CONFIG: json.dumps(flat, sort_keys=True)} if exploits else {}
            if cfg["resources"]["num_workers"] == 1:
                # Imported here: a multi-worker trial's actor only drives Train and never
                # imports torch (see raytune_opt.train_backend).
                from raytune_opt.recipe.loop import train

                train(cfg, TuneSession(_device(cfg), _threads(cfg), ckpt_dir, store, extra), spec_sha256=spec_sha256,
                      resume_from=resume)
                return
            loop_config = _loop_config(cfg, spec_sha256, resume, None if remote else ckpt_dir, store, extra,
                                       code_dirs)
            if warm_pool:
                from raytune_opt import warm_slots

                warm_slots.run_trial(warm_pool, tune.get_context().get_trial_id(), warm_slots.Shape.of(cfg),
                                     loop_config, ckpt_dir, store)
                return
            _fit_torch_trainer(cfg, loop_config, exp_dir, tune.get_context().get_trial_id(), endpoint_url, remote)
        finally:
            if remote:
                ensure_under(ckpt_dir, tempfile.gettempdir(), "a trial's scratch checkpoint directory")
                shutil.rmtree(ckpt_dir, ignore_errors=True)

    return run_trial


def _claim(store: "OwnStore", ckpt_dir: str, trial_id: str) -> None:
    """Make ``ckpt_dir`` this trial's: pull what it left there before (a resume), or set aside
    what another trial left under the same name.

    A driver that dies between proposing trial ``n`` and saving Tune's experiment state comes
    back without knowing that trial; its searcher proposes a new trial ``n`` (another config,
    another id) whose directory already holds the forgotten trial's checkpoints. The owner
    file tells them apart: nobody continues from another config's weights.
    """
    if store.remote:
        if store.owner() in (None, trial_id):
            store.pull(ckpt_dir)
    else:
        owner_file = os.path.join(ckpt_dir, OWNER)
        owner = Path(owner_file).read_text().strip() if os.path.isfile(owner_file) else None
        trial_dir = os.path.dirname(ckpt_dir)
        if owner not in (None, trial_id):
            # The owner file's text names the copy: it must not lead out of the trial's directory.
            ensure_under(f"{ckpt_dir}.{owner}", trial_dir, f"{ckpt_dir}'s checkpoints kept for trial {owner!r}")
            os.replace(ckpt_dir, f"{ckpt_dir}.{owner}")  # kept, not overwritten
        elif owner is None and os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
            ensure_under(f"{ckpt_dir}.unowned", trial_dir, f"{ckpt_dir}'s unowned checkpoints")
            os.replace(ckpt_dir, f"{ckpt_dir}.unowned")
        os.makedirs(ckpt_dir, exist_ok=True)
    _atomic.write_text(Path(ckpt_dir) / OWNER, trial_id)
    store.push(ckpt_dir)


def own_checkpoint_dir(trial_dir: str) -> str:
    """``<experiment>/trial_<n>/ckpt``: the n-th proposed trial's own checkpoints.

    Trial directories are named ``trial_<n>`` (sweep._trial_dirname); should Tune ever make
    one unique (``trial_<n>_1a2b``), the checkpoint directory is still derived from ``n``.
    """
    parent, _, name = trial_dir.rstrip("/").rpartition("/")
    m = re.fullmatch(r"(trial_\d+)(?:_[0-9a-z]+)?", name)
    return f"{parent}/{m.group(1) if m else name}/{CKPT_DIR}"


def _resume_point(handed_over, ckpt_dir: str, store: OwnStore) -> str | None:
    """Where a trial continues from: its own ``last.pt``, if it has one.

    ``handed_over`` is the checkpoint Tune gives the trial. Our trials report none to Tune,
    so it is set only by a PBT exploit (:class:`raytune_opt.schedulers.CheckpointedPBT`): a
    snapshot of the donor's ``last.pt``. The first time the trial sees a snapshot it *adopts*
    it: the donor's weights, optimizer, schedule and epoch become its own ``last.pt``, keeping
    its own best value (its ``best.pt`` stays the best of what *it* reported) — and notes the
    snapshot in ``adopted_from.txt``, so a resumed sweep that hands the same snapshot over
    again continues from the trial's newer ``last.pt`` instead.
    """
    own = os.path.join(ckpt_dir, CHECKPOINT_FILE)
    if handed_over is not None:
        marker = os.path.join(ckpt_dir, ADOPTED)
        seen = Path(marker).read_text().strip() if os.path.isfile(marker) else None
        if seen != handed_over.path:
            _adopt(os.path.join(handed_over.to_directory(), CHECKPOINT_FILE), own)
            _atomic.write_text(Path(marker), handed_over.path)
            store.push(ckpt_dir)
    return own if os.path.isfile(own) else None


def _adopt(donor_last: str, own_last: str) -> None:
    from raytune_opt.recipe.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(donor_last)
    mine = load_checkpoint(own_last) if os.path.isfile(own_last) else {}
    ckpt["loop_state"] = {"best": (mine.get("loop_state") or {}).get("best"), "bad_epochs": 0}
    save_checkpoint(ckpt, own_last)
    # The donor's epoch is not this trial's to report: nothing to replay from it.
    _atomic.write_text(Path(own_last).parent / RECORDED, str(int(ckpt["epoch"])))


def _recorded_epoch(ckpt_dir: str) -> int:
    """The epoch in ``ckpt_dir``'s RECORDED file; 0 without one (or an unreadable one)."""
    try:
        return int(Path(ckpt_dir, RECORDED).read_text().strip())
    except (OSError, ValueError):
        return 0


def _loop_config(cfg: dict, spec_sha256: str, resume: str | None, ckpt_dir: str | None, store: OwnStore | None,
                 extra: dict | None, code_dirs: Sequence[str]) -> dict:
    """What a multi-worker trial's ranks get (:func:`_train_worker`, a warm slot's workers).

    Args:
        ckpt_dir: where rank 0 keeps best.pt/last.pt (and every rank its shard); None: each
            rank a temporary directory (S3 storage: ranks may sit on nodes without the driver's disk).
    """
    return {"cfg": cfg, "spec_sha256": spec_sha256, "resume_from": resume, "checkpoint_root": ckpt_dir,
            "store": store, "extra": extra or {}, "code_dirs": tuple(code_dirs)}


def _fit_torch_trainer(cfg: dict, loop_config: dict, exp_dir: str, trial_id: str, endpoint_url: str | None = None,
                       remote: bool = False) -> None:
    """Run the trial's TorchTrainer (a Train run of its own: ``resources.warm_workers: false``).

    Args:
        loop_config: what the ranks get (:func:`_loop_config`).
        remote: ``exp_dir`` is a ``bucket/prefix/NAME`` path on S3 at ``endpoint_url``.
    """
    from raytune_opt.storage import s3_filesystem

    import ray.train

    from raytune_opt.train_backend import TorchBackendConfig

    # Train V2's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
    # default), and a worker's ray.train.report blocks until a poll takes the report (its
    # queue holds one): every epoch waited up to 2 s, and the end of the run 2 s more
    # (benchmarks/ddp_startup.py). The controller takes the variable from this process.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_INTERVAL_S))
    res = cfg["resources"]
    use_gpu = res["gpus_per_worker"] > 0
    per_worker = {"CPU": res["cpus_per_worker"]}
    if use_gpu:
        per_worker["GPU"] = res["gpus_per_worker"]
    relay = _ReportRelay()
    trainer = _trainer_class()(
        train_loop_per_worker=_train_worker,
        train_loop_config=loop_config,
        backend_config=TorchBackendConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=res["num_workers"], use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",  # named after the trial so it can be restored
            storage_path=f"{exp_dir}/train",
            storage_filesystem=s3_filesystem(endpoint_url) if remote else None,
            callbacks=[relay.callback],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            # Train V2 retries worker-group start-up forever by default: a broken trial hangs.
            failure_config=ray.train.FailureConfig(max_failures=2, controller_failure_limit=2),
        ),
    )
    mark("trainer_fit", trial_id=trial_id)
    relay.fit(trainer)
    mark("trainer_done", trial_id=trial_id)


class _ReportRelay:
    """Rank 0's reports from Train's controller to Tune, reported from the trial's own thread.

    Ray's ``TuneReportCallback`` hands each report to the Tune actor's *main* thread (through
    an actor queue of one), which then puts it on the session's result queue, the queue the
    trial function's thread fills too. When ``fit()`` returns before the main thread took the
    last report, Tune's wrapper reports the function's end (``RESULT_DUPLICATE``) from the
    trial's thread first; the main thread then blocks for ever putting the last report on a
    full queue that only it reads (Ray 2.60, ``ray/train/_internal/session.py``
    ``_get_result_from_queues``; seen as a 2-worker trial that trained both epochs and never
    ended, every time the trial actor started faster). Here the callback fills our own queue,
    ``fit()`` runs in a helper thread, and the trial's thread reports each item with
    ``ray.tune.report``, the path every function trainable takes, draining the queue before it
    returns: the function's end can no longer overtake its last report.
    """

    def __init__(self):
        from ray.train.v2.api.callback import UserCallback
        from ray.util.queue import Queue

        # One item, as Ray's: the controller's put waits for the trial to take the last
        # report, so the workers never run far ahead of what Tune (a scheduler) has decided.
        queue = self._queue = Queue(1, actor_options={"num_cpus": 0})

        class Forward(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                item = dict(metrics[0])
                if checkpoint:  # what TuneReportCallback adds (sweep.py reads it as a fallback)
                    item["checkpoint_path"] = checkpoint.path
                queue.put(item)

        self.callback = Forward()

    def fit(self, trainer) -> None:
        import queue as stdlib_queue
        import threading

        from ray import tune

        failure: list[BaseException] = []

        def run() -> None:
            try:
                trainer.fit()
            except BaseException as exc:  # re-raised in the trial's thread below
                failure.append(exc)

        fitting = threading.Thread(target=run, name="raytune-opt-fit", daemon=True)
        fitting.start()
        while True:
            # The controller's put returns once the item is in the queue, and it reports
            # before the run ends: after the thread ends, what is queued is all there is.
            ended = not fitting.is_alive()
            try:
                item = self._queue.get(timeout=0.2) if not ended else self._queue.get_nowait()
            except stdlib_queue.Empty:
                if ended:
                    break
                continue
            tune.report(item)
        fitting.join()
        if failure:
            raise failure[0]


def _trainer_class():
    """Train's ``DataParallelTrainer`` (what ``TorchTrainer`` is, with our torch-free
    :class:`~raytune_opt.train_backend.TorchBackendConfig`) without the Ray Data actor that
    nothing here uses.

    Train V2 adds its ``DatasetsCallback`` to every run, datasets or not; it starts a
    ``DatasetManager`` actor per trial (one more process that imports Ray Train and Ray Data,
    ~1-2 s of CPU on the trial's critical path here). Our workers read their data set from the
    node cache, never through ``ray.train.get_dataset_shard``, so a trainer without datasets
    drops the callback. ``_create_default_callbacks`` is Ray's private hook (Ray 2.60); should
    it go away the override is simply never called.
    """
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    class Trainer(DataParallelTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            return callbacks if self.datasets else [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return Trainer
