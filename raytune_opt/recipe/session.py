"""The interface between the training loop and whoever runs it.

The loop (:func:`raytune_opt.recipe.loop.train`) only talks to a :class:`Session`: it asks
it for the device and the rank, lets it wrap the model and the data loaders (DDP and a
DistributedSampler under Ray Train; nothing locally), and hands it each epoch's metrics
and checkpoint directory. :class:`LocalSession` runs one process with no framework. What
differs between distributed strategies (DDP, DeepSpeed) is not here but in
:mod:`raytune_opt.strategies`.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

# torch is imported when a session is first asked for its device, not with this module: a
# multi-worker trial's Tune actor imports raytune_opt.trial (and so this module) but never
# trains, and torch's import is ~2 s of CPU on a trial's start-up path (benchmarks/ddp_startup.py).

__all__ = ["Session", "LocalSession"]


class Session:
    """What the loop needs from its runner. Subclasses override what differs.

    Attributes:
        rank: this process's rank in the trial's worker group.
        world_size: number of ranks training the trial together.
        device: where the model and batches go.
        num_threads: if set, the loop calls ``torch.set_num_threads`` with it; None
            leaves the process's thread settings alone.
    """

    rank: int = 0
    world_size: int = 1
    num_threads: int | None = None
    _device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        """Where the model and batches go (the CPU unless a subclass or its runner sets one)."""
        if self._device is None:
            import torch

            self._device = torch.device("cpu")
        return self._device

    @device.setter
    def device(self, value: torch.device) -> None:
        self._device = value

    @property
    def is_rank_zero(self) -> bool:
        """True on the rank that writes checkpoints."""
        return self.rank == 0

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Wrap the model for distributed training (identity here)."""
        return model

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        """Shard the loader across ranks (identity here)."""
        return loader

    def watch_model(self, model: nn.Module) -> None:
        """The model of a loop whose framework wraps it itself (Lightning's DDP strategy): a
        runner that checks the replicas of :meth:`prepare_model`'s model checks this one."""

    def report(self, metrics: dict, checkpoint_dir: str | None, shards: Sequence[str] = ()) -> None:
        """Receive one epoch's metrics and the checkpoint directory.

        Args:
            metrics: the epoch's metrics (the same on every rank).
            checkpoint_dir: on rank zero, the directory whose top-level files (``best.pt``,
                ``last.pt``) are the checkpoint; on other ranks None, unless ``shards``.
            shards: paths under ``checkpoint_dir`` this rank wrote as its shard of a sharded
                checkpoint (DeepSpeed ZeRO); a session that persists checkpoints persists
                every rank's shards with them.
        """
        raise NotImplementedError

    def checkpoint_root(self) -> str:
        """A directory this rank may write checkpoints to (under a strategy with sharded
        checkpoints, the same directory on every rank)."""
        raise NotImplementedError

    def recorded_epoch(self) -> int | None:
        """The last epoch whose report the runner is known to have recorded (0: none);
        None when the session cannot tell (then a resumed run replays nothing)."""
        return None

    def keep(self, key, make: Callable[[], object]):
        """``make()``, or what it returned for ``key`` before in this process when the runner
        keeps values across trials (a warm slot's worker: ``resources.warm_workers``); here
        it is made for every trial."""
        return make()


class LocalSession(Session):
    """A single process: reports go to :attr:`reports` (and ``callback``, if given).

    Args:
        checkpoint_dir: where checkpoints go; None: a fresh temporary directory, made
            when first needed.
        device: the device to train on.
        callback: called with ``(metrics, checkpoint_dir)`` after each report.
        num_threads: passed to ``torch.set_num_threads`` by the loop; None: untouched.
    """

    def __init__(self, checkpoint_dir: str | None = None, device: str | torch.device = "cpu",
                 callback: Callable[[dict, str | None], None] | None = None, num_threads: int | None = None):
        import torch

        self.device = torch.device(device)
        self.callback = callback
        self.num_threads = num_threads
        self._checkpoint_dir = checkpoint_dir
        self.reports: list[dict] = []

    def report(self, metrics: dict, checkpoint_dir: str | None, shards: Sequence[str] = ()) -> None:
        self.reports.append(dict(metrics))
        if self.callback is not None:
            self.callback(metrics, checkpoint_dir)

    def checkpoint_root(self) -> str:
        if self._checkpoint_dir is None:
            self._checkpoint_dir = tempfile.mkdtemp(prefix="raytune_opt_ckpt_")
        return self._checkpoint_dir
