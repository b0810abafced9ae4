"""One trial: the Tune function trainable.

With one worker the recipe's loop runs inside the Tune trial itself (a 2-worker
TorchTrainer costs ~20 s of start-up here before its first epoch, and ASHA lives on cheap
trials). With several, the trial builds a Ray Train ``TorchTrainer`` whose workers run the
same loop under DDP or DeepSpeed, and ``TuneReportCallback`` forwards rank 0's metrics and
checkpoint path to Tune (the Train V2 pattern: ``tune.Tuner(TorchTrainer)`` no longer works).

Under DeepSpeed every rank reports its own ZeRO shard files with the checkpoint; Train V2
syncs one checkpoint directory name across the ranks and each rank uploads into it
(``ray/train/v2/_internal/execution/context.py``), so the persisted checkpoint holds every
rank's shard, not only rank 0's (ray-project/ray#33369).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from raytune_opt import searchers
from raytune_opt.recipe.session import Session
from raytune_opt.space import Space, apply

CHECKPOINT_FILE = "last.pt"
CKPT_DIR = "ckpt"  # inside the trial directory: the trial's own best.pt / last.pt


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

    Checkpoints are written to ``root`` (the trial's own ``ckpt/`` directory) and also
    reported to Tune, which keeps one copy (``checkpoint_NNNNNN/``) for PBT and the results.
    """

    def __init__(self, device: str, num_threads: int | None, root: str):
        import torch

        self.device = torch.device(device)
        self.num_threads = num_threads
        self._root = root

    def report(self, metrics: dict, checkpoint_dir: str | None, shards: Sequence[str] = ()) -> None:
        from ray import tune

        staged = _stage(checkpoint_dir, True, shards) if checkpoint_dir else None
        metrics = {**metrics, "node_id": _node_id()}
        try:  # Tune persists the checkpoint to storage before report() returns
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(staged) if staged else None)
        finally:
            if staged:
                shutil.rmtree(staged, ignore_errors=True)

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

    def __init__(self, num_threads: int | None, root: str | None = None, shared_checkpoints: bool = False):
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

    def prepare_model(self, model):
        import ray.train.torch

        self._model = ray.train.torch.prepare_model(model)
        return self._model

    def prepare_loader(self, loader):
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader)

    def report(self, metrics: dict, checkpoint_dir: str | None, shards: Sequence[str] = ()) -> None:
        import ray.train

        if metrics.get("stop_reason") and self.world_size > 1 and self._model is not None:
            # The last report says whether the DDP replicas stayed identical.
            metrics = {**metrics, "rank_param_max_diff": _rank_param_max_diff(self._model)}
        # Rank 0 reports best.pt/last.pt (and its shard); every other rank its own shard only.
        # Train V2 merges the ranks' files into one checkpoint directory.
        metrics = {**metrics, "node_id": _node_id()}
        has_files = checkpoint_dir and (self.is_rank_zero or shards)
        staged = _stage(checkpoint_dir, self.is_rank_zero, shards) if has_files else None
        try:  # uploaded synchronously (Train V2's default upload mode)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staged) if staged else None)
        finally:
            if staged:
                shutil.rmtree(staged, ignore_errors=True)

    def close(self) -> None:
        if self._temporary:
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


