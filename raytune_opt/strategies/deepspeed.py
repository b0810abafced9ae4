"""DeepSpeed ZeRO (stages 1, 2 and 3) as a sibling of DDP.

``train.deepspeed`` in the spec is DeepSpeed's own config, passed through untouched. The
recipe owns a few of its keys (:data:`RECIPE_OWNED`: micro-batch, accumulation, precision,
clipping, optimizer, schedule) and writes them itself (:func:`build_config`); the spec may
not set them there (:func:`conflicts`, checked by ``validate``). The optimizer is the
recipe's torch optimizer, passed as DeepSpeed's client optimizer, and the loop steps its
own LR schedule on it: no DeepSpeed op is JIT-compiled for them (``"type": "Adam"`` would
build ``fused_adam``).

Checkpoints: every rank writes its ZeRO shard with DeepSpeed's ``save_checkpoint`` into
``<checkpoint dir>/zero/<tag>/`` and reports it (Ray Train merges the ranks' files into one
checkpoint), and rank zero writes the consolidated fp32 weights as the usual
``best.pt``/``last.pt`` (loadable by :func:`raytune_opt.recipe.checkpoint.load_model`
without DeepSpeed, at any world size). A resumed trial gets its optimizer state back from
the shards at the same world size and ZeRO stage; otherwise it starts from the
consolidated weights with a fresh optimizer and says so in a log line (DeepSpeed cannot
reshard a ZeRO optimizer state, deepspeedai/DeepSpeed#2898).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn

from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.strategies.deepspeed_config import (RECIPE_OWNED, build_config,  # noqa: F401
                                                     check_config, conflicts, import_deepspeed, zero_stage)
from raytune_opt.strategies.base import Strategy

# The config helpers live in deepspeed_config (no torch there: validation reads them); they
# are offered here too, where the strategy that uses them is.
__all__ = ["DeepSpeedStrategy", "RECIPE_OWNED", "build_config", "conflicts", "check_config", "ZERO_DIR",
           "process_group", "resumable_shards", "resumed_shard_paths", "full_state_dict", "save_shards",
           "shard_paths", "zero_record"]

log = logging.getLogger(__name__)

ZERO_DIR = "zero"  # inside a trial's checkpoint directory: DeepSpeed's own checkpoint layout


_RANK_FILE = re.compile(r"pp_rank_(\d+)_")  # DeepSpeed names a rank's shard files ..._pp_rank_<r>_...


# ------------------------------------------------------------------------------ the strategy


class DeepSpeedStrategy(Strategy):
    """ZeRO data parallelism through a ``deepspeed.initialize`` engine.

    Uses the process group Ray Train (or the caller) set up; with none (a one-worker trial)
    it makes a one-rank gloo group of its own and destroys it in :meth:`close`.
    """

    name = "deepspeed"
    sharded_checkpoints = True

    def __init__(self, session, train_cfg: dict):
        super().__init__(session, train_cfg)
        self.config = build_config(train_cfg)
        precision = train_cfg["precision"]
        if precision == "fp16" and session.device.type != "cuda":
            raise RecipeConfigError(f"train.precision fp16 needs a CUDA GPU but the trial runs on {session.device}; "
                                    f"use bf16 (or fp32), or give the trial a GPU")
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        # DeepSpeed keeps bf16/fp16 weights; autocast casts the fp32 inputs to them and keeps
        # the loss in fp32 (as for DDP's autocast).
        dtype, device_type = self._dtype, session.device.type
        self._autocast = (lambda: torch.autocast(device_type, dtype=dtype)) if dtype else contextlib.nullcontext
        self._group = contextlib.ExitStack()  # the process group this trial made (process_group)
        self.engine = None

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, resume: dict | None = None,
              resume_path: str | None = None) -> nn.Module:
        deepspeed = import_deepspeed()
        self._init_process_group()
        zero_state = self._zero_state(resume, resume_path) if resume is not None else None
        if resume is not None and zero_state is None:
            model.load_state_dict(resume["model_state"])
        self.optimizer = optimizer
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.config,
                                                    dist_init_required=False)
        if self._dtype is not None:
            # DeepSpeed casts parameters only; norm layers' running stats must match them.
            for buffer in self.engine.module.buffers():
                if buffer.is_floating_point():
                    buffer.data = buffer.data.to(self._dtype)
        if zero_state is not None:
            load_dir, tag = zero_state
            path, _ = self.engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load its checkpoint {load_dir}/{tag}")
        self._skipped_seen = self.engine.skipped_steps
        return self.engine

    def _init_process_group(self) -> None:
        self._group.enter_context(process_group(self.session.device))

    def _zero_state(self, resume: dict, resume_path: str | None) -> tuple[str, str] | None:
        """``(load dir, tag)`` of the resumed checkpoint's ZeRO shards when they fit this run."""
        found, why = resumable_shards(resume, resume_path, zero_stage(self.config), self.session.world_size)
        if found is None and self.is_rank_zero:
            log.warning("resuming from the consolidated weights of %s with a fresh optimizer: %s "
                        "(DeepSpeed cannot reshard a ZeRO optimizer state, deepspeedai/DeepSpeed#2898)",
                        resume_path, why)
        return found

    def autocast(self) -> Callable[[], ContextManager]:
        return self._autocast

    def sync_context(self, boundary: bool) -> ContextManager:
        # Our loop decides where accumulation groups end (a partial group ends an epoch),
        # not DeepSpeed's micro-step counter.
        self.engine.set_gradient_accumulation_boundary(boundary)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # divides by gradient_accumulation_steps itself

    def step(self) -> torch.Tensor:
        self.engine.step()  # clips (gradient_clipping), steps and zeroes the gradients
        norm = self.engine.get_global_grad_norm()
        if self.engine.skipped_steps != self._skipped_seen:  # fp16 overflow
            return torch.zeros((), dtype=torch.float64)
        return torch.as_tensor(math.nan if norm is None else norm, dtype=torch.float64).reshape(())

    def pop_skipped_steps(self) -> float:
        skipped = self.engine.skipped_steps - self._skipped_seen
        self._skipped_seen = self.engine.skipped_steps
        return float(skipped)

    def before_validation(self) -> None:
        # ZeRO keeps the weights in sync but not the buffers (BatchNorm running stats): each
        # rank's follow its own batches. DDP broadcasts rank 0's before every forward; doing
        # it once before validation gives every rank, and the checkpoint, the same model.
        import torch.distributed as dist

        if self.session.world_size > 1:
            for buffer in self.engine.module.buffers():
                if buffer.is_floating_point():
                    dist.broadcast(buffer.data, src=0)

    def model_state_dict(self) -> dict | None:
        """fp32 master weights gathered from every rank's partition (a collective)."""
        return full_state_dict(self.engine.module, self.is_rank_zero)

    def checkpoint_extra(self, epoch: int) -> dict:
        return zero_record(_tag(epoch), self.session.world_size, zero_stage(self.config))

    def save_shards(self, directory: str, epoch: int) -> Sequence[str]:
        return save_shards(self.engine, directory, _tag(epoch), self.session.rank)

    def resumed_shards(self, directory: str, resumed: dict | None) -> Sequence[str]:
        return resumed_shard_paths(directory, resumed, self.session.rank)

    def close(self) -> None:
        self.engine = None
        self._group.close()


