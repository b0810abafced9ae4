"""INT8 with ONNX Runtime static quantization, behind an accuracy gate (a metric gate for a regression).

Two flavours of the same QDQ model, per-channel weights, calibrated on training batches:

- ``cpu``: U8 activations / S8 weights, the form ONNX Runtime's CPU kernels run fastest.
- ``tensorrt``: symmetric S8 activations and weights, float bias, Relu kept: the explicit
  quantization TensorRT consumes (it quantizes symmetrically and refuses int32 bias
  DequantizeLinear nodes, which ONNX Runtime writes by default). Its accuracy is measured
  with ORT's Q/DQ fusion off (what the Q/DQ nodes compute, as TensorRT does): ORT's fused
  S8S8 CPU kernels saturate on x86 without VNNI and would reject a sound model.

If the quantized model loses more than the gate allows against fp32 (a
:class:`~raytune_opt.promote.measure.Scorer`: ``max_accuracy_drop`` points of accuracy, or
for a regression ``max_relative_change`` of its metric), the other calibration methods are
tried, then the loop's fallback operator sets (fewer operators quantized); if none passes,
the best attempt is kept, marked rejected.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from raytune_opt import _atomic, progress
from raytune_opt._fmt import signed
from raytune_opt.promote import measure
from raytune_opt.promote.steps.int8 import CALIBRATION_METHODS as METHODS  # the int8 step's setting owns them

FLAVORS = ("cpu", "tensorrt")


@dataclass
class Attempt:
    method: str
    score: float  # accuracy (a fraction), or the regression metric
    change: float  # vs fp32: Δ points of accuracy, or the metric's relative worsening (Scorer.change)
    passed: bool
    metric: str = "accuracy"
    op_types: tuple[str, ...] | None = None  # a fallback operator set's (None: the first set)

    def as_dict(self) -> dict:
        if self.metric == "accuracy":  # the keys manifests have always had
            out = {"method": self.method, "accuracy": self.score, "delta_points": self.change, "passed": self.passed}
        else:
            out = {"method": self.method, "metric": self.metric, "score": self.score, "relative_change": self.change,
                   "passed": self.passed}
        return {**out, "op_types": list(self.op_types)} if self.op_types else out

    @property
    def label(self) -> str:
        return self.method + (f" on {'/'.join(self.op_types)}" if self.op_types else "")


@dataclass
class GateResult:
    """What the gate decided, with every calibration method it tried."""

    status: str  # ok | rejected
    method: str  # the kept model's calibration method
    score: float
    change: float
    reason: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"method", "error"}: methods that raised
    op_types: tuple[str, ...] | None = None  # the kept model's quantized operators (None: all)


def calibration_batches(x_train: np.ndarray, batch_size: int, n: int, seed: int) -> list[np.ndarray]:
    """``n`` full training batches of ``batch_size`` rows, in a seeded random order.

    Only full batches: the histogram calibrators (entropy, percentile) stack every batch's
    activations and need equal shapes. Fewer come back when the training set is too small.
    """
    batch_size = max(1, min(int(batch_size), len(x_train)))
    order = np.random.default_rng(seed).permutation(len(x_train))
    n = max(1, min(int(n), len(x_train) // batch_size))
    return [np.ascontiguousarray(x_train[order[i * batch_size:(i + 1) * batch_size]]) for i in range(n)]


def _reader(batches: list[np.ndarray], input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        """Feeds the calibration batches once, in order; ``rewind`` starts over."""

        def __init__(self):
            self._i = 0

        def get_next(self):
            if self._i >= len(batches):
                return None
            self._i += 1
            return {input_name: batches[self._i - 1]}

        def rewind(self):
            self._i = 0

    return BatchReader()


def preprocess(fp32_path: str | Path, out_path: str | Path) -> None:
    """ORT's ``quant_pre_process``: shape inference and standard-ONNX graph cleanup before calibration."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path))


