"""What the trainer integrations share on the torch side: the strategy through which the
trial's checkpoints read a model whose optimizer the trainer owns, and the metrics as numbers.

Lightning's and Hugging Face's trainers step the model themselves; the context's
checkpoints still ask a :class:`~raytune_opt.strategies.base.Strategy` for the weights and
the optimizer state, so each integration subclasses :class:`TrainerOwned` and says where its
trainer keeps them.
"""

from __future__ import annotations

import torch

from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.strategies.base import Strategy

__all__ = ["TrainerOwned", "numbers", "param_groups", "restore_keeping_config"]


class TrainerOwned(Strategy):
    """A strategy whose trainer owns the optimizer and runs the steps: it restores the
    resumed weights into the model, hands the checkpoints rank zero's weights, and keeps the
    resumed checkpoint for the trainer's optimizer state (:attr:`resume`)."""

    loop = "?"  # the train.loop name, for the message of a step asked of it

    def __init__(self, session, train_cfg: dict):
        super().__init__(session, train_cfg)
        self.module: torch.nn.Module | None = None
        self.trainer = None
        self.resume: dict | None = None

    def setup(self, model, optimizer, resume=None, resume_path=None):
        if resume is not None:
            try:
                model.load_state_dict(resume["model_state"])
            except RuntimeError as exc:  # a size mismatch: the config builds another shape
                first = str(exc).strip().splitlines()[-1].strip()
                raise RecipeConfigError(
                    f"train.loop {self.loop}: the resumed checkpoint's weights do not fit the model this trial's "
                    f"config builds ({first}); a PBT exploit perturbs model.args keys, which must keep the "
                    f"model's shapes: search such a key with another scheduler, or fix it") from None
            self.resume = resume
        self.module = model
        self.session.watch_model(model)  # the trainer's DDP wraps it: the last report compares the ranks' copies
        return model

    def model_state_dict(self) -> dict | None:
        if not self.is_rank_zero:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in self.saved_state().items()}

    def saved_state(self) -> dict:
        """The tensors a checkpoint keeps (the whole state dict unless a subclass says less)."""
        return self.module.state_dict()

    def sync_context(self, boundary):  # the trainer runs the steps itself
        raise NotImplementedError(f"train.loop {self.loop}: the trainer steps the model")

    backward = step = sync_context


def numbers(metrics: dict) -> dict:
    """Scalar metrics as floats (what Tune and the checkpoint keep)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = float(value.item())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def param_groups(optimizers) -> list[list[dict]]:
    """Each optimizer's groups' hyperparameters (without the parameters): what
    :func:`restore_keeping_config` gives back after a load."""
    return [[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] for opt in optimizers]


def restore_keeping_config(optimizers, schedulers, load, fresh: list[list[dict]] | None = None) -> None:
    """Run ``load()`` (the trainer's optimizer and schedule states from the resumed
    checkpoint), then give each optimizer group back this trial's hyperparameters: the restored
    state keeps the schedule's position and the optimizer's moments, the config its learning
    rate, weight decay and the rest. They differ after PBT's exploit, which resumes a trial
    from the donor's checkpoint with its own, perturbed config (the built-in loop does the
    same: ``recipe.optim.reapply_hyperparameters``). A trainer's schedules are its base rate
    times a factor of the step or epoch, so the restored rate is scaled by the ratio of the
    two base rates (``initial_lr``); a plain resume's ratio is 1. An optimizer without a
    schedule takes the config's rate; one under ReduceLROnPlateau (no base rate) keeps the
    restored one.

    Args:
        optimizers: the trainer's optimizers, built from this trial's config.
        schedulers: their torch LR schedulers (``base_lrs`` and ``_last_lr`` follow).
        load: loads the saved states into them.
        fresh: this trial's hyperparameters (:func:`param_groups`), when the trainer loaded
            part of the state before ``load`` could run (DeepSpeed loads its optimizer shards
            itself): taken before that load.
    """
    fresh = param_groups(optimizers) if fresh is None else fresh
    scheduled = {id(getattr(sched, "optimizer", None)) for sched in schedulers}
    load()
    for opt, groups in zip(optimizers, fresh):
        for group, mine in zip(opt.param_groups, groups):
            if group.get("initial_lr") and "initial_lr" in mine:  # a schedule from a base rate
                lr = group["lr"] * mine["initial_lr"] / group["initial_lr"]
            elif id(opt) not in scheduled:  # a constant rate: the config's
                lr = mine["lr"]
            else:  # a schedule without a base rate (ReduceLROnPlateau): the donor's rate stays
                lr = group["lr"]
            group.update(mine)
            group["lr"] = lr
    for sched in schedulers:
        groups = sched.optimizer.param_groups
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [g.get("initial_lr", g["lr"]) for g in groups]
        if hasattr(sched, "_last_lr"):
            sched._last_lr = [g["lr"] for g in groups]
