"""Optimizers and learning-rate schedules by name.

The schedule is one small object the loop steps the same way whatever its kind:
``step_batch()`` after every optimizer step and ``step_epoch(val_loss)`` after every
epoch. The learning rate is a pure function of the optimizer-step count (plus, for
``plateau``, a factor driven by the validation loss), so state is two numbers and a
resumed run continues exactly where it stopped.

With ``warmup_epochs`` W, the lr rises linearly from 0 over the first
``W * steps_per_epoch`` optimizer steps to where the schedule starts (the peak lr; for
onecycle its low start, peak/25, from which it makes its own rise); cosine and onecycle
then run over the remaining steps, step decays count epochs from the start.
"""

from __future__ import annotations

import math

import torch

from raytune_opt.recipe.errors import RecipeConfigError

__all__ = ["build_optimizer", "build_scheduler", "LRSchedule"]

# onecycle's start and end lr as fractions of the peak (torch.optim.lr_scheduler.OneCycleLR's defaults).
_ONECYCLE_DIV = 25.0
_ONECYCLE_FINAL_DIV = 1e4


def build_optimizer(params, opt_cfg: dict) -> torch.optim.Optimizer:
    """The optimizer from the spec's ``train.optimizer`` section.

    Args:
        params: parameters (or parameter groups) to optimize.
        opt_cfg: ``name``, ``lr``, ``weight_decay``, ``momentum``, ``nesterov``, ``beta1``,
            ``beta2``, ``eps``; missing keys take the schema's defaults.

    Raises:
        RecipeConfigError: an unknown optimizer, or nesterov without momentum.
    """
    name = opt_cfg.get("name", "adamw")
    lr = float(opt_cfg.get("lr", 1e-3))
    wd = float(opt_cfg.get("weight_decay", 0.0))
    momentum = float(opt_cfg.get("momentum", 0.9))
    eps = float(opt_cfg.get("eps", 1e-8))
    betas = (float(opt_cfg.get("beta1", 0.9)), float(opt_cfg.get("beta2", 0.999)))
    if name == "sgd":
        nesterov = bool(opt_cfg.get("nesterov", False))
        if nesterov and momentum <= 0:
            raise RecipeConfigError(f"train.optimizer.nesterov needs momentum > 0 (got {momentum=}); "
                                    f"set train.optimizer.momentum or nesterov false")
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, eps=eps, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=wd)
    raise RecipeConfigError(f"train.optimizer.name {name!r} is not an optimizer; "
                            f"use one of sgd, adam, adamw, rmsprop, adagrad")


