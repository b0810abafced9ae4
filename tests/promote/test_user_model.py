"""A user model by import path (the shipped example) trains, checkpoints itself, reloads
without the spec and promotes to ONNX."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.promote.conftest import REPO

EXAMPLES = REPO / "search_spaces" / "examples"
EXAMPLE = EXAMPLES / "digits_user_model.yaml"
TARGET = "user_models.nets:ResidualMLP"


@pytest.fixture(scope="module")
def user_experiment(tmp_path_factory):
    """STORAGE/NAME with one trial of the example's user model, 2 epochs, made without Ray."""
    from raytune_opt import _atomic, results
    from raytune_opt.recipe.loop import train
    from raytune_opt.recipe.session import LocalSession
    from raytune_opt.spec import load_spec

    root = tmp_path_factory.mktemp("user_model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYTUNE_OPT_CACHE", str(root / "data_cache"))
        spec = load_spec(EXAMPLE, ["name=exp", "train.epochs=2", "model.args.hidden=32", "model.args.blocks=1"])
        exp = root / "exp"
        ckpt_dir = exp / "trial_user0001" / "checkpoint_000001"
        session = LocalSession(checkpoint_dir=str(ckpt_dir), num_threads=1)
        previous = torch.get_num_threads()
        try:
            train(spec.data, session, spec_sha256=spec.sha256())
        finally:
            torch.set_num_threads(previous)
        metric, mode = spec.data["search"]["metric"], spec.data["search"]["mode"]
        history = session.reports
        row = results.TrialRow(trial_id="user0001", status="ok", stop_reason=history[-1]["stop_reason"],
                               config={"model.args.hidden": 32}, epochs=len(history), seconds=1.0,
                               train_seconds=1.0, best=results.best_epoch(history, metric, mode), last=history[-1],
                               checkpoint=str(ckpt_dir), history=history)
        _atomic.write_text(exp / "spec.yaml", spec.to_yaml())
        results.write_results(exp, [row], [p.key for p in spec.space.params], metric, mode, spec.sha256())
    return exp, ckpt_dir, history, root / "data_cache"


def test_the_checkpoint_records_the_import_path_and_args_and_rebuilds_the_model(user_experiment, monkeypatch):
    from raytune_opt.recipe.checkpoint import BEST, load_model
    from raytune_opt.recipe.data import load_data

    exp, ckpt_dir, history, cache = user_experiment
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(cache))
    model, ckpt = load_model(ckpt_dir / BEST, trust_code=True)  # the user's own model: trusted
    assert ckpt["model"]["target"] == TARGET and ckpt["model"]["name"] == TARGET
    assert ckpt["model"]["args"] == {"hidden": 32, "blocks": 1, "dropout": 0.1}
    assert type(model).__name__ == "ResidualMLP" and len(model.blocks) == 1
    data = load_data({"dataset": "digits", "test_fraction": 0.2}, 0)  # split as the trials split it
    with torch.no_grad():
        accuracy = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    best = max(r["val_accuracy"] for r in history)
    assert accuracy == pytest.approx(best) and best > 0.5  # it learned something in 2 epochs


def test_the_user_model_exports_to_onnx_with_parity(user_experiment, tmp_path):
    from raytune_opt.promote import measure
    from raytune_opt.promote.export import export_onnx, parity
    from raytune_opt.recipe.checkpoint import load_model

    _, ckpt_dir, _, _ = user_experiment
    model, _ = load_model(ckpt_dir, trust_code=True)
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    path = tmp_path / "user.onnx"
    export_onnx(model, torch.from_numpy(x[:2]), path)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    out = measure.ort_session(path).run(None, {"input": x})[0]
    assert out.shape == (16, 10) and parity(ref, out, atol=1e-4).ok


def test_promote_builds_onnx_from_a_user_model_checkpoint(user_experiment, tmp_path, monkeypatch):
    import shutil

    from raytune_opt.promote import measure, promote

    exp, _, _, cache = user_experiment
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(cache))
    monkeypatch.setattr(measure, "LATENCY_BUDGET_S", 0.01)
    copy = tmp_path / "exp"
    shutil.copytree(exp, copy)
    best = json.loads((copy / "best.json").read_text())
    best["checkpoint"] = best["checkpoint"].replace(str(exp), str(copy))
    (copy / "best.json").write_text(json.dumps(best))
    manifest = promote(copy, targets="onnx", trust_code=True)
    arts = {a["name"]: a for a in manifest["artifacts"]}
    assert manifest["status"] == "ok" and arts["onnx"]["status"] == "ok", arts["onnx"]
    assert arts["onnx"]["parity"]["top1_agreement"] == 1.0


LOAD = "import sys; from raytune_opt.recipe.checkpoint import load_model; " \
       "m, c = load_model(sys.argv[1], trust_code=True); print(type(m).__name__, c['model']['args']['hidden'])"


def test_a_fresh_process_rebuilds_it_from_the_current_directory_or_says_why_not(user_experiment):
    _, ckpt_dir, _, _ = user_experiment
    ok = subprocess.run([sys.executable, "-c", LOAD, str(ckpt_dir)], cwd=EXAMPLES, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stdout.split() == ["ResidualMLP", "32"], ok.stderr
    promote = [sys.executable, "-m", "raytune_opt", "promote", str(ckpt_dir.parent.parent)]
    untrusted = subprocess.run(promote, cwd=REPO / "tests", capture_output=True, text=True, timeout=120)
    assert untrusted.returncode == 2 and untrusted.stderr.strip().splitlines() == [
        f"{ckpt_dir / 'best.pt'} names your own model {TARGET}; raytune-opt imports code named by a file only when "
        f"you trust it: add --trust-code (Python: trust_code=True) if this is your own experiment"], untrusted.stderr
    elsewhere = subprocess.run([*promote, "--trust-code"], cwd=REPO / "tests", capture_output=True, text=True,
                               timeout=120)
    assert elsewhere.returncode == 2 and "Traceback" not in elsewhere.stderr, elsewhere.stderr
    assert f"cannot import '{TARGET}' (No module named 'user_models')" in elsewhere.stderr
