"""The best trial measured once on the test split after the sweep (raytune_opt.heldout), without Ray."""

from __future__ import annotations

import json
import shutil

import pytest

from raytune_opt import heldout
from tests.promote.conftest import DIGITS, trained_experiment


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One digits trial, two epochs, as a sweep leaves it (best.json written, no test record yet)."""
    root = tmp_path_factory.mktemp("heldout")
    exp, _ = trained_experiment(root, DIGITS, ["train.epochs=2", "scheduler.grace_period=1", "model.width=8"], {"model.width": 8})
    return exp


def _copy(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(trained.parent / "data_cache"))
    exp = tmp_path / "exp"
    shutil.copytree(trained, exp)
    best = json.loads((exp / "best.json").read_text())
    best["checkpoint"] = best["checkpoint"].replace(str(trained), str(exp))
    (exp / "best.json").write_text(json.dumps(best))
    return exp


def test_the_best_trial_is_measured_once_on_the_test_split_into_best_json(trained, tmp_path, monkeypatch):
    from raytune_opt.recipe.bundle import load_bundle
    from raytune_opt.recipe.checkpoint import load_model
    from raytune_opt.recipe.loop import split_metrics

    exp = _copy(trained, tmp_path, monkeypatch)
    test = heldout.record(exp, seed=0)
    best = json.loads((exp / "best.json").read_text())
    assert best["test"] == test and test["trial_id"] == best["trial_id"] and test["samples"] == 359
    assert set(test["metrics"]) == {"test_accuracy", "test_precision", "test_recall", "test_f1", "test_loss"}
    assert 0.3 < test["metrics"]["test_accuracy"] <= 1
    # The loop's own validation figures, measured the same way, are what the trial reported.
    model, ckpt = load_model(best["checkpoint"])
    val = split_metrics(model, load_bundle(ckpt["recipe"]["data"], 0), "val", "val_")
    assert val["val_accuracy"] == pytest.approx(best["metrics"]["val_accuracy"]) and val["samples"] == 288


def test_no_test_split_and_a_failed_measurement_leave_best_json_saying_so(trained, tmp_path, monkeypatch, capsys):
    exp = _copy(trained, tmp_path, monkeypatch)
    monkeypatch.setattr(heldout, "measure", lambda *a, **k: None)  # a data set without a test split
    assert heldout.record(exp, seed=0) is None and json.loads((exp / "best.json").read_text())["test"] is None

    def broken(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(heldout, "measure", broken)
    before = (exp / "best.json").read_text()
    assert heldout.record(exp, seed=0) == {"failed": "RuntimeError: disk on fire"}
    err = capsys.readouterr().err
    assert "warning: the best trial could not be measured on the test split (RuntimeError: disk on fire)" in err
    assert (exp / "best.json").read_text() == before  # the sweep's results stay as written
