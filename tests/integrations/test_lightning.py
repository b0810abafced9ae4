"""train.loop: lightning: its validation rules (torch-free), and the loop in one process
(checkpoints, resume). The Ray sweeps of the example are in test_lightning_sweep.py."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from raytune_opt.integrations import lightning_rules
from raytune_opt.spec import load_spec
from tests._user_code import spec_problems, write_loop_spec, write_spec

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
    return write_loop_spec(tmp_path, "user_lightning.lit:DigitsData", "user_lightning.lit:LitNet", "val_accuracy",
                           train, space)


def test_what_lightning_ignores_is_refused_not_dropped(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    path = _spec(tmp_path, "{loop: lightning, epochs: 2, batch_size: 32, optimizer: {lr: 0.1}, precision: bf16, "
                           "strategy: deepspeed, "
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
    # Lightning's DeepSpeed strategy refuses a CPU accelerator: refused here, saying why.
    assert "train.strategy: Lightning's Trainer does not read it with train.loop: lightning (got 'deepspeed'); " \
           "remove it; several workers (resources.num_workers) train with Ray's DDP strategy; Lightning's " \
           "DeepSpeed strategy runs on CUDA GPUs only" in text
    assert len(problems) == 8, problems


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


def test_the_loop_reports_what_the_module_logs_and_resumes_as_a_straight_run(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    import shutil

    import torch

    from raytune_opt.recipe.checkpoint import BEST, LAST, load_checkpoint, load_model
    from raytune_opt.recipe.loop import train
    from raytune_opt.recipe.session import LocalSession

    monkeypatch.syspath_prepend(str(EXAMPLES))
    killed = tmp_path / "killed"

    def keep_epoch_2(metrics, directory):  # what a driver killed after epoch 2 leaves behind
        if metrics["epoch"] == 2:
            killed.mkdir()
            shutil.copy(f"{directory}/{LAST}", killed / LAST)

    straight = LocalSession(str(tmp_path / "straight"), callback=keep_epoch_2)
    train(_cfg(3), straight)
    assert [r["epoch"] for r in straight.reports] == [1, 2, 3]
    assert {"train_loss", "val_loss", "val_accuracy", "best_val_accuracy"} <= set(straight.reports[-1])
    last = load_checkpoint(str(tmp_path / "straight" / LAST))
    assert last["epoch"] == 3 and last["model"]["target"] == "user_lightning.lit:LitNet"
    assert len(last["optimizer_state"]["optimizers"]) == 1 and len(last["optimizer_state"]["lr_schedulers"]) == 1
    model, _ = load_model(str(tmp_path / "straight" / BEST), trust_code=True)
    assert type(model).__name__ == "LitNet" and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)

    resumed = LocalSession(str(tmp_path / "resumed"))
    train(_cfg(3), resumed, resume_from=str(killed / LAST))
    assert [r["epoch"] for r in resumed.reports] == [3]
    # Killed then resumed = straight, to the bit: the epoch's shuffle (seeded per epoch, the
    # trainer's epoch counter the straight run's), the weights, AdamW's state and the StepLR
    # schedule (halved after epoch 2: resumed without the step Lightning takes after the
    # checkpoint, epoch 3 would train at the old rate).
    timing = {"epoch_s"}
    assert {k: v for k, v in resumed.reports[0].items() if k not in timing} == \
        {k: v for k, v in straight.reports[-1].items() if k not in timing}
    again = load_checkpoint(str(tmp_path / "resumed" / LAST))
    assert again["optimizer_state"]["lr_schedulers"] == last["optimizer_state"]["lr_schedulers"]
    assert again["optimizer_state"]["optimizers"][0]["param_groups"][0]["lr"] == 0.005
    steps = [c["optimizer_state"]["optimizers"][0]["state"][0]["step"] for c in (again, last)]
    assert float(steps[0]) == float(steps[1]) == 12.0  # 3 epochs x limit_batches 4
    for name, weight in last["model_state"].items():
        assert torch.equal(again["model_state"][name], weight), name

    # PBT's exploit: another trial resumes from the epoch-2 checkpoint with its own config (the
    # module's lr halved): the StepLR schedule goes on from the donor's epoch, at this trial's rate.
    exploit = _cfg(3)
    exploit["model"]["args"]["lr"] = 0.005
    train(exploit, LocalSession(str(tmp_path / "exploited")), resume_from=str(killed / LAST))
    mine = load_checkpoint(str(tmp_path / "exploited" / LAST))["optimizer_state"]
    assert mine["optimizers"][0]["param_groups"][0]["lr"] == pytest.approx(0.0025)
    assert mine["lr_schedulers"][0]["base_lrs"] == [0.005]
