"""`raytune-opt run` promotes its best trial at the end (a real sweep on embedded Ray: slow)."""

from __future__ import annotations

import json

import pytest

from raytune_opt.cli import main
from tests.promote.conftest import DIGITS

pytestmark = pytest.mark.slow


def test_run_ends_with_promotion_and_the_cluster_has_no_gpu(local_ray, tmp_path, capsys, monkeypatch):
    from raytune_opt.promote import measure

    monkeypatch.setattr(measure, "LATENCY_BUDGET_S", 0.01)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if local_ray.cluster_resources().get("GPU", 0):
        pytest.skip("the local Ray has a GPU: the skip line is not what happens here")
    rc = main(["run", str(DIGITS), "train.epochs=2", "train.limit_batches=6", "search.num_samples=2",
               "scheduler={name: fifo}", "promote.targets=[onnx, int8, tensorrt]", "name=r",
               "--storage", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    manifest = json.loads((tmp_path / "r" / "promotion" / "manifest.json").read_text())
    best = json.loads((tmp_path / "r" / "best.json").read_text())
    assert manifest["source"]["trial_id"] == best["trial_id"]
    arts = {a["name"]: a for a in manifest["artifacts"]}
    # The spec's gate (promote.int8.max_accuracy_drop: 1 point) passes for this model: INT8 must be ok.
    assert arts["onnx"]["status"] == "ok" and arts["int8"]["status"] == "ok", arts["int8"]["reason"]
    assert -arts["int8"]["delta_points"] <= 1.0
    assert arts["tensorrt"]["status"] == "skipped"
    assert arts["tensorrt"]["reason"].startswith("no GPU in the cluster; run 'raytune-opt promote")
    assert out.count("tensorrt: skipped — no GPU in the cluster") == 1 and "p50@64 ms" in out
