"""The ``int8`` promotion step: ``model.int8.onnx`` for ONNX Runtime's CPU kernels and
``model.int8.qdq-s8s8.onnx`` for TensorRT's explicit quantization, each quantized from
``model.onnx`` and calibrated on training batches behind the accuracy gate
(``promote.int8``; quantization and the gate: :mod:`raytune_opt.promote.quantize`).

It leaves the S8S8 model's bytes when it passed its gate (``ctx.outputs["int8-tensorrt-qdq"]``,
else None): the TensorRT step builds its INT8 engine from them, making them itself
(:func:`tensorrt_qdq`) when ``int8`` is not a target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raytune_opt import registry
from raytune_opt.spec.fields import Field, Section

if TYPE_CHECKING:
    from raytune_opt.promote.context import StepContext

__all__ = ["int8", "tensorrt_qdq", "quantize", "CALIBRATION_METHODS"]

#: ONNX Runtime's calibration methods, in the order the gate tries the others.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: The TensorRT-ready model's name, as a record and as an output for the later steps.
QDQ = "int8-tensorrt-qdq"

SETTINGS = Section("INT8 quantization with ONNX Runtime.", {
    "calibration_batches": Field("int", 16, "Training batches used to calibrate.", ge=1, tunable=False),
    "calibration_method": Field("str", "minmax", "minmax | entropy | percentile (others are tried when the "
                                "gate fails).", choices=CALIBRATION_METHODS, tunable=False),
    "max_accuracy_drop": Field("float", 1.0, "Accuracy gate: most accuracy points INT8 may lose vs fp32.",
                               ge=0, tunable=False),
    "max_relative_change": Field("float", 0.05, "Regression gate: most relative worsening of the metric "
                                 "vs fp32.", ge=0, tunable=False),
})

registry.PROMOTION_STEPS.register(
    "int8", f"{__name__}:int8", doc="INT8 QDQ by ONNX Runtime static quantization, behind the accuracy gate (a "
    "regression: the metric's relative change)", order=40, needs=("onnx",), settings=SETTINGS)


def int8(ctx: StepContext) -> None:
    """INT8 for ONNX Runtime's CPU kernels, and TensorRT's symmetric S8S8 form, each behind the gate."""
    quantize(ctx, flavor="cpu")
    tensorrt_qdq(ctx)


def tensorrt_qdq(ctx: StepContext) -> bytes | None:
    """TensorRT's S8S8 QDQ model, made once per promotion (by ``int8``, or by ``tensorrt`` when
    ``int8`` is not a target): its bytes when it passed its gate."""
    if QDQ not in ctx.outputs:
        ctx.leave(QDQ, quantize(ctx, flavor="tensorrt"))
    return ctx.outputs[QDQ]


def quantize(ctx: StepContext, *, flavor: str) -> bytes | None:
    """Quantize ``model.onnx`` (``cpu`` or ``tensorrt`` flavour) behind the gate and record it;
    the bytes when it passed."""
    from raytune_opt import progress
    from raytune_opt.promote import measure
    from raytune_opt.promote import quantize as q

    name, filename = ("int8", "model.int8.onnx") if flavor == "cpu" else (QDQ, "model.int8.qdq-s8s8.onnx")
    if ctx.outputs.get("onnx") is None:
        ctx.record(name, "skipped", reason="the ONNX model failed; nothing to quantize")
        return None
    cfg = ctx.section("int8")  # the tensorrt step quantizes with int8's settings too
    batches = ctx.calibration_batches(int(cfg["calibration_batches"]))
    op_types, fallbacks = _op_types(ctx)
    path = ctx.out_dir / filename
    try:
        gate = q.quantize_with_gate(
            ctx.out_dir / "model.onnx", path, batches, flavor=flavor, first_method=cfg["calibration_method"],
            x_val=ctx.x_val, y_val=ctx.y_val, scorer=ctx.gate, fp32_score=ctx.model_score, name=name,
            op_types=op_types, fallback_op_types=fallbacks)
        # The S8S8 form is TensorRT's input; ORT's CPU kernels run it slowly, so it is not timed here.
        with progress.step(f"{name}: measuring latency"):
            latency = (measure.latencies(measure.ort_runner(measure.ort_session(path, ctx.threads)), ctx.x_val)
                       if flavor == "cpu" else None)
        # Scored on the test split as the gate scored it on validation (the S8S8 form unfused).
        test = ctx.test_score(measure.ort_runner(measure.ort_session(path, ctx.threads, fuse_qdq=flavor == "cpu")))
    except (RuntimeError, OSError, MemoryError, ValueError, *measure.ort_errors()) as exc:
        # ONNX Runtime's quantizer raises ValueError for operators it cannot quantize.
        ctx.failed(name, exc)
        return None
    runtime = (f"onnxruntime cpu, {ctx.threads} threads" if flavor == "cpu"
               else "accuracy: onnxruntime cpu; for TensorRT explicit quantization")
    ctx.record(name, gate.status, path=path, reason=gate.reason, **ctx.scored(gate.score, test), latency_ms=latency,
               runtime=runtime,
               quantization={"format": "QDQ", "per_channel": True,
                             "activations": "uint8 asymmetric" if flavor == "cpu" else "int8 symmetric",
                             "weights": "int8 symmetric", "bias": "int32" if flavor == "cpu" else "float",
                             "calibration_method": gate.method, "calibration_batches": len(batches),
                             "calibration_batch_size": int(batches[0].shape[0]),
                             "op_types": list(gate.op_types) if gate.op_types else "all",
                             "attempts": [a.as_dict() for a in gate.attempts],
                             **({"failed_methods": gate.failed} if gate.failed else {})})
    return path.read_bytes() if gate.status == "ok" else None


def _op_types(ctx: StepContext) -> tuple[tuple[str, ...] | None, tuple[tuple[str, ...], ...]]:
    """The operators to quantize, as the trial's loop says for its models (its LOOPS entry's
    ``int8_op_types``: a transformer's matrix products, not the attention mask's arithmetic),
    else None: every operator ONNX Runtime can quantize; and the smaller sets to fall back to
    when no calibration method passes the gate (``int8_fallback_op_types``)."""
    loop = ((ctx.checkpoint.get("recipe") or {}).get("train") or {}).get("loop")
    entry = registry.LOOPS.get(loop) if isinstance(loop, str) else None
    if entry is None:
        return None, ()
    return entry.meta.get("int8_op_types"), tuple(entry.meta.get("int8_fallback_op_types", ()))
