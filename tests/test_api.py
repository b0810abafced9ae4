"""`import raytune_opt`: validate, load, run and load_model without the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import raytune_opt
from raytune_opt.errors import SpecError, UsageError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"


def test_the_public_names_resolve_and_importing_loads_neither_torch_nor_ray():
    for name in raytune_opt.__all__:
        assert getattr(raytune_opt, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'fit'"):
        raytune_opt.fit  # noqa: B018
    probe = "import sys, raytune_opt; raytune_opt.validate; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_validate_returns_every_problem_of_a_file_or_a_dict():
    assert raytune_opt.validate(DIGITS) == []
    problems = raytune_opt.validate(DIGITS, ["train.epochs=0", "model.name=smal_cnn"])
    assert sorted(p.key for p in problems) == ["model.name", "train.epochs"]
    problems = raytune_opt.validate({"train": {"epochs": 0}, "search": {"metric": "val_acc"}})
    assert [str(p).split(": ")[0:2] for p in problems] == [["<dict>", "train.epochs"], ["<dict>", "search.metric"]]
    spec = raytune_opt.load({"name": "nb", "model": {"name": "mlp"}}, ["train.epochs=3"])
    assert spec.name == "nb" and spec.data["train"]["epochs"] == 3
    with pytest.raises(SpecError) as info:
        raytune_opt.load({"train": {"epochs": 0}})
    assert info.value.problems[0].where == "<dict>"
    with pytest.raises(UsageError, match="spec must be a YAML file's path or a dict"):
        raytune_opt.validate(42)


@pytest.mark.slow
def test_run_a_dict_spec_then_load_the_best_model(local_ray, tmp_path, monkeypatch, capfd):
    """A notebook's whole round trip: a sweep from a dict, promoted, its best model back in hand."""
    import torch

    from raytune_opt.recipe.data import load_data

    monkeypatch.chdir(tmp_path)
    spec = {"name": "nb", "data": {"dataset": "digits"}, "model": {"name": "mlp", "width": 32},
            "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 3e-3}},
            "search": {"algorithm": "random", "num_samples": 2},
            "space": {"train.optimizer.lr": {"loguniform": [1e-3, 1e-2]}},
            "promote": {"targets": ["onnx"]}}
    outcome = raytune_opt.run(spec, storage=str(tmp_path / "out"), quiet=True)
    assert capfd.readouterr().out == ""  # quiet
    assert outcome.exp_dir == tmp_path / "out" / "nb" and len(outcome.rows) == 2 and outcome.best is not None
    assert outcome.promotion["status"] == "ok" and (outcome.exp_dir / "report.html").is_file()
    model = raytune_opt.load_model(outcome.exp_dir)
    data = load_data({"dataset": "digits", "test_fraction": 0.2}, 0)  # split as the trials split it
    with torch.no_grad():
        accuracy = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    assert accuracy == pytest.approx(outcome.best.best["val_accuracy"])
    assert raytune_opt.load_model(outcome.best.checkpoint).state_dict().keys() == model.state_dict().keys()
