"""The training loop on a CUDA GPU: fp16 (autocast + GradScaler), bf16 and fp32, with
checkpoints that load on a CPU-only machine and an ONNX export of a GPU-trained model."""

from __future__ import annotations

import math

import pytest
import torch

from raytune_opt.recipe.checkpoint import BEST, load_checkpoint, load_model
from raytune_opt.recipe.data import load_data
from raytune_opt.recipe.loop import METRIC_KEYS, train
from raytune_opt.recipe.session import LocalSession

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _cfg(precision: str, model: dict | None = None, **train_cfg) -> dict:
    return {"seed": 0, "data": {"dataset": "digits"}, "model": model or {"name": "small_cnn", "width": 32},
            "train": {"epochs": 4, "batch_size": 64, "checkpoint": True, "precision": precision,
                      "optimizer": {"name": "adamw", "lr": 3e-3}, **train_cfg},
            "search": {"metric": "val_accuracy", "mode": "max"}}


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_digits_train_on_the_gpu_and_the_checkpoint_loads_on_cpu(tmp_path, precision):
    session = LocalSession(str(tmp_path), device="cuda")
    final = train(_cfg(precision), session)
    assert [r["epoch"] for r in session.reports] == [1, 2, 3, 4]
    assert all(math.isfinite(r[k]) for r in session.reports for k in METRIC_KEYS)
    assert final["val_accuracy"] >= 0.93, final
    # Written on the GPU, read on a CPU-only machine with weights_only=True: every tensor on CPU.
    ckpt = load_checkpoint(tmp_path / BEST, map_location="cpu")
    assert all(t.device.type == "cpu" for t in ckpt["model_state"].values())
    model, _ = load_model(tmp_path / BEST)
    data = load_data({"dataset": "digits", "test_fraction": 0.2}, 0)  # split as the trials split it
    with torch.no_grad():
        accuracy = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    # fp32 on the CPU vs the reported (autocast on the GPU) accuracy: at most one or two images apart.
    assert accuracy == pytest.approx(final["best_val_accuracy"], abs=2.5 / len(data.y_val) + 1e-9)


def test_fp16_with_gradient_accumulation_and_clipping_stays_finite(tmp_path):
    session = LocalSession(str(tmp_path), device="cuda")
    final = train(_cfg("fp16", grad_accum_steps=2, grad_clip_norm=1.0, epochs=3), session)
    assert final["val_accuracy"] >= 0.9 and all(math.isfinite(r["grad_norm"]) for r in session.reports)


def test_a_gpu_trained_model_exports_to_onnx_with_parity(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from raytune_opt.promote import export

    train(_cfg("bf16", epochs=2), LocalSession(str(tmp_path), device="cuda"))
    model, _ = load_model(tmp_path / BEST)
    data = load_data({"dataset": "digits", "test_fraction": 0.2}, 0)  # split as the trials split it
    x = data.x_val[:64]
    onnx_bytes = export.export_onnx(model, x[:8], tmp_path / "model.onnx")
    sess = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert abs(got - ref).max() < 1e-4
