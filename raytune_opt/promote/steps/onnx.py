"""The ``onnx`` promotion step: ``model.onnx`` exported from the model to convert (the trial's,
or the last compressed one its gate accepted), its parity with PyTorch on the validation split
(``promote.parity_atol``), its score and latency on ONNX Runtime.

It leaves the ONNX bytes for the later steps (``ctx.outputs["onnx"]``; None when the export
or its parity failed): INT8 and TensorRT start from them. Export and parity:
:mod:`raytune_opt.promote.export`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raytune_opt import registry

if TYPE_CHECKING:
    from raytune_opt.promote.context import StepContext

__all__ = ["onnx"]

registry.PROMOTION_STEPS.register(
    "onnx", f"{__name__}:onnx", doc="ONNX export (dynamic batch axis), parity against PyTorch, latency on ONNX Runtime",
    order=30, needs=())


def onnx(ctx: StepContext) -> None:
    """ONNX export traced with the data set's input example, parity against PyTorch, latency."""
    from raytune_opt import progress

    with progress.step("onnx: exporting, checking parity, measuring latency"):
        ctx.leave("onnx", _export(ctx))


def _export(ctx: StepContext) -> bytes | None:
    """Export (traced with the data set's ``input_example``: its shape and dtype) and check
    parity; the ONNX bytes, or None when the export failed either way."""
    import torch

    from raytune_opt.promote import export, measure

    path = ctx.out_dir / "model.onnx"
    try:
        # Two rows, so the exporter keeps the batch axis dynamic (as validate --smoke exports).
        example = torch.from_numpy(measure.batch_of(ctx.data.input_example.numpy(), 2))
        data = export.export_onnx(ctx.model, example, path)
        runner = measure.ort_runner(measure.ort_session(path, ctx.threads))
        outputs = measure.predict(runner, ctx.x_val)
        par = export.parity(ctx.reference, outputs, float(ctx.promote["parity_atol"]), scaled=ctx.scorer.regression)
        latency = measure.latencies(runner, ctx.x_val)
        test = ctx.test_score(runner)
    except (RuntimeError, OSError, MemoryError, *measure.ort_errors()) as exc:
        # The exporter (torch.onnx's errors are RuntimeErrors) or ONNX Runtime refusing this model is
        # this artifact's failure, not the run's; a TypeError or KeyError is our bug and propagates.
        ctx.failed("onnx", exc)
        return None
    ctx.record("onnx", "ok" if par.ok else "failed", path=path, reason=par.reason,
               **ctx.scored(ctx.scorer.score(outputs, ctx.y_val), test), latency_ms=latency,
               runtime=f"onnxruntime cpu, {ctx.threads} threads", opset=export.OPSET, parity=par.as_dict())
    return data if par.ok else None
