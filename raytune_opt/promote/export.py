"""ONNX export with a dynamic batch axis, and the parity check against PyTorch."""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raytune_opt import _atomic

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Pinned rather than the exporter's default, so a torch upgrade does not silently change the
# artifact; 20 is the newest opset TensorRT 10.0's ONNX parser accepts.
OPSET = 20


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str | Path) -> bytes:
    """Export ``model`` (eval mode, CPU) to ONNX at ``path`` with a dynamic batch axis.

    The dynamo exporter with a pinned opset is deterministic: the same weights give the
    same bytes. The file is written atomically.

    Args:
        model: the network; it is put in eval mode.
        example: a batch of real inputs (at least 2 rows, so the batch axis is not
            specialized to a constant 1).

    Returns:
        The ONNX bytes that were written.
    """
    assert example.shape[0] >= 2, "a batch of 1 would let the exporter specialize the batch axis"
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1)
    # The exporter prints graphs and logs warnings of its own (more when it fails): its
    # exception says what matters, and the promotion's or the smoke test's line says it.
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp, quiet[0], quiet[1]:
        program = torch.onnx.export(model, (example.cpu(),), dynamo=True, opset_version=OPSET, optimize=True,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), verbose=False)
        tmp_path = Path(tmp) / "model.onnx"
        program.save(tmp_path, external_data=False)
        data = tmp_path.read_bytes()
    _atomic.write_bytes(path, data)
    return data


@dataclass(frozen=True)
class Parity:
    """How closely the ONNX model reproduces PyTorch on the validation set."""

    max_abs_diff: float
    top1_agreement: float
    agreement_required: float
    atol: float
    samples: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol and self.top1_agreement >= self.agreement_required

    @property
    def reason(self) -> str:
        if self.max_abs_diff > self.atol:
            return (f"parity failed: max |ONNX - PyTorch| logit difference {self.max_abs_diff:.3g} > "
                    f"promote.parity_atol {self.atol:g}")
        if self.top1_agreement < self.agreement_required:
            return (f"parity failed: top-1 agreement {self.top1_agreement:.4%} < required "
                    f"{self.agreement_required:.4%}")
        return ""

    def as_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "agreement_required": self.agreement_required, "atol": self.atol, "samples": self.samples}


def parity(reference: np.ndarray, candidate: np.ndarray, atol: float, *, scaled: bool = False) -> Parity:
    """Compare ``candidate`` logits with PyTorch's ``reference`` logits.

    ``scaled`` (a regression's outputs, in the target's own unit): the tolerance is ``atol``
    times the largest |reference| output when that exceeds 1, since float32 rounding alone
    grows with the size of the numbers (diabetes outputs around 150 differed by 4.6e-5).
    Logits keep the absolute tolerance.

    The agreement tolerance is not a guess: if every logit is within ``atol``, the top-1
    class can only change on a sample whose PyTorch top-2 margin is at most ``2 * atol``.
    The fraction of such near-ties is the disagreement we allow; every other flip fails.
    """
    assert reference.shape == candidate.shape, (reference.shape, candidate.shape)
    if scaled:
        atol = atol * max(1.0, float(np.max(np.abs(reference))) if reference.size else 1.0)
    diff = float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))
    agree = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else np.zeros((len(reference), 2))
    near_ties = float(np.mean((top2[:, 1] - top2[:, 0]) <= 2 * atol))
    return Parity(max_abs_diff=diff, top1_agreement=agree, agreement_required=1.0 - near_ties, atol=float(atol),
                  samples=int(len(reference)))
