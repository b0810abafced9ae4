"""Accuracy and latency of a model on the CPU: PyTorch or an ONNX Runtime session.

Shared by the promotion pipeline and ``benchmarks/promotion_latency.py`` so both measure
the same way: warm-up runs first, then the median (p50) and 95th percentile of wall time.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable

import numpy as np
import torch

EVAL_BATCH = 256
LATENCY_BATCHES = (1, 64)
LATENCY_BUDGET_S = 1.0  # timed seconds per (model, batch size); tests lower it


def machine_threads() -> int:
    """The cores this process may run on (its CPU affinity; a container's limit shows there)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_for(setting: int | None) -> int:
    """Intra-op threads for ``promote.ort_threads``: the setting, or (null) the machine's cores."""
    return int(setting) if setting else machine_threads()


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exceptions ONNX Runtime raises for a model it cannot load or run (they derive from Exception only)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


def ort_session(path: str, threads: int | None = None, *, fuse_qdq: bool = True):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (None: the machine's cores)
    and full graph optimization.

    ``fuse_qdq=False`` keeps Q/DQ nodes as they are (``session.disable_quant_qdq``) instead of
    fusing them into ORT's integer kernels: the model then computes exactly what its Q/DQ
    nodes say (float math between them), which is what an explicit-quantization consumer
    such as TensorRT implements (int32 accumulation). ORT's fused S8S8 kernels on x86 without
    VNNI (AVX2 only) go through VPMADDUBSW, whose int16 pair sums saturate.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not fuse_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.intra_op_num_threads = threads or machine_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(session) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> logits`` for a single-input, single-output session."""
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> logits`` for an eval-mode PyTorch model on the CPU."""
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def predict(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Logits for every row of ``x``, computed ``batch`` rows at a time."""
    return np.concatenate([run(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)])


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy as a fraction."""
    return float((logits.argmax(axis=1) == y).mean())


def latency(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int, *, warmup: int = 5,
            runs: int | None = None, budget_s: float | None = None) -> dict:
    """Wall-clock latency of ``run`` on ``batch`` rows of ``x`` (repeated when ``x`` is shorter).

    Runs ``warmup`` calls, then ``runs`` timed calls (default: as many as fit in about
    ``budget_s`` seconds, default :data:`LATENCY_BUDGET_S`, between 10 and 200).

    Returns:
        ``{"p50_ms", "p95_ms", "runs"}``.
    """
    xb = batch_of(x, batch)
    for _ in range(warmup):
        run(xb)
    if runs is None:
        budget_s = LATENCY_BUDGET_S if budget_s is None else budget_s
        start = time.perf_counter()
        run(xb)
        runs = int(min(200, max(10, budget_s / max(time.perf_counter() - start, 1e-6))))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(xb)
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)


def summarize(times_ms: list[float]) -> dict:
    t = np.asarray(times_ms, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(t, 50)), 4), "p95_ms": round(float(np.percentile(t, 95)), 4),
            "runs": int(t.size)}


def latencies(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, **kwargs) -> dict:
    """:func:`latency` at every batch size of :data:`LATENCY_BATCHES`, keyed ``"batch_N"``."""
    return {f"batch_{b}": latency(run, x, b, **kwargs) for b in LATENCY_BATCHES}


def batch_of(x: np.ndarray, batch: int) -> np.ndarray:
    """The first ``batch`` rows of ``x``, cycling through it when it is shorter."""
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch] if reps > 1 else x[:batch])


@contextlib.contextmanager
def torch_threads(n: int):
    """Run PyTorch with ``n`` intra-op threads inside the block (as ORT gets)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
