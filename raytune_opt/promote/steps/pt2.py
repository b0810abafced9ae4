"""The ``pt2`` promotion step: ``model.pt2``, a ``torch.export`` program of the model to convert
(the trial's, or the last compressed one its gate accepted), with a dynamic batch axis.

A PT2 archive is what PyTorch's own deployment paths start from: AOTInductor compiles it
ahead of time into a shared library (``torch._inductor.aoti_compile_and_package``), ExecuTorch
lowers it for phones and microcontrollers, and ``torch.export.load(path).module()`` runs it in
Python with no model code at all. The program is traced with the data set's input example (two
rows, so the batch axis stays dynamic, as the ONNX export does), saved, loaded back from the
file, and held to the ONNX step's standard: parity with PyTorch on the validation split within
``promote.parity_atol`` (a classification's top-1 may flip only on near-ties), its score on the
validation and test splits, its latency on this CPU. A model ``torch.export`` cannot trace is a
``failed`` record with the exporter's first line.

``torch.export.load`` unpickles: load a ``.pt2`` only from a source you trust, as any program.

This step was added as one file: its registration, its settings (none: it reads
``promote.parity_atol``) and its code are all here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raytune_opt import registry

if TYPE_CHECKING:
    from raytune_opt.promote.context import StepContext

__all__ = ["pt2"]

registry.PROMOTION_STEPS.register(
    "pt2", f"{__name__}:pt2", doc="torch.export program (model.pt2, dynamic batch axis; for AOTInductor and "
    "ExecuTorch), parity against PyTorch, latency", order=60, needs=(), by_default=False)


def pt2(ctx: StepContext) -> None:
    """Export, save, load back, check parity against PyTorch, score and time ``model.pt2``."""
    import io

    import torch

    from raytune_opt import _atomic, progress
    from raytune_opt.promote import export, measure

    path = ctx.out_dir / "model.pt2"
    with progress.step("pt2: exporting with torch.export, checking parity, measuring latency"):
        try:
            example = torch.from_numpy(measure.batch_of(ctx.data.input_example.numpy(), 2))
            with torch.no_grad():
                program = torch.export.export(ctx.model, (example,),
                                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
            _atomic.write_bytes(path, buffer.getvalue())
            module = torch.export.load(path).module()  # what a user loads: the file, not our program object

            def runner(x):
                with torch.no_grad():
                    return module(torch.from_numpy(x)).numpy()

            outputs = measure.predict(runner, ctx.x_val)
            par = export.parity(ctx.reference, outputs, float(ctx.promote["parity_atol"]),
                                scaled=ctx.scorer.regression)
            latency = measure.latencies(runner, ctx.x_val)
            test = ctx.test_score(runner)
        except (RuntimeError, OSError, MemoryError) as exc:
            # torch.export's errors (unsupported operators, data-dependent control flow) are
            # RuntimeErrors: this artifact's failure; anything else is our bug and propagates.
            ctx.failed("pt2", exc)
            return
    reason = ""
    if not par.ok:  # the parity check's reason names ONNX; this one is the exported program's
        reason = (f"parity failed: max |torch.export - PyTorch| output difference {par.max_abs_diff:.3g} > "
                  f"promote.parity_atol {par.atol:g}" if par.max_abs_diff > par.atol else
                  f"parity failed: top-1 agreement {par.top1_agreement:.4%} < required {par.agreement_required:.4%}")
    ctx.record("pt2", "ok" if par.ok else "failed", path=path, reason=reason,
               **ctx.scored(ctx.scorer.score(outputs, ctx.y_val), test), latency_ms=latency,
               runtime=f"torch {torch.__version__} torch.export program, cpu, {ctx.threads} threads",
               parity=par.as_dict())