def quantize(model_path: str | Path, out_path: str | Path, batches: list[np.ndarray], method: str,
             flavor: str, op_types: Sequence[str] | None = None) -> None:
    """Statically quantize ``model_path`` (QDQ, per-channel weights) into ``out_path``; only the
    operators ``op_types`` names when given (ONNX Runtime's ``op_types_to_quantize``), else all
    it can.

    Raises:
        ValueError: unknown ``method`` or ``flavor`` (our bug: both come from the schema).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS or flavor not in FLAVORS:
        raise ValueError(f"quantize: method must be one of {METHODS} and flavor one of {FLAVORS}, "
                         f"but got {method=} {flavor=}")
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    if flavor == "cpu":
        activation, extra = QuantType.QUInt8, {}
    else:
        activation = QuantType.QInt8
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    import onnx

    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    # The histogram calibrators print progress with print(); ORT logs advice at WARNING.
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(model_path), str(out_path), _reader(batches, input_name),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=activation,
                            weight_type=QuantType.QInt8, calibrate_method=calibrate, extra_options=extra,
                            op_types_to_quantize=list(op_types) if op_types else None)
    finally:
        logging.getLogger().setLevel(quiet)


def quantize_with_gate(fp32_path: str | Path, out_path: str | Path, batches: list[np.ndarray], *, flavor: str,
                       first_method: str, x_val: np.ndarray, y_val: np.ndarray, scorer: measure.Scorer,
                       fp32_score: float, name: str = "int8", op_types: Sequence[str] | None = None,
                       fallback_op_types: Sequence[Sequence[str]] = ()) -> GateResult:
    """Quantize, score on the validation set, and try other methods until one passes the gate.

    ``first_method`` is tried first, then the others in :data:`METHODS` order. The model
    kept at ``out_path`` (written atomically) is the first that passes ``scorer``'s gate
    against ``fp32_score``, else the attempt that lost least, marked rejected. ``name``
    labels each attempt's progress line; ``op_types`` as :func:`quantize` takes it. When every
    method fails the gate, each of ``fallback_op_types`` (fewer operators, e.g. a transformer's
    matrix products without its embedding lookup) is tried the same way, in order: a partly
    quantized model that passes beats a rejected one. A method whose calibration or scoring
    raises (ONNX Runtime's entropy calibrator: "Too many bins for data range" on a small BERT)
    is recorded in ``failed`` and the next one is tried; when every attempt raised, the last
    error is raised.
    """
    order = [first_method] + [m for m in METHODS if m != first_method]
    sets = [tuple(op_types) if op_types else None, *(tuple(f) for f in fallback_op_types)]
    attempts: list[Attempt] = []
    failed: list[dict] = []
    best: tuple[Attempt, bytes] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        preprocess(fp32_path, pre)
        for k, ops in enumerate(sets):
            fallback = ops if k else None  # an attempt names its operators only when they are a fallback's
            for i, method in enumerate(order, 1):
                candidate = Path(tmp) / f"{method}-{k}.onnx"
                on = f" on {'/'.join(ops)} only" if k else ""
                try:
                    with progress.step(f"{name}: calibrating with {method}{on} ({i} of {len(order)}), scoring"):
                        quantize(pre, candidate, batches, method, flavor, ops)
                        # The S8S8 model is TensorRT's input: score what its Q/DQ nodes compute, not ORT's
                        # fused CPU kernels (saturating int16 sums on AVX2 without VNNI: -23.7 points here).
                        session = measure.ort_session(candidate, fuse_qdq=flavor == "cpu")
                        score = scorer.score(measure.predict(measure.ort_runner(session), x_val), y_val)
                except (RuntimeError, ValueError, MemoryError, *measure.ort_errors()) as exc:
                    failed.append({"method": method, **({"op_types": list(ops)} if k else {}),
                                   "error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]})
                    if best is None and len(failed) == len(order) * len(sets):
                        raise
                    continue
                attempt = Attempt(method, score, scorer.change(score, fp32_score), scorer.passes(score, fp32_score),
                                  metric=scorer.metric, op_types=fallback)
                attempts.append(attempt)
                lost = scorer.lost(score, fp32_score)
                if best is None or lost < scorer.lost(best[0].score, fp32_score) or attempt.passed:
                    best = (attempt, candidate.read_bytes())
                if attempt.passed:
                    break
            if best is not None and best[0].passed:
                break
    assert best is not None
    kept, data = best
    kept_ops = kept.op_types or sets[0]  # a first-set attempt names no operators
    _atomic.write_bytes(out_path, data)
    if kept.passed:
        return GateResult("ok", kept.method, kept.score, kept.change, attempts=attempts, failed=failed,
                          op_types=kept_ops)
    return GateResult("rejected", kept.method, kept.score, kept.change, reason=_reason(scorer, attempts, kept),
                      attempts=attempts, failed=failed, op_types=kept_ops)


def _reason(scorer: measure.Scorer, attempts: list[Attempt], kept: Attempt) -> str:
    if not scorer.regression:
        tried = ", ".join(f"{a.label} {signed(a.change, '+.2f')}" for a in attempts)
        return (f"accuracy gate: INT8 loses more than {scorer.key}={scorer.limit:g} points vs {scorer.against} with "
                f"every calibration method ({tried}); kept {kept.label}")
    tried = ", ".join(f"{a.label} {signed(a.change, '+.2%')}" for a in attempts)
    return (f"{scorer.gate}: INT8's {scorer.measured} is worse than {scorer.against}'s by more than {scorer.key}="
            f"{scorer.limit:g} (relative) with every calibration method ({tried}); kept {kept.label}")
