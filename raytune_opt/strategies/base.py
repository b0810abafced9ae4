"""The interface between the training loop and a distributed strategy.

A :class:`Strategy` owns what differs between DDP and DeepSpeed ZeRO: wrapping the model
and optimizer, the backward pass, the optimizer step, precision, and saving/restoring the
model and optimizer state. The loop (:func:`raytune_opt.recipe.loop.train`) is written once
against it. The optimizer and learning-rate schedule are always the recipe's own torch
objects; a strategy steps the optimizer, the loop steps the schedule.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn

__all__ = ["Strategy"]


class Strategy:
    """Set up, step and checkpoint one trial's model on one rank.

    Args:
        session: the runner (device, rank, world size, model/loader wrapping).
        train_cfg: the resolved ``train`` section of the spec.

    The hot-path methods (:meth:`sync_context`, :meth:`backward`, :meth:`step`) are called
    once per micro-batch or optimizer step; they must not read values off the device.
    """

    name = "base"
    #: Whether every rank writes checkpoint files (its shard), not only rank zero. Such a
    #: strategy needs a checkpoint directory every rank can write (see TrainSession).
    sharded_checkpoints = False

    def __init__(self, session, train_cfg: dict):
        self.session = session
        self.train_cfg = train_cfg
        self.accum = int(train_cfg["grad_accum_steps"])
        self.clip = train_cfg["grad_clip_norm"]

    @property
    def is_rank_zero(self) -> bool:
        return self.session.is_rank_zero

    # ---- set-up ------------------------------------------------------------------------
    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, resume: dict | None = None,
              resume_path: str | None = None) -> nn.Module:
        """Restore ``resume`` (a loaded checkpoint) if given, wrap the model, and return the
        module the loop calls. ``optimizer`` stays the loop's handle for its schedule."""
        raise NotImplementedError

    def autocast(self) -> Callable[[], ContextManager]:
        """A factory of the context the forward pass runs in (precision)."""
        return contextlib.nullcontext

    # ---- the hot path ------------------------------------------------------------------
    def sync_context(self, boundary: bool) -> ContextManager:
        """The context a micro-batch's forward and backward run in; ``boundary``: the
        micro-batch that ends an accumulation group (the next :meth:`step` follows it)."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch's (unscaled) mean loss, averaged over accumulation."""
        raise NotImplementedError

    def step(self) -> torch.Tensor:
        """Clip, step the optimizer and zero the gradients; return the gradient norm before
        clipping (a 0-dim tensor; 0 for a step the fp16 loss scaler skipped)."""
        raise NotImplementedError

    def pop_skipped_steps(self) -> float:
        """Optimizer steps skipped (fp16 overflow) since the last call; read once an epoch."""
        return 0.0

    def before_validation(self) -> None:
        """Make every rank's model identical before validating and checkpointing (once an
        epoch; DDP already is)."""

    # ---- checkpoints -------------------------------------------------------------------
    def model_state_dict(self) -> dict | None:
        """The full fp32 weights of the plain model (what ``load_model`` loads) on rank
        zero, None elsewhere. A collective under ZeRO: every rank must call it."""
        raise NotImplementedError

    def optimizer_state_dict(self) -> dict | None:
        """The optimizer state for the self-describing checkpoint, or None when the strategy
        keeps it in its own shards (see :meth:`save_shards`)."""
        return None

    def checkpoint_extra(self, epoch: int) -> dict:
        """Plain values stored in the consolidated checkpoint (describing the shards)."""
        return {}

    def save_shards(self, directory: str, epoch: int) -> Sequence[str]:
        """Write this rank's shard of the training state under ``directory``; return the
        paths it wrote, relative to ``directory`` (every rank calls it)."""
        return ()

    def resumed_shards(self, directory: str, resumed: dict | None) -> Sequence[str]:
        """This rank's shard files of ``resumed`` (a finished run's last checkpoint, loaded),
        relative to ``directory``, to report again when a resumed trial has nothing left to train."""
        return ()

    def close(self) -> None:
        """Release what :meth:`setup` created (called once, when the loop ends)."""
