"""Promotion end to end on a small trained digits experiment (no Ray, no GPU)."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from raytune_opt.cli import main
from raytune_opt.promote import measure, pipeline, promote
from raytune_opt.promote.select import sha256_file
from tests.promote.conftest import TRIAL, set_promote

MANIFEST_KEYS = {"format", "created", "status", "experiment", "source", "targets", "settings", "input", "versions",
                 "machine", "artifacts"}
ARTIFACT_KEYS = {"name", "status", "reason", "built", "path", "sha256", "size_bytes", "accuracy", "delta_points",
                 "latency_ms", "runtime"}


def _by_name(manifest: dict) -> dict:
    return {a["name"]: a for a in manifest["artifacts"]}


def _file(exp, rec):
    return exp / "promotion" / rec["path"]


def test_promote_builds_onnx_and_int8_within_gates_and_skips_tensorrt_without_gpu(experiment, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    monkeypatch.setitem(sys.modules, "ray", None)  # no Ray in this process, even after the slow tests started one
    assert main(["promote", str(experiment)]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((experiment / "promotion" / "manifest.json").read_text())

    # The manifest says where the model comes from and how it was built.
    assert set(manifest) == MANIFEST_KEYS and manifest["status"] == "ok"
    assert manifest["source"]["trial_id"] == TRIAL
    best = json.loads((experiment / "best.json").read_text())
    assert manifest["source"]["checkpoint"] == best["checkpoint"]
    assert manifest["source"]["spec_sha256"] == best["spec_sha256"]
    assert manifest["source"]["config"] == {"model.width": 16}
    versions = manifest["versions"]
    assert versions["tensorrt"] is None and all(versions[k] for k in ("torch", "onnx", "onnxruntime", "raytune_opt"))
    assert manifest["targets"] == ["onnx", "int8", "tensorrt"]

    arts = _by_name(manifest)
    assert list(arts) == ["pytorch", "onnx", "int8", "int8-tensorrt-qdq", "tensorrt"]
    for rec in manifest["artifacts"]:
        assert ARTIFACT_KEYS <= set(rec)
        if rec["path"] is not None:  # every file is on disk as recorded
            path = _file(experiment, rec)
            assert sha256_file(path) == rec["sha256"] and path.stat().st_size == rec["size_bytes"]

    fp32 = arts["pytorch"]["accuracy"]
    assert fp32 == pytest.approx(best["value"])  # the checkpoint scores what the sweep reported
    onnx_rec = arts["onnx"]
    assert onnx_rec["status"] == "ok" and onnx_rec["delta_points"] == 0.0
    par = onnx_rec["parity"]
    assert par["max_abs_diff"] <= par["atol"] == 1e-4 and par["top1_agreement"] == 1.0 and par["samples"] == 288
    for name in ("int8", "int8-tensorrt-qdq"):
        rec = arts[name]
        assert rec["status"] == "ok" and -rec["delta_points"] <= 1.0, rec
        assert rec["quantization"]["attempts"][0]["method"] == "minmax"
    for name in ("pytorch", "onnx", "int8"):
        lat = arts[name]["latency_ms"]
        assert set(lat) == {"batch_1", "batch_64"} and all(v["p50_ms"] > 0 for v in lat.values())
    # Every artifact is also scored on the test split (359 images no trial saw); the gates stay on validation.
    for name in ("pytorch", "onnx", "int8", "int8-tensorrt-qdq"):
        assert 0.8 < arts[name]["test_accuracy"] <= 1.0, arts[name]
    assert arts["onnx"]["test_accuracy"] == arts["pytorch"]["test_accuracy"]  # parity: the same predictions
    assert arts["tensorrt"].get("test_accuracy") is None  # skipped: nothing measured

    # TensorRT: one line, in the output and in the manifest.
    skip = arts["tensorrt"]
    assert skip["status"] == "skipped" and "no CUDA GPU" in skip["reason"]
    assert f"raytune-opt promote {experiment} --targets tensorrt" in skip["reason"]
    assert out.count("tensorrt: skipped") == 1 and skip["reason"] in " ".join(out.split())  # wrapped to 80 columns
    # The table: one row per artifact.
    table = out[out.index("artifact "):].splitlines()
    assert "val acc" in table[0] and "test acc" in table[0] and max(map(len, table[:6])) <= 80
    assert [line.split()[0] for line in table[1:6]] == list(arts)


def test_exported_onnx_has_a_dynamic_batch_axis_and_export_is_deterministic(experiment):
    from raytune_opt.promote.export import export_onnx
    from raytune_opt.recipe.checkpoint import load_model

    manifest = promote(experiment, targets="onnx")
    path = _file(experiment, _by_name(manifest)["onnx"])
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value
    session = measure.ort_session(path)
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    for batch in (1, 7, 64):
        assert session.run(None, {"input": x[:batch]})[0].shape == (batch, 10)
    model, _ = load_model(manifest["source"]["checkpoint"])
    import torch

    again = export_onnx(model, torch.from_numpy(x[:3]), experiment / "again.onnx")
    assert again == path.read_bytes()  # same weights, same bytes (even from another example batch)


def test_tensorrt_ready_qdq_is_symmetric_int8_with_float_bias_and_runs_in_ort(experiment):
    manifest = promote(experiment, targets="onnx,int8")
    rec = _by_name(manifest)["int8-tensorrt-qdq"]
    model = onnx.load(str(_file(experiment, rec)))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = model.graph.node
    qdq = [n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no Q/DQ nodes"
    for n in qdq:
        zero_point = inits[n.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), n.name  # symmetric S8
    dq_inputs = [inits[n.input[0]] for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert all(w.dtype == np.int8 for w in dq_inputs)  # no int32 bias: TensorRT refuses it
    weight_dq = [n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dq and all(inits[n.input[1]].size > 1 for n in weight_dq)  # per-channel scales
    logits = measure.predict(measure.ort_runner(measure.ort_session(_file(experiment, rec))),
                             np.zeros((5, 1, 8, 8), np.float32))
    assert logits.shape == (5, 10) and np.isfinite(logits).all()


def test_gate_rejects_a_broken_calibration_after_trying_every_method(experiment, monkeypatch, capsys):
    # Calibrating on zeros collapses every activation range: INT8 cannot be accurate.
    monkeypatch.setattr(pipeline, "calibration_batches",
                        lambda x, bs, n, seed: [np.zeros((bs, *x.shape[1:]), np.float32)] * 2)
    set_promote(experiment, int8_calibration_method="entropy")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)  # a terminal: progress shows
    assert main(["promote", str(experiment), "--targets", "onnx,int8"]) == 0  # a rejection is not an error
    arts = _by_name(json.loads((experiment / "promotion" / "manifest.json").read_text()))
    for name in ("int8", "int8-tensorrt-qdq"):
        rec = arts[name]
        assert rec["status"] == "rejected" and "max_accuracy_drop=1" in rec["reason"]
        attempts = rec["quantization"]["attempts"]
        assert [a["method"] for a in attempts] == ["entropy", "minmax", "percentile"]
        assert not any(a["passed"] for a in attempts) and all(a["delta_points"] < -1 for a in attempts)
        kept = max(attempts, key=lambda a: a["accuracy"])
        assert rec["accuracy"] == kept["accuracy"] and _file(experiment, rec).is_file()  # kept, marked rejected
    out = capsys.readouterr().out
    assert "int8: rejected — accuracy gate" in out
    for i, method in enumerate(["entropy", "minmax", "percentile"], 1):  # each attempt shows while it runs
        assert f"\rint8: calibrating with {method} ({i} of 3), scoring…" in out
    assert "\ronnx: exporting, checking parity, measuring latency…" in out


def test_a_calibration_method_that_raises_is_recorded_and_the_next_one_tried(experiment, monkeypatch):
    from raytune_opt.promote import quantize as q

    real = q.quantize

    def entropy_breaks(pre, out, batches, method, *args, **kwargs):
        if method == "entropy":  # as ONNX Runtime's did on a merged BERT
            raise ValueError("Too many bins for data range")
        return real(pre, out, batches, method, *args, **kwargs)

    monkeypatch.setattr(q, "quantize", entropy_breaks)
    set_promote(experiment, int8_calibration_method="entropy")
    arts = _by_name(promote(experiment, targets="onnx,int8"))
    rec = arts["int8"]
    assert rec["status"] == "ok" and rec["quantization"]["calibration_method"] == "minmax", rec
    assert rec["quantization"]["failed_methods"] == [{"method": "entropy", "error": "Too many bins for data range"}]
    assert [a["method"] for a in rec["quantization"]["attempts"]] == ["minmax"]

    def every_method_breaks(*args, **kwargs):
        raise ValueError("Too many bins for data range")

    monkeypatch.setattr(q, "quantize", every_method_breaks)
    rec = _by_name(promote(experiment, targets="onnx,int8"))["int8"]
    assert rec["status"] == "failed" and "Too many bins for data range" in rec["reason"], rec


def test_int8_falls_back_to_the_loops_smaller_operator_set_when_no_method_passes(experiment, monkeypatch):
    """A loop's int8_fallback_op_types (hf_trainer: the matrix products without the embedding
    lookup) are tried in order when every calibration method fails the gate with its
    int8_op_types; the manifest says which operators the kept model quantized. Here the built-in
    loop gets both sets for the test, and the first set's INT8 model is made to lose (its
    logits rolled by one class, at scoring): the quantization itself is ONNX Runtime's."""
    import numpy as np

    from raytune_opt import registry
    from raytune_opt.promote import measure
    from raytune_opt.promote import quantize as q

    entry = registry.LOOPS["builtin"]
    monkeypatch.setitem(entry.meta, "int8_op_types", ("Conv", "Gemm"))
    monkeypatch.setitem(entry.meta, "int8_fallback_op_types", (("Gemm",),))
    real_quantize, real_predict, last = q.quantize, measure.predict, {}

    def quantize(pre, out, batches, method, flavor, op_types=None):
        last["ops"] = tuple(op_types or ())
        return real_quantize(pre, out, batches, method, flavor, op_types)

    def predict(run, x, *args, **kwargs):
        logits = real_predict(run, x, *args, **kwargs)
        return np.roll(logits, 1, axis=1) if last.pop("ops", None) == ("Conv", "Gemm") else logits

    monkeypatch.setattr(q, "quantize", quantize)
    monkeypatch.setattr(measure, "predict", predict)
    rec = _by_name(promote(experiment, targets="onnx,int8"))["int8"]
    quant = rec["quantization"]
    assert rec["status"] == "ok" and quant["op_types"] == ["Gemm"], rec
    first = [a for a in quant["attempts"] if "op_types" not in a]
    assert [a["method"] for a in first] == ["minmax", "entropy", "percentile"] and not any(a["passed"] for a in first)
    assert quant["attempts"][-1] == {**quant["attempts"][-1], "op_types": ["Gemm"], "passed": True}

    # No set passes (the fallback loses too): rejected, the reason naming each attempt's operators.
    monkeypatch.setitem(entry.meta, "int8_fallback_op_types", (("Conv", "Gemm"),))
    rec = _by_name(promote(experiment, targets="onnx,int8"))["int8"]
    assert rec["status"] == "rejected" and len(rec["quantization"]["attempts"]) == 6, rec
    assert "with every calibration method (minmax " in rec["reason"] and "minmax on Conv/Gemm " in rec["reason"], rec


