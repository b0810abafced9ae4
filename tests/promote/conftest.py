"""A small trained experiment on disk, made without Ray, and helpers to copy and break it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "search_spaces" / "digits_cnn.yaml"
TRIAL = "aaaa0001"


@pytest.fixture(scope="session")
def base_experiment(tmp_path_factory) -> Path:
    """STORAGE/NAME as ``raytune-opt run`` writes it, with one trained trial and one failed one."""
    import torch

    from raytune_opt import _atomic, results
    from raytune_opt.recipe.loop import train
    from raytune_opt.recipe.session import LocalSession
    from raytune_opt.spec import load_spec

    root = tmp_path_factory.mktemp("promote")
    with pytest.MonkeyPatch.context() as mp:
        # Decoded data goes to this session's own cache, never the machine's shared one.
        mp.setenv("RAYTUNE_OPT_CACHE", str(root / "data_cache"))
        spec = load_spec(DIGITS, ["name=exp", "train.epochs=3", "model.width=16", "train.lr_schedule.name=constant",
                                  "train.batch_size=64"])
        exp = root / "exp"
        ckpt_dir = exp / f"trial_{TRIAL}" / "checkpoint_000002"
        session = LocalSession(checkpoint_dir=str(ckpt_dir), num_threads=1)
        previous = torch.get_num_threads()
        try:
            final = train(spec.data, session, spec_sha256=spec.sha256())
        finally:
            torch.set_num_threads(previous)
        metric, mode = spec.data["search"]["metric"], spec.data["search"]["mode"]
        history = session.reports
        rows = [
            results.TrialRow(trial_id=TRIAL, status="ok", stop_reason=final["stop_reason"], config={"model.width": 16},
                             epochs=len(history), seconds=1.0, train_seconds=1.0,
                             best=results.best_epoch(history, metric, mode), last=history[-1],
                             checkpoint=str(ckpt_dir), history=history),
            results.TrialRow(trial_id="bbbb0002", status="error", stop_reason="error: RuntimeError",
                             config={"model.width": 8}, epochs=0, seconds=0.5, train_seconds=0.0,
                             error="RuntimeError: boom"),
        ]
        _atomic.write_text(exp / "spec.yaml", spec.to_yaml())
        best = results.write_results(exp, rows, [p.key for p in spec.space.params], metric, mode, spec.sha256())
        assert best is not None and best.trial_id == TRIAL and best.best["val_accuracy"] > 0.8
    return exp


@pytest.fixture
def experiment(base_experiment, tmp_path, monkeypatch) -> Path:
    """A private copy of the experiment (best.json points at the copy's checkpoint)."""
    from raytune_opt.promote import measure

    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(base_experiment.parent / "data_cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(measure, "LATENCY_BUDGET_S", 0.01)  # 10 timed runs: the numbers are not the point here
    exp = tmp_path / "exp"
    shutil.copytree(base_experiment, exp)
    best = json.loads((exp / "best.json").read_text())
    best["checkpoint"] = best["checkpoint"].replace(str(base_experiment), str(exp))
    (exp / "best.json").write_text(json.dumps(best))
    return exp


def set_promote(exp: Path, **settings) -> None:
    """Change the experiment's spec.yaml ``promote`` section (``int8_*`` keys go to ``promote.int8``)."""
    import yaml

    spec = yaml.safe_load((exp / "spec.yaml").read_text())
    for key, value in settings.items():
        if key.startswith("int8_"):
            spec["promote"]["int8"][key.removeprefix("int8_")] = value
        else:
            spec["promote"][key] = value
    (exp / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
