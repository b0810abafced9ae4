"""Every optimizer with every schedule; warmup, decay shapes, plateau, state round trip; the
registries, and a user optimizer and lr schedule by import path in a real (short) training."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from raytune_opt import registry
from raytune_opt.recipe.checkpoint import LAST, load_checkpoint
from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.recipe.loop import train
from raytune_opt.recipe.optim import TorchSchedule, build_optimizer, build_scheduler
from raytune_opt.recipe.session import LocalSession
from raytune_opt.spec import schema
from tests._user_code import user_module


def _opt(name="sgd", lr=0.1, **kw):
    model = torch.nn.Linear(4, 2)
    return model, build_optimizer(model.parameters(), {"name": name, "lr": lr, **kw})


def _lrs(sched_cfg, steps_per_epoch=10, epochs=5, val_losses=None):
    _, opt = _opt()
    sched = build_scheduler(opt, sched_cfg, steps_per_epoch, epochs)
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(sched.lr)
            opt.step()
            sched.step_batch()
        sched.step_epoch(val_losses[epoch] if val_losses else 1.0)
    return lrs


@pytest.mark.parametrize("opt_name,sched_name", list(itertools.product(schema.OPTIMIZERS, schema.LR_SCHEDULES)))
def test_every_optimizer_with_every_schedule_trains(opt_name, sched_name):
    torch.manual_seed(0)
    model, opt = _opt(opt_name, lr=0.01, weight_decay=1e-4)
    sched = build_scheduler(opt, {"name": sched_name, "warmup_epochs": 0.5}, steps_per_epoch=4, epochs=3)
    x = torch.randn(32, 4)
    y = (x[:, 0] > 0).long()  # learnable, so every pair must lower the loss
    first = None
    for epoch in range(3):
        for _ in range(4):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            first = loss.item() if first is None else first
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step_batch()
        sched.step_epoch(loss.item())
    assert math.isfinite(loss.item()) and loss.item() < first


@pytest.mark.parametrize("name", schema.LR_SCHEDULES)
def test_warmup_starts_at_zero_and_reaches_the_peak(name):
    lrs = _lrs({"name": name, "warmup_epochs": 2, "pct_start": 0.5}, steps_per_epoch=10, epochs=5)
    assert lrs[0] == 0.0
    assert lrs[:20] == sorted(lrs[:20])  # rising
    # To the peak; onecycle's warmup ends where onecycle starts (peak / 25), then it rises itself.
    start = 0.1 / 25 if name == "onecycle" else 0.1
    assert lrs[10] == pytest.approx(start / 2) and lrs[20] == pytest.approx(start)
    assert max(lrs) == pytest.approx(0.1)


def test_cosine_decays_to_min_lr():
    lrs = _lrs({"name": "cosine", "min_lr": 0.01}, steps_per_epoch=10, epochs=5)
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.01, abs=1e-3)
    assert lrs == sorted(lrs, reverse=True)


def test_step_decays_every_step_size_epochs():
    lrs = _lrs({"name": "step", "step_size": 2, "gamma": 0.5}, steps_per_epoch=10, epochs=5)
    assert lrs[19] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.05) and lrs[40] == pytest.approx(0.025)


def test_onecycle_peaks_at_pct_start():
    lrs = _lrs({"name": "onecycle", "pct_start": 0.3}, steps_per_epoch=10, epochs=5)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 15
    assert lrs[0] == pytest.approx(0.1 / 25) and lrs[-1] < 1e-3


def test_plateau_decays_after_patience():
    # val_loss improves once, then stalls: with patience 1 the lr drops after 2 bad epochs.
    lrs = _lrs({"name": "plateau", "plateau_patience": 1, "plateau_factor": 0.5}, steps_per_epoch=2, epochs=5,
               val_losses=[1.0, 0.5, 0.5, 0.5, 0.5])
    assert lrs[::2] == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05])


def test_state_dict_round_trip_continues_the_schedule():
    _, opt = _opt()
    a = build_scheduler(opt, {"name": "cosine", "warmup_epochs": 1}, 10, 5)
    for _ in range(17):
        a.step_batch()
    _, opt2 = _opt()
    b = build_scheduler(opt2, {"name": "cosine", "warmup_epochs": 1}, 10, 5)
    b.load_state_dict(a.state_dict())
    assert b.lr == a.lr
    a.step_batch(), b.step_batch()
    assert b.lr == a.lr


def test_optimizer_settings_are_passed():
    _, opt = _opt("adamw", lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW) and group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6
    _, opt = _opt("sgd", momentum=0.5, nesterov=True)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.5


def test_bad_settings():
    with pytest.raises(RecipeConfigError, match="nesterov needs momentum"):
        _opt("sgd", momentum=0.0, nesterov=True)
    with pytest.raises(RecipeConfigError, match="not an optimizer"):
        _opt("lamb")
    with pytest.raises(RecipeConfigError, match="not a schedule"):
        build_scheduler(_opt()[1], {"name": "linear"}, 1, 1)


# --- the registries, and a user optimizer and schedule by import path --------------------


def test_the_built_ins_are_registry_entries_and_the_schema_lists_them():
    assert schema.OPTIMIZERS == registry.OPTIMIZERS.names()
    assert {"sgd", "adam", "adamw", "rmsprop", "adagrad"} <= set(registry.OPTIMIZERS)
    assert schema.LR_SCHEDULES == registry.LR_SCHEDULES.names()
    for reg, field in ((registry.OPTIMIZERS, ("train", "optimizer")), (registry.LR_SCHEDULES, ("train", "lr_schedule"))):
        assert schema.lookup((*field, "name")).registry is reg
        for name in reg:  # a built-in's keys are settings of its section
            assert set(reg[name].meta.get("keys", ())) <= set(schema.lookup(field).fields), name


def test_an_entry_without_keys_is_called_as_a_user_optimizer_is(monkeypatch):
    # What a contributor adds for one more torch optimizer: one register() call, no builder.
    opts = registry.Registry("optimizer")
    for name in registry.OPTIMIZERS:
        opts._entries[name] = registry.OPTIMIZERS[name]
    opts.register("my_nadam", "torch.optim:NAdam", doc="NAdam")
    monkeypatch.setattr(registry, "OPTIMIZERS", opts)
    _, opt = _opt("my_nadam", lr=0.02, weight_decay=0.1, args={"momentum_decay": 0.005})
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.NAdam) and (group["lr"], group["weight_decay"]) == (0.02, 0.1)
    assert group["momentum_decay"] == 0.005


@pytest.fixture
def user_optim(tmp_path, monkeypatch):
    """The module of tests/spec/test_user_optim.py (Lion, schedules), importable from the cwd."""
    from tests.spec.test_user_optim import OPTIM

    for directory, mod in user_module(tmp_path, "uoptim", OPTIM):
        monkeypatch.chdir(directory)  # a trial imports user code from its cwd and sys.path
        yield mod


def test_a_user_optimizer_and_lr_schedule_train_and_resume_exactly(user_optim, tmp_path):
    from tests.recipe.test_loop import _Stop, _cfg, _stop_after

    mod = user_optim
    cfg = _cfg(limit_batches=4, checkpoint=True,
               optimizer={"name": f"{mod}:Lion", "lr": 1e-3, "weight_decay": 0.01, "args": {"betas": [0.9, 0.98]}},
               lr_schedule={"name": f"{mod}:cosine_to", "args": {"floor": 1e-5}})
    cfg["train"]["epochs"] = 3
    straight = LocalSession(str(tmp_path / "straight"))
    train(cfg, straight)
    lrs = [r["lr"] for r in straight.reports]
    # CosineAnnealingLR over total_steps (3 epochs x 4 steps), stepped per optimizer step.
    assert lrs == pytest.approx([1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * s / 12)) for s in (4, 8, 12)])
    assert straight.reports[-1]["train_loss"] < straight.reports[0]["train_loss"]
    ckpt = load_checkpoint(tmp_path / "straight" / LAST)
    assert set(ckpt["optimizer_state"]["state"][0]) == {"exp_avg"}  # Lion's one moment, not Adam's two
    assert tuple(ckpt["optimizer_state"]["param_groups"][0]["betas"]) == (0.9, 0.98)
    assert ckpt["scheduler_state"]["name"] == f"{mod}:cosine_to"
    # Stopped after one epoch and resumed: the torch scheduler's state comes back with the run.
    first = LocalSession(str(tmp_path / "first"), callback=lambda m, d: _stop_after(m, 1))
    with pytest.raises(_Stop):
        train(cfg, first)
    resumed = LocalSession(str(tmp_path / "resumed"))
    train(cfg, resumed, resume_from=str(tmp_path / "first" / LAST))
    assert [r["epoch"] for r in resumed.reports] == [2, 3]
    for a, b in zip(straight.reports[1:], resumed.reports):
        for key in ("train_loss", "val_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_a_user_plateau_schedule_steps_per_epoch_on_val_loss(user_optim):
    _, opt = _opt("adam", lr=0.1)
    sched = build_scheduler(opt, {"name": "torch.optim.lr_scheduler:ReduceLROnPlateau",
                                  "args": {"patience": 0, "factor": 0.5}}, steps_per_epoch=3, epochs=4)
    assert isinstance(sched, TorchSchedule) and sched.per_epoch
    for _ in range(3):
        sched.step_batch()
    assert sched.lr == 0.1
    sched.step_epoch(1.0), sched.step_epoch(1.0)
    assert sched.lr == 0.05


def test_user_callables_that_fail_in_the_trial_are_recipe_errors(user_optim):
    mod = user_optim
    with pytest.raises(RecipeConfigError, match=r"train.optimizer.name: cannot import .*has no attribute 'Lino'"):
        _opt(f"{mod}:Lino")
    with pytest.raises(RecipeConfigError, match=r"keyword_only: TypeError: .*takes 0 positional arguments"):
        _opt(f"{mod}:keyword_only")  # takes no params
    with pytest.raises(RecipeConfigError, match=r"returned a list, not a torch.optim.Optimizer"):
        _opt("builtins:list")
    with pytest.raises(RecipeConfigError, match=r"train.lr_schedule.name .*needs_gamma: TypeError"):
        build_scheduler(_opt()[1], {"name": f"{mod}:needs_gamma"}, 2, 2)
    with pytest.raises(RecipeConfigError, match=r"train.lr_schedule.args.epochs is given by the recipe"):
        build_scheduler(_opt()[1], {"name": f"{mod}:cosine_to", "args": {"epochs": 3}}, 2, 2)
    with pytest.raises(RecipeConfigError, match=r"returned a str, not a torch.optim.lr_scheduler.LRScheduler"):
        build_scheduler(_opt()[1], {"name": "builtins:repr"}, 2, 2)


def test_nesterov_without_momentum_is_the_sgd_entrys_rule():
    from pathlib import Path

    from raytune_opt.errors import SpecError
    from raytune_opt.spec import load_spec

    digits = Path(__file__).resolve().parents[2] / "search_spaces" / "digits_cnn.yaml"
    bad = "train.optimizer={name: sgd, momentum: 0, nesterov: true}"
    with pytest.raises(SpecError, match=r"train.optimizer.nesterov: Nesterov momentum needs momentum > 0 "
                                        r"\(got momentum=0\); set train.optimizer.momentum > 0 or nesterov: false"):
        load_spec(digits, [bad])
    spec = load_spec(digits, [bad, "space={train.optimizer.momentum: {uniform: [0.0, 0.9]}}"])  # searched: left to trials
    space = load_spec(digits).space
    assert "train.optimizer.momentum" not in space.by_key
    view = registry.SpecView(spec.data, space, lambda path: True)
    [finding] = registry.OPTIMIZERS["sgd"].checks(view)  # sgd's own check, free of torch
    assert finding.path == ("train", "optimizer", "nesterov") and finding.reads == "train.optimizer.momentum"
