"""Small trained experiments on disk (a digits classification, the diabetes regression), made
without Ray, and helpers to copy and break them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "search_spaces" / "digits_cnn.yaml"
DIABETES = REPO / "search_spaces" / "examples" / "diabetes_regression.yaml"
TRIAL = "aaaa0001"


def trained_experiment(root: Path, spec_path: Path, overrides: list[str], config: dict, *,
                       failed: bool = False) -> tuple[Path, object]:
    """STORAGE/NAME (``root/exp``) as ``raytune-opt run`` writes it, with one trial of ``spec_path``
    trained in this process (no Ray) and, if ``failed``, one errored trial; returns it and its best row."""
    import torch

    from raytune_opt import _atomic, results
    from raytune_opt.recipe.loop import train
    from raytune_opt.recipe.session import LocalSession
    from raytune_opt.spec import load_spec

    with pytest.MonkeyPatch.context() as mp:
        # Decoded data goes to this session's own cache, never the machine's shared one.
        mp.setenv("RAYTUNE_OPT_CACHE", str(root / "data_cache"))
        spec = load_spec(spec_path, ["name=exp", *overrides])
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
        rows = [results.TrialRow(trial_id=TRIAL, status="ok", stop_reason=final["stop_reason"], config=config,
                                 epochs=len(history), seconds=1.0, train_seconds=1.0,
                                 best=results.best_epoch(history, metric, mode), last=history[-1],
                                 checkpoint=str(ckpt_dir), history=history)]
        if failed:
            rows.append(results.TrialRow(trial_id="bbbb0002", status="error", stop_reason="error: RuntimeError",
                                         config={"model.width": 8}, epochs=0, seconds=0.5, train_seconds=0.0,
                                         error="RuntimeError: boom"))
        _atomic.write_text(exp / "spec.yaml", spec.to_yaml())
        best = results.write_results(exp, rows, [p.key for p in spec.space.params], metric, mode, spec.sha256())
    assert best is not None and best.trial_id == TRIAL
    return exp, best


def private_copy(base: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy of the experiment ``base`` under ``tmp_path`` (best.json points at the copy's checkpoint)."""
    from raytune_opt.promote import measure

    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(base.parent / "data_cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(measure, "LATENCY_BUDGET_S", 0.01)  # 10 timed runs: the numbers are not the point here
    exp = tmp_path / "exp"
    shutil.copytree(base, exp)
    best = json.loads((exp / "best.json").read_text())
    best["checkpoint"] = best["checkpoint"].replace(str(base), str(exp))
    (exp / "best.json").write_text(json.dumps(best))
    return exp


@pytest.fixture(scope="session")
def base_experiment(tmp_path_factory) -> Path:
    """A digits CNN, 3 epochs, with one trained trial and one failed one."""
    exp, best = trained_experiment(tmp_path_factory.mktemp("promote"), DIGITS,
                                   ["train.epochs=3", "model.width=16", "train.lr_schedule.name=constant",
                                    "train.batch_size=64"], {"model.width": 16}, failed=True)
    assert best.best["val_accuracy"] > 0.8
    return exp


@pytest.fixture
def experiment(base_experiment, tmp_path, monkeypatch) -> Path:
    """A private copy of the digits experiment."""
    return private_copy(base_experiment, tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def base_regression(tmp_path_factory) -> Path:
    """The shipped diabetes regression example as it is (40 epochs, about a second), one trial."""
    exp, best = trained_experiment(tmp_path_factory.mktemp("promote_regression"), DIABETES, [],
                                   {"model.width": 64})
    assert best.best["val_r2"] > 0.3
    return exp


@pytest.fixture
def regression_experiment(base_regression, tmp_path, monkeypatch) -> Path:
    """A private copy of the diabetes regression experiment."""
    return private_copy(base_regression, tmp_path, monkeypatch)


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
