"""Scores (accuracy, or a regression metric) and latency of a model on the CPU: PyTorch or
an ONNX Runtime session.

Shared by the promotion pipeline and ``benchmarks/promotion_latency.py`` so both measure
the same way: warm-up runs first, then the median (p50) and 95th percentile of wall time.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from raytune_opt.recipe.footprint import torch_threads  # noqa: F401  (the pipeline's threads)

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


def regression_scores(outputs: np.ndarray, y: np.ndarray) -> dict:
    """``rmse``, ``mae`` and ``r2`` of a (N, 1) output against N targets, computed by the
    training loop's own function (so the fp32 score is the sweep's; r2 is NaN when the
    targets are constant)."""
    from raytune_opt.recipe.loop import regression_metrics

    y = y.astype(np.float64).reshape(-1)
    err = outputs.astype(np.float64).reshape(y.shape) - y
    sums = torch.tensor([len(y), np.sum(err * err), np.sum(np.abs(err)), np.sum(y), np.sum(y * y)],
                        dtype=torch.float64)
    m = regression_metrics(sums)
    return {"rmse": m["val_rmse"], "mae": m["val_mae"], "r2": m["val_r2"]}


SCORES = ("accuracy", "rmse", "mae", "r2")
_SEARCH_METRIC_SCORE = {"val_rmse": "rmse", "val_mae": "mae", "val_r2": "r2"}
_EPS = 1e-9  # changes are differences of floats: forgive rounding only


@dataclass(frozen=True)
class Scorer:
    """What promotion scores on the validation set, and how much a converted model (INT8, a
    TensorRT engine) may lose against the fp32 PyTorch model.

    - ``accuracy`` (classification): top-1 accuracy, a fraction. The change is INT8 minus
      fp32 in percentage points (``delta_points``); the gate: at most ``limit`` points lost
      (``promote.int8.max_accuracy_drop``).
    - ``rmse`` / ``mae`` / ``r2`` (regression, of the model's (N, 1) output): the change is
      the relative worsening (``relative_change``, positive when worse); the gate: at most
      ``limit`` (``promote.int8.max_relative_change``). For rmse and mae it is
      ``(new - ref) / ref``. For r2 it is the relative increase of the unexplained variance
      ``1 - r2`` (SSE / SST, so the same as the relative increase of the MSE): a change of
      r2 itself would mean little near 0 and be tiny near 1.

    Args:
        metric: one of :data:`SCORES`.
        limit: the gate, in the change's unit (>= 0).
        section: the ``promote`` section whose keys set the gate (``int8``; ``prune`` and
            ``distill`` gate their own steps).
        against: what the reference score belongs to, for a reason line (``fp32``: the
            trial's model; after a compression step, e.g. ``the pruned fp32 model``).

    Raises:
        ValueError: an unknown metric or a negative limit (our bug: both come from the schema).
    """

    metric: str
    limit: float
    section: str = "int8"
    against: str = "fp32"

    def __post_init__(self):
        if self.metric not in SCORES or not self.limit >= 0:
            raise ValueError(f"Scorer: metric must be one of {SCORES} and limit >= 0, but got {self.metric=} "
                             f"{self.limit=}")

    @property
    def regression(self) -> bool:
        return self.metric != "accuracy"

    @property
    def key(self) -> str:
        """The spec key that sets the gate."""
        return f"promote.{self.section}.{'max_relative_change' if self.regression else 'max_accuracy_drop'}"

    def score(self, outputs: np.ndarray, y: np.ndarray) -> float:
        """The score of a model's ``outputs`` (logits, or a (N, 1) regression output) against ``y``."""
        return regression_scores(outputs, y)[self.metric] if self.regression else accuracy(outputs, y)

    def change(self, score: float, ref: float) -> float:
        """``score`` against the fp32 ``ref``: Δ points for accuracy (positive: better), the
        relative worsening for a regression metric (positive: worse)."""
        if not self.regression:
            return (score - ref) * 100.0
        if self.metric == "r2":
            score, ref = 1.0 - score, 1.0 - ref  # the unexplained variance, lower is better as rmse's
        if ref == 0:  # a perfect fp32 model: any error is an infinite relative worsening
            return 0.0 if score == 0 else math.inf
        return (score - ref) / ref

    def lost(self, score: float, ref: float) -> float:
        """How much worse than ``ref`` ``score`` is, in the gate's unit (points, or relative);
        a NaN score (r2 of constant targets) is infinitely worse."""
        change = self.change(score, ref)
        lost = change if self.regression else -change
        return math.inf if math.isnan(lost) else lost

    def passes(self, score: float, ref: float) -> bool:
        """Whether ``score`` is within the gate."""
        return self.lost(score, ref) <= self.limit + _EPS

    @property
    def gate(self) -> str:
        return "metric gate" if self.regression else "accuracy gate"

    @property
    def measured(self) -> str:
        """What the regression gate compares, for a reason line."""
        return "1 - r2 (the unexplained variance)" if self.metric == "r2" else self.metric

    def rejection(self, score: float, ref: float) -> str:
        """Why ``score`` fails the gate against ``ref``; empty when it passes."""
        if self.passes(score, ref):
            return ""
        change = self.change(score, ref)
        if not self.regression:
            return f"{self.gate}: loses {-change:.2f} points vs {self.against} > {self.key}={self.limit:g}"
        return (f"{self.gate}: {self.measured} is {change:.2%} worse than {self.against}'s > {self.key}={self.limit:g} "
                f"(relative)")

    def settings(self) -> dict:
        """The gate as the manifest's ``settings`` records it for a regression."""
        rule = ("((1 - r2) - (1 - r2_fp32)) / (1 - r2_fp32)" if self.metric == "r2"
                else f"({self.metric} - {self.metric}_fp32) / {self.metric}_fp32")
        return {"metric": self.metric, "max_relative_change": self.limit, "relative_change": rule}


def scorer_for(task: str, search_metric: str, int8_cfg: dict, default_relative_change: float) -> Scorer:
    """The scorer of a promotion: accuracy for a classification; for a regression the sweep's
    metric when it is a regression metric (``val_rmse``, ``val_mae``, ``val_r2``), else rmse.

    ``default_relative_change`` stands in for ``max_relative_change`` in experiments written
    before it existed.
    """
    if task != "regression":
        return Scorer("accuracy", float(int8_cfg["max_accuracy_drop"]))
    limit = int8_cfg.get("max_relative_change", default_relative_change)
    return Scorer(_SEARCH_METRIC_SCORE.get(search_metric, "rmse"), float(limit))


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