@contextlib.contextmanager
def process_group(device: torch.device):
    """What DeepSpeed needs of the process for one trial: its ops table without shm_comm on
    CPU, and a process group: Ray Train's on its workers, else a one-rank group of its own
    (with ``LOCAL_RANK``, which DeepSpeed requires), both gone after the trial, so that the
    next trial in this process (Tune reuses its actors) starts clean: a ``LOCAL_RANK`` left
    behind made accelerate take a later trial for a distributed launch."""
    import deepspeed.ops
    import torch.distributed as dist

    # DeepSpeed builds its shm_comm op (a g++ JIT compile, ~55 s here) when it first wraps
    # the process group on CPU. That op only serves tensor-parallel inference all-reduces,
    # never ZeRO training, so it is marked unavailable in DeepSpeed's own op table
    # (which DeepSpeed keeps for exactly such edits).
    if device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    own = not dist.is_initialized()
    set_rank = own and "LOCAL_RANK" not in os.environ
    if own:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    if set_rank:
        os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if set_rank:
            os.environ.pop("LOCAL_RANK", None)
        if own and dist.is_initialized():
            import deepspeed.comm

            # DeepSpeed's own destroy also drops the groups it cached.
            deepspeed.comm.destroy_process_group()


def resumable_shards(resume: dict, resume_path: str | None, stage: int,
                     world_size: int) -> tuple[tuple[str, str] | None, str]:
    """``((load dir, tag), "")`` of a resumed checkpoint's ZeRO shards when a run of ``stage``
    on ``world_size`` ranks can load them, else ``(None, why not)``."""
    meta = resume.get("zero") or {}
    if not meta or resume_path is None:
        return None, "the checkpoint has no ZeRO shards (written by another strategy)"
    base = Path(resume_path)
    load_dir = (base if base.is_dir() else base.parent) / ZERO_DIR
    ranks = len(_shard_files(load_dir / meta["tag"], "optim_states"))
    if meta.get("world_size") != world_size:
        return None, f"its ZeRO shards were written by {meta.get('world_size')} rank(s) and this run has {world_size}"
    if meta.get("stage") != stage:
        return None, f"its ZeRO shards are from stage {meta.get('stage')} and this run uses stage {stage}"
    if ranks != world_size:
        return None, f"{ranks} of its {meta.get('world_size')} ZeRO shards are in {load_dir / meta['tag']}"
    return (str(load_dir), meta["tag"]), ""


