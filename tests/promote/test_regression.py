"""Promotion of a regression: the metric gate (a relative change vs fp32), parity of a (N, 1)
output, and the shipped diabetes example promoted end to end (no Ray, no GPU)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from raytune_opt.cli import main
from raytune_opt.promote import export, manifest, measure, pipeline
from raytune_opt.promote.measure import Scorer, scorer_for
from tests.promote.conftest import set_promote


# ---- the scorer and its gate --------------------------------------------------------------

def test_rmse_and_mae_gates_are_the_relative_increase():
    for metric in ("rmse", "mae"):
        gate = Scorer(metric, 0.05)
        assert gate.change(10.4, 10.0) == pytest.approx(0.04) and gate.passes(10.4, 10.0)
        assert gate.change(10.5, 10.0) == pytest.approx(0.05) and gate.passes(10.5, 10.0)  # the limit itself passes
        assert gate.change(10.6, 10.0) == pytest.approx(0.06) and not gate.passes(10.6, 10.0)
        assert gate.change(9.0, 10.0) == pytest.approx(-0.1) and gate.passes(9.0, 10.0)  # better always passes
        assert gate.rejection(10.4, 10.0) == ""
        assert gate.rejection(10.6, 10.0) == (f"metric gate: {metric} is 6.00% worse than fp32's > "
                                              f"promote.int8.max_relative_change=0.05 (relative)")


def test_the_r2_gate_is_the_relative_increase_of_the_unexplained_variance():
    gate = Scorer("r2", 0.05)
    # 1 - r2 goes from 0.2 to 0.21: 5 % more unexplained variance, at the limit.
    assert gate.change(0.79, 0.8) == pytest.approx(0.05) and gate.passes(0.79, 0.8)
    assert gate.change(0.78, 0.8) == pytest.approx(0.10) and not gate.passes(0.78, 0.8)
    assert gate.change(0.9, 0.8) == pytest.approx(-0.5) and gate.passes(0.9, 0.8)
    assert gate.change(-0.2, 0.0) == pytest.approx(0.2)  # r2 can go negative: 1 - r2 stays a ratio of SSEs
    assert "1 - r2 (the unexplained variance) is 10.00% worse" in gate.rejection(0.78, 0.8)
    assert gate.settings() == {"metric": "r2", "max_relative_change": 0.05,
                               "relative_change": "((1 - r2) - (1 - r2_fp32)) / (1 - r2_fp32)"}


def test_a_zero_gate_a_perfect_reference_and_a_nan_score():
    exact = Scorer("rmse", 0.0)
    assert exact.passes(2.0, 2.0) and not exact.passes(2.0 + 1e-6, 2.0)
    assert Scorer("rmse", 0.05).change(0.0, 0.0) == 0.0
    assert Scorer("rmse", 0.05).change(0.1, 0.0) == math.inf and not Scorer("rmse", 10.0).passes(0.1, 0.0)
    assert not Scorer("r2", 10.0).passes(float("nan"), 0.5)  # constant targets: never passes


def test_accuracy_keeps_its_gate_in_points():
    gate = Scorer("accuracy", 1.0)
    assert gate.change(0.985, 0.99) == pytest.approx(-0.5) and gate.passes(0.985, 0.99)
    assert not gate.passes(0.97, 0.99)
    assert gate.rejection(0.97, 0.99) == "accuracy gate: loses 2.00 points vs fp32 > promote.int8.max_accuracy_drop=1"


def test_scores_of_a_regression_output_match_scikit_learn():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(0)
    y = rng.normal(150, 70, 88).astype(np.float32)
    out = (y + rng.normal(0, 30, 88)).astype(np.float32).reshape(-1, 1)  # the model's (N, 1) output
    assert Scorer("rmse", 0.05).score(out, y) == pytest.approx(mean_squared_error(y, out[:, 0]) ** 0.5)
    assert Scorer("mae", 0.05).score(out, y) == pytest.approx(mean_absolute_error(y, out[:, 0]))
    assert Scorer("r2", 0.05).score(out, y) == pytest.approx(r2_score(y, out[:, 0]))


@pytest.mark.parametrize("task, metric, expected", [
    ("regression", "val_rmse", ("rmse", 0.1)), ("regression", "val_mae", ("mae", 0.1)),
    ("regression", "val_r2", ("r2", 0.1)), ("regression", "val_loss", ("rmse", 0.1)),
    ("classification", "val_f1", ("accuracy", 2.0)),
])
def test_the_scorer_follows_the_task_and_the_sweeps_metric(task, metric, expected):
    scorer = scorer_for(task, metric, {"max_accuracy_drop": 2.0, "max_relative_change": 0.1}, 0.05)
    assert (scorer.metric, scorer.limit) == expected
    # An experiment written before the key existed gets the schema's default.
    assert scorer_for("regression", metric, {"max_accuracy_drop": 2.0}, 0.05).limit == 0.05


def test_a_bad_scorer_says_what_it_got():
    with pytest.raises(ValueError, match="but got self.metric='mse'"):
        Scorer("mse", 0.05)
    with pytest.raises(ValueError, match="self.limit=-1"):
        Scorer("rmse", -1)


def test_parity_of_a_regression_output_scales_with_its_size():
    ref = np.array([[150.0], [25.5], [310.25]], np.float32)
    close = export.parity(ref, ref + np.float32(4e-5), atol=1e-4, scaled=True)
    assert close.ok and close.reason == "" and close.samples == 3
    # float32 rounding of outputs in the thousands: beyond an absolute 1e-4, within a scaled one
    big = ref * 100
    rounded = big + np.array([[0.0], [0.0], [2e-3]], np.float32)
    assert not export.parity(big, rounded, atol=1e-4).ok
    scaled = export.parity(big, rounded, atol=1e-4, scaled=True)
    assert scaled.ok and scaled.atol == pytest.approx(1e-4 * 31025.0)
    far = export.parity(ref, ref + np.array([[0.0], [0.1], [0.0]], np.float32), atol=1e-4, scaled=True)
    assert not far.ok and far.reason.startswith("parity failed: max |ONNX - PyTorch|")  # not a top-1 disagreement
    assert far.max_abs_diff == pytest.approx(0.1, rel=1e-3)
    small = np.array([[0.5], [-0.25]], np.float32)  # outputs below 1 keep the absolute tolerance
    assert export.parity(small, small + np.float32(2e-4), atol=1e-4, scaled=True).atol == pytest.approx(1e-4)


def test_a_classification_manifest_renders_as_it_always_has():
    arts = [manifest.artifact("pytorch", "ok", accuracy=0.99, fp32_accuracy=0.99),
            manifest.artifact("int8", "ok", accuracy=0.985, fp32_accuracy=0.99,
                              latency_ms={"batch_1": {"p50_ms": 0.04}, "batch_64": {"p50_ms": 0.9}})]
    assert "metric" not in arts[1] and arts[1]["delta_points"] == -0.5
    assert manifest.table({"artifacts": arts}).splitlines() == [
        "artifact           status    accuracy Δ vs fp32  p50@1 ms p50@64 ms      size",
        "pytorch            ok          99.00%     +0.00         -         -         -",
        "int8               ok          98.50%     -0.50     0.040     0.900         -"]


# ---- the diabetes example, end to end -------------------------------------------------------

def _arts(exp) -> tuple[dict, dict]:
    doc = json.loads((exp / "promotion" / "manifest.json").read_text())
    return doc, {a["name"]: a for a in doc["artifacts"]}


def test_the_diabetes_example_promotes_to_onnx_and_int8_behind_the_metric_gate(regression_experiment, capsys,
                                                                              monkeypatch):
    import onnx
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["promote", str(regression_experiment)]) == 0  # 1 only when an artifact failed
    out = capsys.readouterr().out
    doc, arts = _arts(regression_experiment)
    # The example asks for onnx and int8 (int8 also builds TensorRT's S8S8 form).
    assert doc["status"] == "ok" and list(arts) == ["pytorch", "onnx", "int8", "int8-tensorrt-qdq"]
    best = json.loads((regression_experiment / "best.json").read_text())
    assert best["metric"] == "val_rmse"
    for rec in arts.values():
        if rec["status"] == "skipped":
            continue
        assert rec["metric"] == "rmse" and math.isfinite(rec["score"]) and math.isfinite(rec["fp32_score"])
        assert rec["accuracy"] is None and rec["delta_points"] is None
        assert rec["fp32_score"] == pytest.approx(best["value"])  # the checkpoint scores what the sweep reported
        assert rec["relative_change"] == pytest.approx((rec["score"] - rec["fp32_score"]) / rec["fp32_score"],
                                                       abs=1e-6)
    parity = arts["onnx"]["parity"]
    assert arts["onnx"]["status"] == "ok" and parity["max_abs_diff"] <= parity["atol"]
    assert parity["atol"] > 1e-2  # 1e-4 scaled by the largest output (disease progression, in the hundreds)
    for name in ("int8", "int8-tensorrt-qdq"):
        rec = arts[name]
        assert rec["status"] == "ok" or "promote.int8.max_relative_change" in rec["reason"], rec
        assert set(rec["quantization"]["attempts"][0]) == {"method", "metric", "score", "relative_change", "passed"}
    assert doc["settings"]["gate"] == {"metric": "rmse", "max_relative_change": 0.05,
                                       "relative_change": "(rmse - rmse_fp32) / rmse_fp32"}
    # The input is the table's row of features, as the data set's input_example says.
    assert doc["input"]["shape"] == ["batch", 11] and doc["input"]["dtype"] == "float32"
    assert doc["input"]["class_names"] == []
    dims = onnx.load(str(regression_experiment / "promotion" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 11
    # The printed table names the metric instead of accuracy (the report's page: tests/test_report.py).
    table = out[out.index("artifact "):].splitlines()
    assert table[0].split()[:4] == ["artifact", "status", "val", "rmse"] and "test rmse" in table[0]
    assert all(a["test_score"] > 0 for a in doc["artifacts"] if a["name"] in ("pytorch", "onnx"))  # test rmse
    assert "onnx: ok — parity max |Δ|" in out and "top-1" not in out and "rmse +0.00% vs fp32" in out


def test_a_tight_gate_with_broken_calibration_rejects_int8_naming_the_relative_gate(regression_experiment,
                                                                                     monkeypatch, capsys):
    # Calibrating on zeros collapses every activation range: INT8 cannot match fp32.
    monkeypatch.setattr(pipeline, "calibration_batches",
                        lambda x, bs, n, seed: [np.zeros((bs, *x.shape[1:]), np.float32)] * 2)
    set_promote(regression_experiment, int8_max_relative_change=0.0)
    assert main(["promote", str(regression_experiment), "--targets", "onnx,int8"]) == 0  # a rejection is no error
    doc, arts = _arts(regression_experiment)
    assert doc["status"] == "ok" and arts["onnx"]["status"] == "ok"
    for name in ("int8", "int8-tensorrt-qdq"):
        rec = arts[name]
        assert rec["status"] == "rejected" and rec["relative_change"] > 0, rec
        assert rec["reason"].startswith("metric gate: INT8's rmse is worse than fp32's by more than "
                                        "promote.int8.max_relative_change=0 (relative) with every calibration method")
        attempts = rec["quantization"]["attempts"]
        assert [a["method"] for a in attempts] == ["minmax", "entropy", "percentile"]
        assert not any(a["passed"] for a in attempts)
        assert rec["score"] == min(a["score"] for a in attempts)  # the least bad is kept, marked rejected
    assert "int8: rejected — metric gate" in capsys.readouterr().out