def test_failed_parity_is_an_error_after_the_manifest_is_written(experiment, capsys):
    set_promote(experiment, parity_atol=1e-12)
    assert main(["promote", str(experiment), "--targets", "onnx,int8"]) == 1
    err = capsys.readouterr().err
    manifest = json.loads((experiment / "promotion" / "manifest.json").read_text())
    arts = _by_name(manifest)
    assert manifest["status"] == "failed" and arts["onnx"]["status"] == "failed"
    assert "parity failed: max |ONNX - PyTorch| logit difference" in arts["onnx"]["reason"]
    assert arts["int8"]["status"] == "skipped" and not (experiment / "promotion" / "model.int8.onnx").exists()
    assert "promotion failed (onnx)" in err and "Traceback" not in err


def test_targets_onnx_alone_builds_only_onnx(experiment):
    manifest = promote(experiment, targets=["onnx"])
    assert [a["name"] for a in manifest["artifacts"]] == ["pytorch", "onnx"]
    assert sorted(p.name for p in (experiment / "promotion").iterdir()) == ["manifest.json", "model.onnx"]


def test_a_later_promotion_keeps_the_unchanged_artifacts_of_the_same_checkpoint(experiment):
    first = _by_name(promote(experiment, targets="onnx,int8"))
    second = _by_name(promote(experiment, targets="onnx"))  # e.g. later, '--targets tensorrt' on a GPU node
    assert list(second) == ["pytorch", "onnx", "int8", "int8-tensorrt-qdq"]
    assert second["int8"] == first["int8"] and second["onnx"]["sha256"] == first["onnx"]["sha256"]
    _file(experiment, first["int8"]).write_bytes(b"tampered")
    assert "int8" not in _by_name(promote(experiment, targets="onnx"))  # a changed file is not vouched for


