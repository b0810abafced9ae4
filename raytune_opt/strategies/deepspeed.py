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
                                                     check_config, conflicts, import_deepspeed)
from raytune_opt.strategies.base import Strategy

# The config helpers live in deepspeed_config (no torch there: validation reads them); they
# are offered here too, where the strategy that uses them is.
__all__ = ["DeepSpeedStrategy", "RECIPE_OWNED", "build_config", "conflicts", "check_config", "ZERO_DIR"]

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
        self._own_group = False
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
        import deepspeed.ops
        import torch.distributed as dist

        # DeepSpeed builds its shm_comm op (a g++ JIT compile, ~55 s here) when it first wraps
        # the process group on CPU. That op only serves tensor-parallel inference all-reduces,
        # never ZeRO training, so it is marked unavailable in DeepSpeed's own op table
        # (which DeepSpeed keeps for exactly such edits).
        if self.session.device.type == "cpu":
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        if not dist.is_initialized():
            backend = "nccl" if self.session.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            self._own_group = True
            os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed requires it (Ray Train sets it on its workers)

    def _zero_state(self, resume: dict, resume_path: str | None) -> tuple[str, str] | None:
        """``(load dir, tag)`` of the resumed checkpoint's ZeRO shards when they fit this run."""
        meta = resume.get("zero") or {}
        if not meta or resume_path is None:
            why = "the checkpoint has no ZeRO shards (written by another strategy)"
        else:
            base = Path(resume_path)
            load_dir = (base if base.is_dir() else base.parent) / ZERO_DIR
            stage = int(self.config.get("zero_optimization", {}).get("stage", 0))
            ranks = len(_shard_files(load_dir / meta["tag"], "optim_states"))
            if meta.get("world_size") != self.session.world_size:
                why = (f"its ZeRO shards were written by {meta.get('world_size')} rank(s) and this run has "
                       f"{self.session.world_size}")
            elif meta.get("stage") != stage:
                why = f"its ZeRO shards are from stage {meta.get('stage')} and this run uses stage {stage}"
            elif ranks != self.session.world_size:
                why = f"{ranks} of its {meta.get('world_size')} ZeRO shards are in {load_dir / meta['tag']}"
            else:
                return str(load_dir), meta["tag"]
        if self.is_rank_zero:
            log.warning("resuming from the consolidated weights of %s with a fresh optimizer: %s "
                        "(DeepSpeed cannot reshard a ZeRO optimizer state, deepspeedai/DeepSpeed#2898)",
                        resume_path, why)
        return None

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
        from deepspeed import zero
        from deepspeed.utils import safe_get_full_fp32_param

        module = self.engine.module
        full: dict[str, torch.Tensor] = {}
        for name, param in module.named_parameters():
            value = safe_get_full_fp32_param(param)  # None for a parameter ZeRO does not optimize
            if value is None:
                with zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                    value = param.detach().clone()
            if self.is_rank_zero:
                full[name] = value.detach().float().cpu()
        if not self.is_rank_zero:
            return None
        state = {}
        for key, value in module.state_dict().items():
            if key in full:
                state[key] = full[key]
            else:  # buffers (running stats...): back to fp32 like the plain model
                state[key] = value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()
        return state

    def checkpoint_extra(self, epoch: int) -> dict:
        stage = int(self.config.get("zero_optimization", {}).get("stage", 0))
        return {"zero": {"dir": ZERO_DIR, "tag": _tag(epoch), "world_size": self.session.world_size,
                         "stage": stage}}

    def save_shards(self, directory: str, epoch: int) -> Sequence[str]:
        root = Path(directory) / ZERO_DIR
        tag = _tag(epoch)
        latest = root / "latest"
        previous = latest.read_text().strip() if self.is_rank_zero and latest.is_file() else None
        self.engine.save_checkpoint(str(root), tag=tag)  # collective; ends with a barrier
        mine = shard_paths(directory, tag, self.session.rank)
        if self.is_rank_zero:
            # Keep this epoch's shards and the previous ones: last.pt still names the previous
            # epoch until the loop rewrites it after this call.
            for old in root.iterdir():
                if old.is_dir() and old.name not in (tag, previous):
                    shutil.rmtree(old, ignore_errors=True)
        return mine

    def resumed_shards(self, directory: str, resumed: dict | None) -> Sequence[str]:
        zero = (resumed or {}).get("zero")
        return shard_paths(directory, zero["tag"], self.session.rank) if zero else []

    def close(self) -> None:
        import torch.distributed as dist

        self.engine = None
        if self._own_group and dist.is_initialized():
            import deepspeed.comm

            # DeepSpeed's own destroy also drops the groups it cached, so the next trial in
            # this process (Tune reuses its actors) starts clean.
            deepspeed.comm.destroy_process_group()
        self._own_group = False


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
