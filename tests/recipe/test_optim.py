"""Every optimizer with every schedule; warmup, decay shapes, plateau, state round trip."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.recipe.optim import build_optimizer, build_scheduler
from raytune_opt.spec import schema


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
