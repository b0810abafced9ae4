"""What a model costs to serve: parameters, multiply-accumulates, bytes, forward latency.

Measured once per trial (they depend on the architecture, not on the weights' values) and
reported with its metrics, so that a sweep can optimise or constrain them
(``search.metric: [val_accuracy, latency_ms]``, ``search.constraints``), and again by
promotion for every compressed model. MACs are counted by PyTorch's own
``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2: one multiply-accumulate is two
FLOPs), which counts the matmuls and convolutions a forward pass dispatches; element-wise
operations are not counted (as in most published MAC figures).
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

#: The measures, and which can be known before training (a config that breaks a constraint on
#: one of these is never trained).
MEASURES = ("params", "macs", "model_bytes", "latency_ms")
STATIC = ("params", "macs", "model_bytes")


def _numel(p: torch.Tensor) -> int:
    # A ZeRO-3 parameter is partitioned across ranks: its local tensor is empty, ds_numel is its size.
    return int(getattr(p, "ds_numel", p.numel()))


def count_params(model: torch.nn.Module) -> int:
    """Parameters (shared ones once)."""
    return sum(_numel(p) for p in {id(p): p for p in model.parameters()}.values())


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights and buffers as stored."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(_numel(t) * t.element_size() for t in tensors.values())


def count_macs(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``example`` (a batch of one sample)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run PyTorch with ``n`` intra-op threads inside the block (None: as it is)."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def forward_latency_ms(model: torch.nn.Module, example: torch.Tensor, *, batch: int = 1, threads: int | None = 1,
                       warmup: int = 5, runs: int = 30) -> float:
    """Median forward latency in milliseconds at ``batch`` (rows of ``example`` repeated), on
    the model's own device, with ``threads`` intra-op threads, after ``warmup`` runs."""
    x = example[:1].repeat(batch, *([1] * (example.dim() - 1)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = x.to(device)
    cuda = device.type == "cuda"
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch_threads(threads), torch.inference_mode():
            for i in range(warmup + runs):
                if cuda:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(x)
                if cuda:
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    return float(statistics.median(times))


def static_measures(model: torch.nn.Module, example: torch.Tensor) -> dict:
    """``params``, ``macs`` and ``model_bytes`` of ``model`` (on the CPU; nothing is trained)."""
    return {"params": count_params(model), "macs": count_macs(model, example[:1]), "model_bytes": model_bytes(model)}


def measures(model: torch.nn.Module, example: torch.Tensor, *, latency_batch: int = 1,
             threads: int | None = 1) -> dict:
    """Every entry of :data:`MEASURES` for ``model``."""
    out = static_measures(model, example)
    out["latency_ms"] = forward_latency_ms(model, example, batch=latency_batch, threads=threads)
    return out
