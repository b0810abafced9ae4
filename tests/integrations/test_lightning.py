"""train.loop: lightning: its validation rules (torch-free), and the loop in one process
(checkpoints, resume). The Ray sweeps of the example are in test_lightning_sweep.py."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from raytune_opt.integrations import lightning_rules
from raytune_opt.spec import load_spec
from tests._user_code import spec_problems, write_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "search_spaces" / "examples"
EXAMPLE = EXAMPLES / "digits_lightning.yaml"


def test_the_static_trainer_arguments_are_lightnings():
    lightning = pytest.importorskip("lightning")
    params = [p for p in inspect.signature(lightning.Trainer.__init__).parameters if p != "self"]
    assert list(lightning_rules.TRAINER_PARAMS) == params
    assert set(lightning_rules.OWNED) <= set(params)


def test_the_example_validates_and_searches_trainer_arguments():
    spec = load_spec(EXAMPLE)
    assert spec.data["train"]["loop"] == "lightning"
    assert "train.trainer.gradient_clip_val" in spec.space.by_key


def _spec(tmp_path, train: str, space: str = "") -> Path:
    # Written beside the example so that its user package imports (the spec's directory).
    path = tmp_path / "spec.yaml"
    body = (f"data: {{dataset: 'user_lightning.lit:DigitsData'}}\nmodel: {{name: 'user_lightning.lit:LitNet'}}\n"
            f"train: {train}\nsearch: {{metric: val_accuracy, mode: max}}\n" + (f"space: {space}\n" if space else ""))
    return write_spec(tmp_path, body)


def test_what_lightning_ignores_is_refused_not_dropped(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    path = _spec(tmp_path, "{loop: lightning, epochs: 2, batch_size: 32, optimizer: {lr: 0.1}, precision: bf16, "
                           "trainer: {max_epochs: 5, gradient_clip_vall: 1.0, precision: 16-mixed}}",
                 "{train.grad_clip_norm: {choice: [0.5, 1.0]}, train.trainer.logger: {choice: [true, false]}}")
    problems = spec_problems(path)
    text = "\n".join(problems)
    assert "train.batch_size: Lightning's Trainer does not read it with train.loop: lightning (got 32); remove it; " \
           "give it to your LightningDataModule in data.args" in text
    assert "train.optimizer.lr: Lightning's Trainer does not read it" in text and "configure_optimizers" in text
    assert "train.precision: Lightning's Trainer does not read it" in text and "train.trainer.precision" in text
    assert "searches train.grad_clip_norm, which Lightning's Trainer does not read" in text
    assert "train.trainer.max_epochs: the sweep sets Trainer's max_epochs itself (got 5); remove it; train.epochs" \
           in text
    assert "train.trainer.logger: the sweep sets Trainer's logger itself" in text
    assert "train.trainer.gradient_clip_vall: lightning.Trainer takes no argument 'gradient_clip_vall' (got 1.0); " \
           "did you mean 'gradient_clip_val'?" in text
    assert not any("train.trainer.precision" in p.split(": ")[1] for p in problems)  # a real argument: passed on
    assert len(problems) == 7, problems


def test_train_trainer_needs_the_lightning_loop(tmp_path, monkeypatch):
    (problem,) = spec_problems(write_spec(tmp_path, "train: {trainer: {precision: 32}}\n"))
    assert "train.trainer: Lightning's Trainer arguments, but train.loop is builtin" in problem
    assert problem.endswith("set train.loop: lightning, or remove train.trainer")


def test_a_missing_lightning_names_the_extra(tmp_path, monkeypatch):
    from raytune_opt import _imports

    real = _imports.is_available
    monkeypatch.setattr(_imports, "is_available", lambda m: False if m == "lightning" else real(m))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    problems = spec_problems(_spec(tmp_path, "{loop: lightning}"))
    assert any("train.loop: train.loop lightning needs the Python package 'lightning'" in p and
               p.endswith("pip install 'raytune-opt[lightning]'") for p in problems), problems


def test_validation_imports_no_lightning_for_its_rules():
    import subprocess
    import sys

    code = ("import sys; from raytune_opt.spec import load_spec; from raytune_opt import registry\n"
            "from raytune_opt.integrations import lightning_rules\n"
            "assert not any(m == 'lightning' or m.startswith('lightning.') or m == 'torch' for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- the loop, in one process

def _cfg(epochs: int) -> dict:
    return {"seed": 0, "data": {"dataset": "user_lightning.lit:DigitsData", "args": {"batch_size": 128}},
            "model": {"name": "user_lightning.lit:LitNet", "args": {"hidden": 32, "lr": 0.01}},
            "train": {"loop": "lightning", "epochs": epochs, "limit_batches": 4, "checkpoint": True,
                      "trainer": {"gradient_clip_val": 1.0}},
            "search": {"metric": "val_accuracy", "mode": "max"}}


def test_the_loop_reports_what_the_module_logs_and_resumes_where_it_stopped(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    import torch

    from raytune_opt.recipe.checkpoint import BEST, LAST, load_checkpoint, load_model
    from raytune_opt.recipe.loop import train
    from raytune_opt.recipe.session import LocalSession

    monkeypatch.syspath_prepend(str(EXAMPLES))
    straight = LocalSession(str(tmp_path / "straight"))
    train(_cfg(3), straight)
    assert [r["epoch"] for r in straight.reports] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_accuracy", "best_val_accuracy"} <= set(straight.reports[-1])
    last = load_checkpoint(str(tmp_path / "straight" / LAST))
    assert last["epoch"] == 3 and last["model"]["target"] == "user_lightning.lit:LitNet"
    assert len(last["optimizer_state"]["optimizers"]) == 1 and len(last["optimizer_state"]["lr_schedulers"]) == 1
    model, _ = load_model(str(tmp_path / "straight" / BEST), trust_code=True)
    assert type(model).__name__ == "LitNet" and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)

    first = LocalSession(str(tmp_path / "resumed"))
    train(_cfg(2), first)  # stopped after epoch 2 (a scheduler's pause, a killed driver)
    resumed = LocalSession(str(tmp_path / "resumed"))
    train(_cfg(3), resumed, resume_from=str(tmp_path / "resumed" / LAST))
    assert [r["epoch"] for r in resumed.reports] == [3]
    # The optimizer (AdamW's step count) and its StepLR schedule continue as the straight run's
    # did; without the restore they would start again at step 0 and the first lr.
    again = load_checkpoint(str(tmp_path / "resumed" / LAST))
    assert again["optimizer_state"]["lr_schedulers"] == last["optimizer_state"]["lr_schedulers"]
    steps = [c["optimizer_state"]["optimizers"][0]["state"][0]["step"] for c in (again, last)]
    assert float(steps[0]) == float(steps[1]) == 12.0  # 3 epochs x limit_batches 4