def test_a_cnn1d_for_signals_exports_with_a_dynamic_batch_and_matches_pytorch(tmp_path):
    import torch

    from raytune_opt.promote.export import export_onnx, parity
    from raytune_opt.recipe.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "cnn1d", "width": 8, "depth": 3, "kernel_size": 5}, 1, 10, 40, spatial_dims=1)
    x = np.random.default_rng(0).standard_normal((64, 1, 40)).astype(np.float32)
    path = tmp_path / "cnn1d.onnx"
    export_onnx(model, torch.from_numpy(x[:2]), path)
    shape = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert shape[0].dim_param and [d.dim_value for d in shape[1:]] == [1, 40]
    session = measure.ort_session(path)
    for batch in (1, 7):
        assert session.run(None, {"input": x[:batch]})[0].shape == (batch, 10)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    assert parity(ref, session.run(None, {"input": x})[0], atol=1e-4).ok
    # The manifest describes the input as signals.
    from raytune_opt.recipe.data import Data

    data = Data(x_train=torch.zeros(4, 1, 40), y_train=torch.zeros(4, dtype=torch.long), x_val=torch.zeros(2, 1, 40),
                y_val=torch.zeros(2, dtype=torch.long), num_classes=10, in_channels=1, image_size=40,
                class_names=tuple("0123456789"), mean=(0.0,), std=(1.0,))
    described = pipeline._inputs(data.to_bundle())
    assert described["shape"] == ["batch", 1, 40] and described["layout"] == "NCL"