class LRSchedule:
    """Sets each parameter group's lr to ``peak * factor(step)`` after every step.

    Args:
        optimizer: whose groups' current ``lr`` is taken as the peak.
        sched_cfg: the spec's ``train.lr_schedule`` section.
        steps_per_epoch: optimizer steps per epoch (after accumulation and limit_batches).
        epochs: epochs of the run.

    Raises:
        RecipeConfigError: an unknown schedule or a setting out of range.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, sched_cfg: dict, steps_per_epoch: int, epochs: int):
        if steps_per_epoch < 1 or epochs < 1:
            raise RecipeConfigError(f"a schedule needs steps_per_epoch >= 1 and epochs >= 1 "
                                    f"(got {steps_per_epoch=}, {epochs=})")
        self.name = sched_cfg.get("name", "constant")
        if self.name not in ("constant", "step", "cosine", "onecycle", "plateau"):
            raise RecipeConfigError(f"train.lr_schedule.name {self.name!r} is not a schedule; "
                                    f"use one of constant, step, cosine, onecycle, plateau")
        self.optimizer = optimizer
        self.peaks = [group["lr"] for group in optimizer.param_groups]
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * epochs
        self.warmup_steps = round(float(sched_cfg.get("warmup_epochs", 0.0)) * steps_per_epoch)
        self.step_size = int(sched_cfg.get("step_size", 10))
        self.gamma = float(sched_cfg.get("gamma", 0.1))
        self.min_lr = float(sched_cfg.get("min_lr", 0.0))
        self.pct_start = float(sched_cfg.get("pct_start", 0.3))
        self.plateau_patience = int(sched_cfg.get("plateau_patience", 2))
        self.plateau_factor = float(sched_cfg.get("plateau_factor", 0.1))
        if self.step_size < 1 or not 0 < self.pct_start < 1 or not 0 < self.plateau_factor < 1:
            raise RecipeConfigError(f"train.lr_schedule: need step_size >= 1, 0 < pct_start < 1 and "
                                    f"0 < plateau_factor < 1 (got {self.step_size=}, {self.pct_start=}, "
                                    f"{self.plateau_factor=})")
        self.step = 0  # optimizer steps taken
        self.plateau_scale = 1.0
        self.plateau_best = math.inf
        self.plateau_bad_epochs = 0
        self._apply()

    def step_batch(self) -> None:
        """Advance by one optimizer step."""
        self.step += 1
        self._apply()

    def step_epoch(self, val_loss: float | None = None) -> None:
        """End of an epoch: ``plateau`` decays when ``val_loss`` stopped improving; others ignore it."""
        if self.name != "plateau" or val_loss is None or not math.isfinite(val_loss):
            return
        # torch's ReduceLROnPlateau rule: relative threshold 1e-4, mode min.
        if val_loss < self.plateau_best * (1 - 1e-4):
            self.plateau_best = val_loss
            self.plateau_bad_epochs = 0
        else:
            self.plateau_bad_epochs += 1
            if self.plateau_bad_epochs > self.plateau_patience:
                self.plateau_scale *= self.plateau_factor
                self.plateau_bad_epochs = 0
        self._apply()

    @property
    def lr(self) -> float:
        """The first parameter group's current learning rate."""
        return self.optimizer.param_groups[0]["lr"]

    def factor(self, step: int) -> float:
        """The lr as a fraction of the peak at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            # Linear from 0 to where the schedule starts (the peak; onecycle: its own
            # low start), so the lr never jumps when the warmup ends.
            return step / self.warmup_steps * self._schedule_factor(self.warmup_steps)
        return self._schedule_factor(step)

    def _schedule_factor(self, step: int) -> float:
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.name == "step":
            return self.gamma ** (step // (self.step_size * self.steps_per_epoch))
        if self.name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if self.name == "onecycle":
            up = self.pct_start
            start, end = 1 / _ONECYCLE_DIV, 1 / (_ONECYCLE_DIV * _ONECYCLE_FINAL_DIV)
            if progress < up:
                return _cos_anneal(start, 1.0, progress / up)
            return _cos_anneal(1.0, end, (progress - up) / (1 - up))
        if self.name == "plateau":
            return self.plateau_scale
        return 1.0

    def _apply(self) -> None:
        f = self.factor(self.step)
        for group, peak in zip(self.optimizer.param_groups, self.peaks):
            if self.name == "cosine" and self.step >= self.warmup_steps:
                # Cosine ends at min_lr, not at 0: interpolate between the two.
                group["lr"] = self.min_lr + (peak - self.min_lr) * f
            else:
                group["lr"] = peak * f

    def state_dict(self) -> dict:
        """Plain numbers only, so checkpoints load with ``weights_only=True``."""
        return {"name": self.name, "step": self.step, "plateau_scale": self.plateau_scale,
                "plateau_best": self.plateau_best, "plateau_bad_epochs": self.plateau_bad_epochs,
                "peaks": list(self.peaks)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            RecipeConfigError: the state is of another schedule kind.
        """
        if state.get("name") != self.name:
            raise RecipeConfigError(f"the checkpoint's lr schedule is {state.get('name')!r} but "
                                    f"train.lr_schedule.name is {self.name!r}; resume with the same schedule")
        self.step = int(state["step"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad_epochs = int(state["plateau_bad_epochs"])
        self.peaks = list(state["peaks"])
        self._apply()


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Each parameter group's settings (lr, weight decay, momentum...), without its parameters."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def reapply_hyperparameters(optimizer: torch.optim.Optimizer, schedule: "LRSchedule", configured: list[dict]) -> None:
    """Put ``configured`` (:func:`hyperparameters` of a freshly built optimizer) back after a
    restored state overwrote them, keeping the restored schedule position."""
    for group, values in zip(optimizer.param_groups, configured):
        group.update(values)
    schedule.peaks = [values["lr"] for values in configured]
    schedule._apply()


def _cos_anneal(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, fraction))))


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: dict, steps_per_epoch: int,
                    epochs: int) -> LRSchedule:
    """The lr schedule from the spec's ``train.lr_schedule`` section (see :class:`LRSchedule`).

    Raises:
        RecipeConfigError: an unknown schedule or a setting out of range.
    """
    return LRSchedule(optimizer, sched_cfg, steps_per_epoch, epochs)