def _train_worker(loop_config: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: the same loop, one DDP rank."""
    import ray.train

    from raytune_opt.recipe.loop import train
    from raytune_opt.strategies import strategy_class

    cfg = loop_config["cfg"]
    resume = loop_config["resume_from"]
    restored = ray.train.get_checkpoint()  # set when Train restarts a failed worker group
    if restored is not None:
        resume = os.path.join(restored.to_directory(), CHECKPOINT_FILE)
    shared = strategy_class(cfg["train"]["strategy"]).sharded_checkpoints
    session = TrainSession(_threads(cfg), loop_config["checkpoint_root"], shared_checkpoints=shared)
    try:
        train(cfg, session, spec_sha256=loop_config["spec_sha256"], resume_from=resume)
    finally:
        session.close()


def make_trainable(base: dict, space: Space, spec_sha256: str, exp_dir: str,
                   force: dict | None = None, *, remote: bool = False,
                   endpoint_url: str | None = None) -> Callable[[dict], None]:
    """The Tune function trainable for a sweep.

    Args:
        base: the resolved spec (every setting at its fixed value).
        space: the search space; a trial's config holds its active parameters.
        spec_sha256: stored in every checkpoint.
        exp_dir: the experiment directory (trial checkpoints and Train runs go there); on S3
            its ``bucket/prefix/NAME`` path.
        force: dotted settings applied after the trial's config (dry runs).
        remote: the experiment is on S3: a trial keeps its own checkpoints in a local
            temporary directory and Ray uploads what it reports to the bucket.
        endpoint_url: the S3 endpoint (None: AWS).
    """
    base = {k: v for k, v in base.items() if k != "space"}

    def run_trial(config: dict) -> None:
        from ray import tune

        from raytune_opt.recipe.loop import train

        flat = searchers.flatten_config(config, space)
        cfg = apply(apply(base, flat), force or {})
        if remote:  # S3: Ray uploads the reported checkpoints; the trial's files are scratch
            ckpt_dir = tempfile.mkdtemp(prefix="raytune_opt_ckpt_")
        else:
            # The trial's directory in the experiment (storage), not its local working directory
            # (which lives in Ray's session temp dir and is gone after a restart).
            ckpt_dir = own_checkpoint_dir(os.path.join(exp_dir, os.path.basename(tune.get_context().get_trial_dir())))
            os.makedirs(ckpt_dir, exist_ok=True)
        resume = _resume_point(tune.get_checkpoint(), ckpt_dir)
        try:
            if cfg["resources"]["num_workers"] == 1:
                train(cfg, TuneSession(_device(cfg), _threads(cfg), ckpt_dir), spec_sha256=spec_sha256,
                      resume_from=resume)
                return
            _fit_torch_trainer(cfg, spec_sha256, resume, exp_dir, tune.get_context().get_trial_id(),
                               None if remote else ckpt_dir, endpoint_url, remote)
        finally:
            if remote:
                shutil.rmtree(ckpt_dir, ignore_errors=True)

    return run_trial


def own_checkpoint_dir(trial_dir: str) -> str:
    """``<experiment>/trial_<n>/ckpt``: the n-th proposed trial's own checkpoints.

    Trial directories are named ``trial_<n>`` (sweep._trial_dirname). A trial that a resume
    restarts gets a new Tune id and Tune makes its directory unique (``trial_<n>_1a2b``), so
    the checkpoint directory is derived from ``n`` alone: the restarted trial finds the
    checkpoints its first run wrote.
    """
    path = Path(trial_dir)
    m = re.fullmatch(r"(trial_\d+)(?:_[0-9a-z]+)?", path.name)
    return str(path.parent / (m.group(1) if m else path.name) / CKPT_DIR)


def _resume_point(tune_checkpoint, ckpt_dir: str) -> str | None:
    """Where a trial continues from: a checkpoint Tune hands over (PBT exploit) first, else
    the trial's own last checkpoint (a resumed sweep restarts unfinished trials and they
    pick up here: Tune's recorded checkpoint may already be deleted, see sweep.resume_sweep)."""
    if tune_checkpoint is not None:
        return os.path.join(tune_checkpoint.to_directory(), CHECKPOINT_FILE)
    own = os.path.join(ckpt_dir, CHECKPOINT_FILE)
    return own if os.path.isfile(own) else None


def _fit_torch_trainer(cfg: dict, spec_sha256: str, resume: str | None, exp_dir: str, trial_id: str,
                       ckpt_dir: str | None, endpoint_url: str | None = None, remote: bool = False) -> None:
    """Run the trial's TorchTrainer.

    Args:
        ckpt_dir: where rank 0 keeps best.pt/last.pt (and every rank its shard); None: each
            rank a temporary directory (S3 storage: ranks may sit on nodes without the driver's disk).
        remote: ``exp_dir`` is a ``bucket/prefix/NAME`` path on S3 at ``endpoint_url``.
    """
    from raytune_opt.storage import s3_filesystem

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = cfg["resources"]
    use_gpu = res["gpus_per_worker"] > 0
    per_worker = {"CPU": res["cpus_per_worker"]}
    if use_gpu:
        per_worker["GPU"] = res["gpus_per_worker"]
    trainer = TorchTrainer(
        train_loop_per_worker=_train_worker,
        train_loop_config={"cfg": cfg, "spec_sha256": spec_sha256, "resume_from": resume,
                           "checkpoint_root": ckpt_dir},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=res["num_workers"], use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",  # named after the trial so it can be restored
            storage_path=f"{exp_dir}/train",
            storage_filesystem=s3_filesystem(endpoint_url) if remote else None,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            # Train V2 retries worker-group start-up forever by default: a broken trial hangs.
            failure_config=ray.train.FailureConfig(max_failures=2, controller_failure_limit=2),
        ),
    )
    trainer.fit()