def zero_record(tag: str, world_size: int, stage: int) -> dict:
    """What a checkpoint records of its ZeRO shards (``checkpoint_extra``), read back by
    :func:`resumable_shards` and :func:`resumed_shard_paths`."""
    return {"zero": {"dir": ZERO_DIR, "tag": tag, "world_size": world_size, "stage": stage}}


def resumed_shard_paths(directory: str | Path, resumed: dict | None, rank: int) -> list[str]:
    """This rank's files of the resumed checkpoint's ZeRO shards (none without them)."""
    zero = (resumed or {}).get("zero")
    return shard_paths(directory, zero["tag"], rank) if zero else []


def full_state_dict(module: nn.Module, is_rank_zero: bool, keys: Sequence[str] | None = None) -> dict | None:
    """``module``'s state dict with the fp32 master weights gathered from every rank's ZeRO
    partition (a collective: every rank calls it); None on the other ranks. ``keys``: only
    those entries (a LoRA checkpoint's adapter and head)."""
    from deepspeed import zero
    from deepspeed.utils import safe_get_full_fp32_param

    wanted = None if keys is None else set(keys)
    full: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        if wanted is not None and name not in wanted:
            continue
        value = safe_get_full_fp32_param(param)  # None for a parameter ZeRO does not optimize
        if value is None:
            with zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                value = param.detach().clone()
        if is_rank_zero:
            full[name] = value.detach().float().cpu()
    if not is_rank_zero:
        return None
    state = {}
    for key, value in module.state_dict().items():
        if wanted is not None and key not in wanted:
            continue
        if key in full:
            state[key] = full[key]
        else:  # buffers (running stats...): back to fp32 like the plain model
            state[key] = value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()
    return state


def save_shards(engine, directory: str | Path, tag: str, rank: int, exclude_frozen: bool = False) -> list[str]:
    """Save ``engine``'s ZeRO checkpoint ``tag`` under ``directory`` (a collective); the files
    ``rank`` wrote. Keeps this tag's shards and the previous ones (the consolidated
    checkpoint still names the previous tag until it is rewritten after this call).
    ``exclude_frozen``: the module states leave out the parameters that do not train."""
    root = Path(directory) / ZERO_DIR
    latest = root / "latest"
    previous = latest.read_text().strip() if rank == 0 and latest.is_file() else None
    engine.save_checkpoint(str(root), tag=tag, exclude_frozen_parameters=exclude_frozen)  # collective; a barrier
    mine = shard_paths(directory, tag, rank)
    if rank == 0:
        for old in root.iterdir():
            if old.is_dir() and old.name not in (tag, previous):
                shutil.rmtree(old, ignore_errors=True)
    return mine


def shard_paths(directory: str | Path, tag: str, rank: int) -> list[str]:
    """The files of ZeRO checkpoint ``tag`` under ``directory`` that ``rank`` wrote, relative
    to ``directory`` (rank zero also owns the shared ones: model states, ``latest``)."""
    directory = Path(directory)
    mine = []
    for path in sorted((directory / ZERO_DIR / tag).rglob("*")):
        if path.is_file():
            match = _RANK_FILE.search(path.name)
            if (int(match.group(1)) if match else 0) == rank:
                mine.append(str(path.relative_to(directory)))
    if rank == 0 and (directory / ZERO_DIR / "latest").is_file():
        mine.append(f"{ZERO_DIR}/latest")
    return mine


def _tag(epoch: int) -> str:
    return f"epoch{epoch}"


def _shard_files(directory: Path, kind: str) -> list[Path]:
    return sorted(directory.glob(f"*pp_rank_*_{kind}.pt")) if directory.is_dir() else []
