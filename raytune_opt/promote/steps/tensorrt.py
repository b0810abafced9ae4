"""The ``tensorrt`` promotion step: ``model.fp16.engine`` from ``model.onnx`` and
``model.int8.engine`` from the S8S8 QDQ model (made here when ``int8`` is not a target), built
and timed on a GPU node, gated against the model they were converted from with the INT8 gate.

Without a GPU (or TensorRT) it records one ``skipped`` line saying why. Where the engines are
built, and how: :mod:`raytune_opt.promote.tensorrt` (the pipeline decides where before any step
runs, since joining a cluster that is not there should fail before minutes of work: ``gpu``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raytune_opt import registry

if TYPE_CHECKING:
    from raytune_opt.promote.context import StepContext

__all__ = ["tensorrt"]

registry.PROMOTION_STEPS.register(
    "tensorrt", f"{__name__}:tensorrt", doc="fp16 and INT8 TensorRT engines, built and timed on a GPU node",
    order=50, needs=("onnx",), gpu=True)

_ENGINES = (("tensorrt-fp16", "model.fp16.engine"), ("tensorrt-int8", "model.int8.engine"))


def tensorrt(ctx: StepContext) -> None:
    """fp16 and INT8 engines built and timed on a GPU node (skipped, with the reason, without one)."""
    from raytune_opt import progress
    from raytune_opt.promote.steps.int8 import tensorrt_qdq

    if ctx.placement.where != "skip":
        tensorrt_qdq(ctx)
    with progress.step("tensorrt: building and timing engines"):
        _engines(ctx)


def _engines(ctx: StepContext) -> None:
    from raytune_opt import _atomic
    from raytune_opt.promote import tensorrt as trt
    from raytune_opt.promote.errors import ArtifactError
    from raytune_opt.promote.steps.int8 import QDQ

    place = ctx.placement
    if place.where == "skip":
        ctx.record("tensorrt", "skipped", reason=place.reason)
        return
    onnx_bytes = ctx.outputs.get("onnx")
    if onnx_bytes is None:
        ctx.record("tensorrt", "skipped", reason="the ONNX model failed; nothing to build")
        return
    try:
        test = None if ctx.x_test is None else (ctx.x_test, ctx.y_test)
        res = trt.build(place, onnx_bytes, ctx.outputs.get(QDQ), ctx.x_val, ctx.y_val, ctx.scorer, test)
    except ArtifactError as exc:
        ctx.failed("tensorrt", exc)
        return
    if res.get("skipped"):
        ctx.record("tensorrt", "skipped", reason=res["skipped"])
        return
    ctx.version("tensorrt", res["tensorrt_version"])
    for name, filename in _ENGINES:
        eng = res["engines"].get(name)
        if eng is None:  # only the INT8 engine can be missing: no QDQ model passed its gate
            ctx.record(name, "skipped", reason=f"no TensorRT-ready QDQ model passed the {ctx.scorer.gate} (see "
                                               f"{QDQ})")
            continue
        if eng["status"] != "ok":
            ctx.record(name, "failed", reason=eng["reason"], traceback=eng.get("traceback", ""))
            continue
        path = ctx.out_dir / filename
        _atomic.write_bytes(path, eng["plan"])
        reason = ctx.gate.rejection(eng["score"], ctx.model_score)
        ctx.record(name, "rejected" if reason else "ok", path=path, reason=reason,
                   **ctx.scored(eng["score"], eng.get("test_score")), latency_ms=eng["latency_ms"],
                   runtime=f"tensorrt {res['tensorrt_version']} on {res['device']}", max_batch=trt.MAX_BATCH)
