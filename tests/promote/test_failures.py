"""What a failing step leaves behind: an artifact marked failed with its traceback, or, for our
own bugs, the exception itself; and the settings the measurements ran with."""

from __future__ import annotations

import json
import types

import pytest

from raytune_opt.promote import export, measure, promote, tensorrt
from raytune_opt.promote.errors import ArtifactError
from tests.promote.conftest import set_promote


def _exporter_raising(exc: Exception):
    def broken(*args, **kwargs):
        raise exc
    return broken


def test_an_exporter_failure_is_recorded_with_its_traceback(experiment, monkeypatch):
    monkeypatch.setattr(export, "export_onnx", _exporter_raising(RuntimeError("the exporter cannot lower aten::foo")))
    manifest = promote(experiment, targets="onnx,int8")
    arts = {a["name"]: a for a in manifest["artifacts"]}
    assert manifest["status"] == "failed"
    assert arts["onnx"]["status"] == "failed"
    assert arts["onnx"]["reason"] == "RuntimeError: the exporter cannot lower aten::foo"
    assert arts["onnx"]["traceback"].startswith("Traceback (most recent call last):")
    assert "in broken" in arts["onnx"]["traceback"]
    assert arts["int8"]["status"] == "skipped"
    on_disk = json.loads((experiment / "promotion" / "manifest.json").read_text())
    assert {a["name"]: a for a in on_disk["artifacts"]}["onnx"]["traceback"] == arts["onnx"]["traceback"]


def test_a_bug_in_our_code_is_not_turned_into_a_failed_artifact(experiment, monkeypatch):
    monkeypatch.setattr(export, "export_onnx", _exporter_raising(TypeError("export_onnx() got an unexpected keyword")))
    with pytest.raises(TypeError, match="unexpected keyword"):
        promote(experiment, targets="onnx")


@pytest.mark.parametrize("setting, expected", [(1, 1), (None, measure.machine_threads())])
def test_ort_threads_is_a_setting_recorded_in_the_manifest(experiment, monkeypatch, setting, expected):
    set_promote(experiment, ort_threads=setting)
    sessions = []
    real = measure.ort_session
    monkeypatch.setattr(measure, "ort_session", lambda path, threads=None: sessions.append(threads) or real(path, threads))
    manifest = promote(experiment, targets="onnx")
    assert manifest["settings"]["ort_threads"] == expected
    arts = {a["name"]: a for a in manifest["artifacts"]}
    assert arts["onnx"]["runtime"] == f"onnxruntime cpu, {expected} threads"
    assert sessions == [expected]


def test_an_experiment_of_an_older_version_without_ort_threads_uses_the_machine(experiment):
    import yaml

    spec = yaml.safe_load((experiment / "spec.yaml").read_text())
    spec["promote"].pop("ort_threads", None)
    (experiment / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert promote(experiment, targets="onnx")["settings"]["ort_threads"] == measure.machine_threads()


class _FakeRay:
    """ray.remote/get/cancel over a task that never finishes (or whose node dies)."""

    def __init__(self, error):
        from ray import exceptions

        self.exceptions, self.error, self.cancelled = exceptions, error, False

    def remote(self, **options):
        return lambda fn: types.SimpleNamespace(remote=lambda *a: "ref")

    def get(self, ref, timeout):
        raise self.error

    def cancel(self, ref, force):
        self.cancelled = True


@pytest.mark.parametrize("error, fragment", [
    ("timeout", f"did not finish in {tensorrt.TASK_TIMEOUT_S} s; check that a GPU node is free"),
    ("node", "the TensorRT task was lost (NodeDiedError"),
])
def test_a_cluster_task_that_times_out_or_is_lost_is_an_artifact_error(monkeypatch, error, fragment):
    import sys

    from ray import exceptions as rex

    exc = rex.GetTimeoutError("timed out") if error == "timeout" else rex.NodeDiedError("node 1 died")
    fake = _FakeRay(exc)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(ArtifactError, match=fragment.replace("(", r"\(")):
        tensorrt.build(tensorrt.Placement("cluster"), b"onnx", None, None, None, measure.Scorer("accuracy", 1.0))
    assert fake.cancelled == (error == "timeout")


def test_a_tensorrt_timeout_fails_that_artifact_only(experiment, monkeypatch):
    def timed_out(*args):
        raise ArtifactError("the TensorRT task did not finish in 1800 s; check that a GPU node is free")

    monkeypatch.setattr(tensorrt, "placement", lambda address, exp_dir: tensorrt.Placement("cluster"))
    monkeypatch.setattr(tensorrt, "build", timed_out)
    arts = {a["name"]: a for a in promote(experiment, targets="onnx,tensorrt")["artifacts"]}
    assert arts["onnx"]["status"] == "ok"
    assert arts["tensorrt"]["status"] == "failed" and arts["tensorrt"]["reason"].startswith("ArtifactError: the TensorRT")
    assert "timed_out" in arts["tensorrt"]["traceback"]


def _engine_runs_failing_with(monkeypatch, exc):
    import torch

    fake_trt = types.SimpleNamespace(__version__="10.9.0")
    monkeypatch.setattr(tensorrt, "is_available", lambda module: True)
    monkeypatch.setattr(tensorrt, "require", lambda module, what: fake_trt)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "a fake GPU")
    monkeypatch.setattr(tensorrt, "build_engine", lambda trt, onnx, precision: b"PLAN")

    def runner(trt, plan):
        raise exc
    monkeypatch.setattr(tensorrt, "EngineRunner", runner)


def test_an_engine_failure_keeps_the_other_engine_and_its_traceback(monkeypatch):
    import numpy as np

    _engine_runs_failing_with(monkeypatch, RuntimeError("CUDA out of memory"))
    out = tensorrt.build_and_measure(b"fp32", b"qdq", np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, np.int64),
                                     measure.Scorer("accuracy", 1.0))
    assert set(out["engines"]) == {"tensorrt-fp16", "tensorrt-int8"}
    for eng in out["engines"].values():
        assert eng["status"] == "failed" and eng["reason"] == "RuntimeError: CUDA out of memory"
        assert "in runner" in eng["traceback"]


def test_a_bug_while_building_engines_propagates(monkeypatch):
    import numpy as np

    _engine_runs_failing_with(monkeypatch, KeyError("plan"))
    with pytest.raises(KeyError):
        tensorrt.build_and_measure(b"fp32", None, np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, np.int64),
                                   measure.Scorer("accuracy", 1.0))
