"""TensorRT: where engines are built, the skip without a GPU, and real engines where both exist."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest

from raytune_opt.promote import tensorrt


def test_no_gpu_and_no_cluster_skips_without_starting_ray(monkeypatch):
    import torch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "ray", None)  # a fresh process, and `import ray` would fail
    place = tensorrt.placement(None, "/x/exp")
    assert place.where == "skip" and not place.joined
    assert place.reason == ("no CUDA GPU on this machine and no Ray cluster given (--address or RAY_ADDRESS); "
                            "run 'raytune-opt promote /x/exp --targets tensorrt' where one is")


def test_a_cluster_without_gpus_skips(monkeypatch):
    fake = types.SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 8.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    place = tensorrt.placement(None, "/x/exp")
    assert place.where == "skip" and place.reason.startswith("no GPU in the cluster; run 'raytune-opt promote")
    fake.cluster_resources = lambda: {"CPU": 8.0, "GPU": 1.0}
    assert tensorrt.placement(None, "/x/exp").where == "cluster"


def test_a_gpu_without_tensorrt_skips(monkeypatch):
    import torch

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr(tensorrt, "is_available", lambda module: False)
    place = tensorrt.placement(None, "/x/exp")
    assert place.where == "skip" and "TensorRT is not installed (pip install 'raytune-opt[tensorrt]')" in place.reason


class _FakeTensorRT:
    """Just enough of the TensorRT 10 builder API to see what build_engine asks of it."""

    __version__ = "10.9.0"

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    class BuilderFlag:
        FP16 = "FP16"

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    def __init__(self, parse_ok=True):
        self.parse_ok, self.calls = parse_ok, {}
        fake = self

        class Input:
            name, shape = "input", (-1, 1, 8, 8)

        class Network:
            num_inputs = 1

            def get_input(self, i):
                return Input()

        class Config:
            def __init__(self):
                fake.calls["flags"], fake.calls["profiles"] = [], []

            def set_flag(self, flag):
                fake.calls["flags"].append(flag)

            def add_optimization_profile(self, profile):
                fake.calls["profiles"].append(profile.shapes)

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls["network_flags"] = flags
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"PLAN"

        class OnnxParser:
            num_errors = 1

            def __init__(self, network, logger):
                pass

            def parse(self, data):
                return fake.parse_ok

            def get_error(self, i):
                return "In node 3 (importDequantizeLinear): UNSUPPORTED_NODE"

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_int8_engine_is_strongly_typed_explicit_quantization_with_a_batch_profile():
    trt = _FakeTensorRT()
    assert tensorrt.build_engine(trt, b"onnx", "int8") == b"PLAN"
    assert trt.calls["network_flags"] == 1 << 1 and trt.calls["flags"] == []  # no precision flags, no calibrator
    assert trt.calls["profiles"] == [{"input": ((1, 1, 8, 8), (64, 1, 8, 8), (64, 1, 8, 8))}]
    tensorrt.build_engine(trt, b"onnx", "fp16")
    assert trt.calls["network_flags"] == 0 and trt.calls["flags"] == ["FP16"]


def test_engine_build_errors_say_why():
    with pytest.raises(RuntimeError, match="parser refused the int8 model: In node 3"):
        tensorrt.build_engine(_FakeTensorRT(parse_ok=False), b"onnx", "int8")
    trt11 = _FakeTensorRT()
    trt11.BuilderFlag = type("BuilderFlag", (), {})
    with pytest.raises(RuntimeError, match="no FP16 builder flag"):
        tensorrt.build_engine(trt11, b"onnx", "fp16")


def test_engines_from_the_gpu_are_written_gated_and_recorded(experiment, monkeypatch):
    from raytune_opt.promote import promote

    seen = {}

    def fake_build_and_measure(onnx_fp32, onnx_qdq, x_val, y_val, scorer, test=None):
        seen.update(fp32=onnx_fp32, qdq=onnx_qdq, n=len(x_val), metric=scorer.metric, n_test=len(test[1]))
        lat = {"batch_1": {"p50_ms": 0.1, "p95_ms": 0.2, "runs": 100}, "batch_64": {"p50_ms": 0.3, "p95_ms": 0.4,
                                                                                     "runs": 100}}
        return {"tensorrt_version": "10.9.0", "device": "NVIDIA H100", "engines": {
            "tensorrt-fp16": {"status": "ok", "plan": b"fp16 plan", "score": 0.9, "test_score": 0.875, "latency_ms": lat},
            "tensorrt-int8": {"status": "ok", "plan": b"int8 plan", "score": 0.1, "latency_ms": lat}}}

    monkeypatch.setattr(tensorrt, "placement", lambda address, exp_dir: tensorrt.Placement("local"))
    monkeypatch.setattr(tensorrt, "build_and_measure", fake_build_and_measure)
    manifest = promote(experiment, targets="tensorrt")
    arts = {a["name"]: a for a in manifest["artifacts"]}
    assert list(arts) == ["pytorch", "onnx", "int8-tensorrt-qdq", "tensorrt-fp16", "tensorrt-int8"]
    promo = experiment / "promotion"
    assert seen["fp32"] == (promo / "model.onnx").read_bytes() and seen["n"] == 288 and seen["metric"] == "accuracy"
    assert seen["n_test"] == 359  # the engines are scored on the test split too
    assert seen["qdq"] == (promo / arts["int8-tensorrt-qdq"]["path"]).read_bytes()
    fp16, int8 = arts["tensorrt-fp16"], arts["tensorrt-int8"]
    assert (promo / fp16["path"]).read_bytes() == b"fp16 plan" and fp16["runtime"] == "tensorrt 10.9.0 on NVIDIA H100"
    assert fp16["status"] == ("ok" if -fp16["delta_points"] <= 1.0 else "rejected")
    assert int8["status"] == "rejected" and "accuracy gate" in int8["reason"]
    assert fp16["test_accuracy"] == 0.875 and int8["test_accuracy"] is None  # what the GPU node measured
    assert manifest["versions"]["tensorrt"] == "10.9.0"


def _gpu_and_tensorrt() -> bool:
    import torch

    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_and_tensorrt(), reason="needs a CUDA GPU and TensorRT (pip install 'raytune-opt[tensorrt]')")
def test_tensorrt_engines_build_run_and_pass_the_gate(experiment):
    from raytune_opt.promote import promote

    manifest = promote(experiment, targets="tensorrt")
    arts = {a["name"]: a for a in manifest["artifacts"]}
    assert manifest["versions"]["tensorrt"]
    for name in ("tensorrt-fp16", "tensorrt-int8"):
        rec = arts[name]
        assert rec["status"] == "ok", rec
        assert (experiment / "promotion" / rec["path"]).stat().st_size == rec["size_bytes"]
        assert -rec["delta_points"] <= 1.0
        assert {k: v["p50_ms"] > 0 for k, v in rec["latency_ms"].items()} == {"batch_1": True, "batch_64": True}
    assert json.loads((experiment / "promotion" / "manifest.json").read_text())["status"] == "ok"


def test_a_later_skip_does_not_erase_engines_built_on_a_gpu_node():
    from raytune_opt.promote.manifest import merge

    engines = [{"name": "onnx"}, {"name": "tensorrt-fp16"}, {"name": "tensorrt-int8"}]
    skip = [{"name": "onnx", "new": True}, {"name": "tensorrt", "status": "skipped"}]
    assert [a["name"] for a in merge(engines, skip)] == ["onnx", "tensorrt-fp16", "tensorrt-int8"]
    assert merge(engines, skip)[0]["new"]
    assert [a["name"] for a in merge(skip, engines)] == ["onnx", "tensorrt-fp16", "tensorrt-int8"]
