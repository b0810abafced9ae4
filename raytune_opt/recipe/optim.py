"""Optimizers and learning-rate schedules, by name from :data:`raytune_opt.registry.OPTIMIZERS`
and :data:`raytune_opt.registry.LR_SCHEDULES`, or a user's by import path.

The built-ins below are registered there exactly as a user's would be: an optimizer is
``fn(params, **kwargs)`` returning a ``torch.optim.Optimizer``, a schedule ``fn(optimizer,
**kwargs)`` returning an :class:`LRSchedule` (a user's may return a torch ``LRScheduler``
instead; :class:`TorchSchedule` steps it the same way).

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
from typing import Any, Callable

import torch

from raytune_opt import registry
from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.spec import schema

__all__ = ["build_optimizer", "build_scheduler", "LRSchedule", "TorchSchedule"]

# The shapes LRSchedule draws (each registered in registry.LR_SCHEDULES by its function below).
_KINDS = ("constant", "step", "cosine", "onecycle", "plateau")
# onecycle's start and end lr as fractions of the peak (torch.optim.lr_scheduler.OneCycleLR's defaults).
_ONECYCLE_DIV = 25.0
_ONECYCLE_FINAL_DIV = 1e4


def build_optimizer(params, opt_cfg: dict) -> torch.optim.Optimizer:
    """The optimizer from the spec's ``train.optimizer`` section.

    Args:
        params: parameters (or parameter groups) to optimize.
        opt_cfg: ``name`` (a :data:`raytune_opt.registry.OPTIMIZERS` entry or ``module:callable``),
            ``args`` (an import path's keyword arguments) and the built-ins' settings; missing
            keys take the schema's defaults.

    Raises:
        RecipeConfigError: an unknown optimizer, one that does not import, a bad setting,
            or a callable that returns something else than an optimizer.
    """
    cfg = {**schema.defaults(schema.lookup(("train", "optimizer"))), **opt_cfg}
    fn, kwargs = _target("train.optimizer", "an optimizer", registry.OPTIMIZERS, registry.OPTIMIZER_INJECTED, cfg, cfg)
    optimizer = _call("train.optimizer", cfg["name"], fn, params, kwargs)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise RecipeConfigError(f"train.optimizer.name {cfg['name']} returned a {type(optimizer).__name__}, not a "
                                f"torch.optim.Optimizer; return the optimizer")
    return optimizer


def _target(section: str, what: str, reg: registry.Registry, injected: tuple, cfg: dict,
            values: dict) -> tuple[Callable, dict]:
    """The callable ``cfg['name']`` names and its keyword arguments: a built-in's ``keys`` from
    ``cfg`` (an import path's ``cfg['args']``), plus whichever ``injected`` names (their values
    from ``values``) its signature takes."""
    name = cfg["name"]
    entry = reg.get(name)
    if entry is None and not registry.is_import_path(name):
        raise RecipeConfigError(f"{section}.name {name!r} is not {what}; use one of {', '.join(reg)}, or a "
                                f"'module:callable'")
    try:
        fn = registry.import_target(reg.target_of(name))
    except registry.ImportTargetError as exc:
        raise RecipeConfigError(f"{section}.name: {exc}; run where the module imports (its directory, or one on "
                                f"PYTHONPATH)") from None
    builtin = entry is not None and "keys" in entry.meta
    kwargs = {k: cfg[k] for k in entry.meta["keys"]} if builtin else dict(cfg.get("args") or {})
    clash = sorted(set(kwargs) & set(injected)) if not builtin else []
    if clash:
        raise RecipeConfigError(f"{section}.args.{clash[0]} is given by the recipe; remove it from {section}.args")
    sig = registry.signature_of(fn, skip=1)
    kwargs.update({k: values[k] for k in injected if sig is not None and sig.takes(k)})
    return fn, kwargs


def _call(section: str, name: str, fn: Callable, first: Any, kwargs: dict) -> Any:
    try:
        return fn(first, **kwargs)
    except RecipeConfigError:
        raise
    except (TypeError, ValueError) as exc:  # torch's own argument checks, a signature mismatch
        raise RecipeConfigError(f"{section}.name {name}: {type(exc).__name__}: {exc}; check {section}") from exc


def _check_nesterov(momentum: float, nesterov: bool) -> None:
    if nesterov and momentum <= 0:
        raise RecipeConfigError(f"train.optimizer.nesterov needs momentum > 0 (got {momentum=}); "
                                f"set train.optimizer.momentum or nesterov false")


def sgd(params, *, lr: float, weight_decay: float, momentum: float, nesterov: bool) -> torch.optim.Optimizer:
    """``sgd``: SGD with momentum (and Nesterov's)."""
    _check_nesterov(float(momentum), bool(nesterov))
    return torch.optim.SGD(params, lr=float(lr), momentum=float(momentum), nesterov=bool(nesterov),
                           weight_decay=float(weight_decay))


def adam(params, *, lr: float, weight_decay: float, beta1: float, beta2: float, eps: float) -> torch.optim.Optimizer:
    """``adam``: Adam, L2 weight decay."""
    return torch.optim.Adam(params, lr=float(lr), betas=(float(beta1), float(beta2)), eps=float(eps),
                            weight_decay=float(weight_decay))


def adamw(params, *, lr: float, weight_decay: float, beta1: float, beta2: float, eps: float) -> torch.optim.Optimizer:
    """``adamw``: AdamW, decoupled weight decay."""
    return torch.optim.AdamW(params, lr=float(lr), betas=(float(beta1), float(beta2)), eps=float(eps),
                             weight_decay=float(weight_decay))


def rmsprop(params, *, lr: float, weight_decay: float, momentum: float, eps: float) -> torch.optim.Optimizer:
    """``rmsprop``: RMSprop with momentum."""
    return torch.optim.RMSprop(params, lr=float(lr), momentum=float(momentum), eps=float(eps),
                               weight_decay=float(weight_decay))


def adagrad(params, *, lr: float, weight_decay: float, eps: float) -> torch.optim.Optimizer:
    """``adagrad``: Adagrad."""
    return torch.optim.Adagrad(params, lr=float(lr), eps=float(eps), weight_decay=float(weight_decay))


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
        sched_cfg = {**schema.defaults(schema.lookup(("train", "lr_schedule"))), **sched_cfg}
        self.name = sched_cfg["name"]
        if self.name not in _KINDS:
            raise RecipeConfigError(f"train.lr_schedule.name {self.name!r} is not a schedule; "
                                    f"use one of {', '.join(_KINDS)}")
        self.optimizer = optimizer
        self.peaks = [group["lr"] for group in optimizer.param_groups]
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * epochs
        self.warmup_steps = round(float(sched_cfg["warmup_epochs"]) * steps_per_epoch)
        self.step_size = int(sched_cfg["step_size"])
        self.gamma = float(sched_cfg["gamma"])
        self.min_lr = float(sched_cfg["min_lr"])
        self.pct_start = float(sched_cfg["pct_start"])
        self.plateau_patience = int(sched_cfg["plateau_patience"])
        self.plateau_factor = float(sched_cfg["plateau_factor"])
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

    def rebase(self, peaks: list[float]) -> None:
        """Scale from new peak lrs, at the same position (PBT's perturbed lr after a restore)."""
        self.peaks = list(peaks)
        self._apply()

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


def reapply_hyperparameters(optimizer: torch.optim.Optimizer, schedule: Any, configured: list[dict]) -> None:
    """Put ``configured`` (:func:`hyperparameters` of a freshly built optimizer) back after a
    restored state overwrote them, keeping the restored schedule position."""
    for group, values in zip(optimizer.param_groups, configured):
        group.update(values)
    schedule.rebase([values["lr"] for values in configured])


def _cos_anneal(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, fraction))))


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: dict, steps_per_epoch: int,
                    epochs: int) -> Any:
    """The lr schedule from the spec's ``train.lr_schedule`` section: a built-in
    :class:`LRSchedule`, or a user's (``module:callable``) torch scheduler in a :class:`TorchSchedule`.

    Args:
        optimizer: whose groups' current ``lr`` is the peak.
        sched_cfg: ``name``, ``args`` (an import path's keyword arguments) and the built-ins'
            settings; missing keys take the schema's defaults.
        steps_per_epoch: optimizer steps per epoch (after accumulation and limit_batches).
        epochs: epochs of the run.

    Raises:
        RecipeConfigError: an unknown schedule, one that does not import, a setting out of
            range, or a callable that returns neither kind of schedule.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise RecipeConfigError(f"a schedule needs steps_per_epoch >= 1 and epochs >= 1 "
                                f"(got {steps_per_epoch=}, {epochs=})")
    cfg = {**schema.defaults(schema.lookup(("train", "lr_schedule"))), **sched_cfg}
    recipe = {"steps_per_epoch": steps_per_epoch, "epochs": epochs, "total_steps": steps_per_epoch * epochs}
    fn, kwargs = _target("train.lr_schedule", "a schedule", registry.LR_SCHEDULES, registry.LR_SCHEDULE_INJECTED, cfg, recipe)
    peaks = [group["lr"] for group in optimizer.param_groups]
    schedule = _call("train.lr_schedule", cfg["name"], fn, optimizer, kwargs)
    if isinstance(schedule, torch.optim.lr_scheduler.LRScheduler):
        return TorchSchedule(str(cfg["name"]), optimizer, schedule, peaks)
    if all(callable(getattr(schedule, m, None)) for m in ("step_batch", "step_epoch", "state_dict",
                                                          "load_state_dict", "rebase")):
        return schedule
    raise RecipeConfigError(f"train.lr_schedule.name {cfg['name']} returned a {type(schedule).__name__}, not a "
                            f"torch.optim.lr_scheduler.LRScheduler; return the scheduler")


class TorchSchedule:
    """A torch ``LRScheduler`` stepped the way the loop steps an :class:`LRSchedule`: ``step()``
    after every optimizer step; a ``ReduceLROnPlateau`` instead once per epoch, on val_loss.

    Args:
        name: what ``train.lr_schedule.name`` said (checked again when resuming).
        optimizer: the optimizer it schedules.
        scheduler: the torch scheduler.
        peaks: each group's lr before the scheduler was built.
    """

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, scheduler: Any, peaks: list[float]):
        self.name = name
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.peaks = list(peaks)
        self.per_epoch = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    @property
    def lr(self) -> float:
        """The first parameter group's current learning rate."""
        return self.optimizer.param_groups[0]["lr"]

    def step_batch(self) -> None:
        if not self.per_epoch:
            self.scheduler.step()

    def step_epoch(self, val_loss: float | None = None) -> None:
        if self.per_epoch and val_loss is not None and math.isfinite(val_loss):
            self.scheduler.step(val_loss)

    def rebase(self, peaks: list[float]) -> None:
        """Scale from new peak lrs (the groups hold them now), at the restored position."""
        bases = list(getattr(self.scheduler, "base_lrs", None) or self.peaks)
        last = list(getattr(self.scheduler, "_last_lr", None) or bases)
        for i, (group, peak) in enumerate(zip(self.optimizer.param_groups, peaks)):
            group["lr"] = peak * (last[i] / bases[i] if bases[i] else 1.0)
        if hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = list(peaks)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.peaks = list(peaks)

    def state_dict(self) -> dict:
        return {"name": self.name, "torch": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            RecipeConfigError: the state is of another schedule.
        """
        if state.get("name") != self.name:
            raise RecipeConfigError(f"the checkpoint's lr schedule is {state.get('name')!r} but "
                                    f"train.lr_schedule.name is {self.name!r}; resume with the same schedule")
        self.scheduler.load_state_dict(state["torch"])


def _builtin(name: str, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int,
             **settings: Any) -> LRSchedule:
    return LRSchedule(optimizer, {"name": name, **settings}, steps_per_epoch, epochs)


def constant(optimizer, *, steps_per_epoch: int, epochs: int, warmup_epochs: float) -> LRSchedule:
    """``constant``: the peak lr throughout (after the warmup)."""
    return _builtin("constant", optimizer, steps_per_epoch, epochs, warmup_epochs=warmup_epochs)


def step(optimizer, *, steps_per_epoch: int, epochs: int, warmup_epochs: float, step_size: int,
         gamma: float) -> LRSchedule:
    """``step``: times ``gamma`` every ``step_size`` epochs."""
    return _builtin("step", optimizer, steps_per_epoch, epochs, warmup_epochs=warmup_epochs, step_size=step_size,
                    gamma=gamma)


def cosine(optimizer, *, steps_per_epoch: int, epochs: int, warmup_epochs: float, min_lr: float) -> LRSchedule:
    """``cosine``: from the peak down to ``min_lr``."""
    return _builtin("cosine", optimizer, steps_per_epoch, epochs, warmup_epochs=warmup_epochs, min_lr=min_lr)


def onecycle(optimizer, *, steps_per_epoch: int, epochs: int, warmup_epochs: float, pct_start: float) -> LRSchedule:
    """``onecycle``: up from peak/25 for ``pct_start`` of the steps, then down."""
    return _builtin("onecycle", optimizer, steps_per_epoch, epochs, warmup_epochs=warmup_epochs,
                    pct_start=pct_start)


def plateau(optimizer, *, steps_per_epoch: int, epochs: int, warmup_epochs: float, plateau_patience: int,
            plateau_factor: float) -> LRSchedule:
    """``plateau``: times ``plateau_factor`` when val_loss stalls for ``plateau_patience`` epochs."""
    return _builtin("plateau", optimizer, steps_per_epoch, epochs, warmup_epochs=warmup_epochs,
                    plateau_patience=plateau_patience, plateau_factor=plateau_factor)
