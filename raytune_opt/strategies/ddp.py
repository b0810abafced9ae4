"""PyTorch DDP (and the single process): what the loop did before strategies existed.

The session wraps the model (Ray Train's ``prepare_model``: DDP across ranks, nothing for
one process); gradients are averaged by DDP's all-reduce on the micro-batch that ends an
accumulation group and skipped (``no_sync``) on the others. fp16 uses a GradScaler.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import nn
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.strategies.base import Strategy

__all__ = ["DDPStrategy"]

_NO_CONTEXT = contextlib.nullcontext()  # reusable; one object for every micro-batch


class DDPStrategy(Strategy):
    """Data parallel with full replicas: every rank holds the whole model and optimizer."""

    name = "ddp"

    def __init__(self, session, train_cfg: dict):
        super().__init__(session, train_cfg)
        self._autocast, self._scaler = _precision(train_cfg["precision"], session.device)
        self._skipped = None  # fp16: a 0-dim tensor counting skipped steps

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, resume: dict | None = None,
              resume_path: str | None = None) -> nn.Module:
        if resume is not None:
            model.load_state_dict(resume["model_state"])
            if resume.get("optimizer_state") is not None:
                optimizer.load_state_dict(resume["optimizer_state"])
        self.optimizer = optimizer
        self.model = self.session.prepare_model(model)
        self._plain = getattr(self.model, "module", self.model)  # DDP keeps the real model here
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        # One device and dtype (every model here): the norm can skip torch's regrouping.
        self._one_group = len({(p.device, p.dtype) for p in self._params}) == 1
        self._can_skip_sync = hasattr(self.model, "no_sync")
        return self.model

    def autocast(self) -> Callable[[], ContextManager]:
        return self._autocast

    def sync_context(self, boundary: bool) -> ContextManager:
        # DDP: skip the gradient all-reduce on micro-batches that only accumulate.
        return _NO_CONTEXT if boundary or not self._can_skip_sync else self.model.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        scaled = loss / self.accum if self.accum > 1 else loss
        (self._scaler.scale(scaled) if self._scaler is not None else scaled).backward()

    def step(self) -> torch.Tensor:
        optimizer, scaler = self.optimizer, self._scaler
        if scaler is not None:
            scaler.unscale_(optimizer)
        grads = [p.grad for p in self._params if p.grad is not None]
        norm = _total_norm(grads) if self._one_group and grads else get_total_norm(grads)
        if self.clip is not None:
            clip_grads_with_norm_(self._params, float(self.clip), norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
            skipped = ~torch.isfinite(norm)  # these do not count in the mean grad norm
            self._skipped = skipped.double() if self._skipped is None else self._skipped + skipped
            norm = torch.where(skipped, 0.0, norm)
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def pop_skipped_steps(self) -> float:
        skipped, self._skipped = self._skipped, None
        return 0.0 if skipped is None else float(skipped)

    def model_state_dict(self) -> dict | None:
        return self._plain.state_dict() if self.is_rank_zero else None

    def optimizer_state_dict(self) -> dict | None:
        return self.optimizer.state_dict()


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all ``grads`` together, as ``get_total_norm`` computes it, for grads on
    one device with one dtype. ``get_total_norm`` first regroups the tensors by device and
    dtype in Python: on the digits CNN that took half of its ~120 us per step, about 1.5% of
    the whole step on one CPU thread (benchmarks/loop_throughput.py)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def _precision(precision: str, device: torch.device):
    """An autocast context factory and a GradScaler (fp16 only) for ``precision``."""
    if precision == "fp32":
        return contextlib.nullcontext, None
    if precision == "bf16":
        return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), None
    if precision == "fp16":
        if device.type != "cuda":
            raise RecipeConfigError(f"train.precision fp16 needs a CUDA GPU but the trial runs on {device}; "
                                    f"use bf16 (or fp32), or give the trial a GPU")
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")
    raise RecipeConfigError(f"train.precision {precision!r} is not a precision; use fp32, bf16 or fp16")
