"""Ray Train's torch backend, from a module that does not import torch.

A multi-worker trial runs three processes in a row before its first step: the Tune trial
actor, Train's controller, the workers. Only the workers train, yet with ``TorchTrainer`` and
``TorchConfig`` the first two import torch as well: ``ray.train.torch.config`` imports it at
module level, and the controller unpickles the backend config (its class's module) with the
run's context. That is ~2 s of CPU each on a trial's start-up path, taken from the workers on
a small machine (benchmarks/ddp_startup.py).

:class:`TorchBackendConfig` is ``TorchConfig`` for what we use (gloo or NCCL, ``env://``
rendezvous): the controller-side steps are Ray's ``_TorchBackend.on_start``/``on_shutdown``
(Ray 2.60, ``ray/train/torch/config.py``) minus the TPU branch, and every step that runs on
a worker imports Ray's own worker function there. Should Ray import torch lazily in
``ray.train.torch.config`` (and in ``ray.train.torch``'s package), ``TorchTrainer`` +
``TorchConfig`` would do and this module could go.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass

from ray.train.backend import Backend, BackendConfig

logger = logging.getLogger(__name__)


@dataclass
class TorchBackendConfig(BackendConfig):
    """``ray.train.torch.TorchConfig`` without torch in the process that holds it.

    Args:
        backend: ``torch.distributed`` backend: ``gloo`` (CPU) or ``nccl`` (GPU).
        timeout_s: seconds for process-group operations to time out.
    """

    backend: str = "gloo"
    timeout_s: int = 1800

    @property
    def backend_cls(self):
        return _TorchBackend

    @property
    def train_func_context(self):
        return _TorchContext

    @property
    def framework(self):
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class _TorchContext:
    """Ray's ``TorchConfigContextManager`` (sets the CUDA device), imported on the worker."""

    def __enter__(self):
        from ray.train.torch.config import TorchConfigContextManager

        self._inner = TorchConfigContextManager()
        return self._inner.__enter__()

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)


class _TorchBackend(Backend):
    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group, backend_config: TorchBackendConfig) -> None:
        import ray
        from ray.train._internal.utils import get_address_and_port

        addr, port = worker_group.execute_single(0, get_address_and_port)
        # A fresh id for every group Train starts (a warm slot tells a restart by it: warm_slots.py).
        worker_group.execute(_set_rendezvous, addr=addr, port=port, group=uuid.uuid4().hex)
        ray.get([worker_group.execute_single_async(i, _setup_process_group, backend=backend_config.backend,
                                                   world_rank=i, world_size=len(worker_group),
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group, backend_config: TorchBackendConfig) -> None:
        import ray
        from ray._private import ray_constants
        from ray.exceptions import GetTimeoutError
        from ray.train.constants import (DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                         TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)

        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        timeout_s = ray_constants.env_integer(TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
                                              DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S)
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:
            logger.warning("Torch process group shutdown timed out after %s seconds", timeout_s)


# What runs on the workers: Ray's own functions, imported there.

def _set_rendezvous(addr: str, port: int, group: str = "") -> None:
    from ray.train.torch.config import _set_torch_distributed_env_vars

    os.environ["RAYTUNE_OPT_GROUP"] = group  # = warm_slots.GROUP_ENV
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)
    # LOCAL_RANK, RANK, WORLD_SIZE ... (torch.distributed reads them at init)
    _set_torch_distributed_env_vars()


def _setup_process_group(backend: str, world_rank: int, world_size: int, timeout_s: int) -> None:
    from ray.train.torch.config import _setup_torch_process_group

    if world_rank == 0:
        _hold_loopback_store(world_size, timeout_s)
    _setup_torch_process_group(backend=backend, world_rank=world_rank, world_size=world_size,
                               init_method="env://", timeout_s=timeout_s)


_loopback_store = None  # rank 0's rendezvous store on a loopback MASTER_ADDR, for the worker's life


def _hold_loopback_store(world_size: int, timeout_s: int) -> None:
    """On a loopback rendezvous (the embedded Ray), rank 0's store listens on loopback only.

    torch's TCPStore server listens on every interface whatever MASTER_ADDR says; a
    multi-tenant store made first on a socket bound to MASTER_ADDR:MASTER_PORT is the server
    that ``init_process_group``'s env:// rendezvous then shares (one server per port and
    process) instead of binding its own.
    """
    import ipaddress
    import socket
    from datetime import timedelta

    global _loopback_store
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    try:
        if not ipaddress.ip_address(addr).is_loopback:
            return
    except ValueError:
        return
    import torch.distributed as dist

    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    sock.listen(128)
    _loopback_store = dist.TCPStore(addr, port, world_size, True, timedelta(seconds=timeout_s),
                                    wait_for_workers=False, multi_tenant=True, master_listen_fd=sock.detach())


def _shutdown(destroy_process_group: bool) -> None:
    from ray.train.torch.config import _shutdown_torch

    global _loopback_store
    _shutdown_torch(destroy_process_group=destroy_process_group)
    _loopback_store = None
