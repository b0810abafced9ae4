"""What the compression steps (:mod:`.steps.prune`, :mod:`.steps.distill`) share: training a model with
knowledge distillation from a teacher on the trial's own recipe, and turning the result into
an artifact (scored, gated against the trial, saved as a checkpoint ``raytune_opt.load_model``
reads, and made the model the later steps convert when it passes its gate).

The distillation loss (Hinton et al., 2015), with ``alpha`` and temperature ``T``::

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss

where the task loss is the trial's ``train.loss`` on the labels (soft ones under Mixup or
CutMix); for a regression the first term is the mean squared error between the student's
and the teacher's outputs (no temperature).

Training reuses the recipe's parts as the trial's checkpoint records them: the data bundle,
``train.batch_size``, ``train.optimizer`` (its peak lr), ``train.lr_schedule`` stretched
over the fine-tuning epochs, ``train.loss``, ``train.augment``, ``train.grad_clip_norm``
and ``train.limit_batches``; every epoch reseeded as the loop does. It runs in the process
that promotes (the driver), one device (CUDA when there is one), fp32, one optimizer step per
batch (no accumulation, no DDP). A trial trained by a user loop is fine-tuned with these
built-in settings too. A non-finite loss stops it with a :class:`CompressionError`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raytune_opt import progress
from raytune_opt.promote import measure
from raytune_opt.promote.errors import CompressionError

if TYPE_CHECKING:
    from raytune_opt.promote.context import StepContext

__all__ = ["kd_loss", "distill_train", "footprint_of", "finish"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, task_loss: nn.Module, *,
            alpha: float, temperature: float, regression: bool) -> torch.Tensor:
    """The distillation loss of one batch (see the module's docstring)."""
    student = student.float()
    task = task_loss(student, target) if alpha < 1 else student.new_zeros(())
    if alpha == 0:
        return task
    if regression:
        soft = F.mse_loss(student, teacher.float().reshape(student.shape))
    else:
        t = float(temperature)
        soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                        reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * task


def _recipe_train(ctx: StepContext) -> dict:
    """The trial's ``train`` section with the schema's defaults under it."""
    from raytune_opt.spec import schema

    def merge(default, given):
        if isinstance(default, dict) and isinstance(given, dict):
            return {**default, **{k: merge(default.get(k), v) for k, v in given.items()}}
        return given

    return merge(schema.defaults(schema.lookup(("train",))), ctx.checkpoint["recipe"].get("train") or {})


def distill_train(student: nn.Module, teacher: nn.Module, ctx: StepContext, *, epochs: int, alpha: float,
                  temperature: float, label: str) -> None:
    """Train ``student`` in place for ``epochs`` epochs of the trial's recipe with distillation
    from ``teacher`` (both end on the CPU, in eval mode; nothing happens for 0 epochs).

    Raises:
        CompressionError: the loss became non-finite.
        RecipeConfigError: the recipe's loss, optimizer or schedule cannot be built here.
    """
    if epochs <= 0:
        return
    from raytune_opt.recipe.augment import Augmenter
    from raytune_opt.recipe.bundle import make_loader, train_labels
    from raytune_opt.recipe.context import epoch_seed
    from raytune_opt.recipe.losses import build_loss
    from raytune_opt.recipe.optim import build_optimizer, build_scheduler

    data, tcfg, seed = ctx.data, _recipe_train(ctx), ctx.seed
    regression = data.task == "regression"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    labels = train_labels(data.train) if tcfg["loss"].get("class_weights") == "balanced" else None
    loss_fn = build_loss(tcfg["loss"], labels, data.num_classes, data.task).to(device)
    augment = Augmenter(tcfg["augment"], data.num_classes, data.in_channels or 1, seed=seed, device=device)
    generator = torch.Generator()
    loader = make_loader(data, "train", tcfg["batch_size"], shuffle=True, generator=generator)
    limit = tcfg["limit_batches"]
    n = len(loader) if limit is None else min(len(loader), int(limit))
    student.to(device).train()
    teacher.to(device).eval()
    optimizer = build_optimizer(student.parameters(), tcfg["optimizer"])
    schedule = build_scheduler(optimizer, tcfg["lr_schedule"], n, epochs)
    clip = tcfg["grad_clip_norm"]
    try:
        for epoch in range(1, epochs + 1):
            s = epoch_seed(seed, epoch, 0)
            torch.manual_seed(s)
            generator.manual_seed(s)
            augment.reseed(s)
            total, samples = torch.zeros((), dtype=torch.float64, device=device), 0
            with progress.step(f"{label}: training with distillation, epoch {epoch} of {epochs}"):
                for i, (x, y) in enumerate(loader):
                    if i >= n:
                        break
                    x, y = x.to(device), y.to(device)
                    if augment.active:
                        x, y = augment(x, y)
                    with torch.no_grad():
                        t = teacher(x)
                    loss = kd_loss(student(x), t, y, loss_fn, alpha=alpha, temperature=temperature,
                                   regression=regression)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if clip:
                        nn.utils.clip_grad_norm_(student.parameters(), float(clip))
                    optimizer.step()
                    schedule.step_batch()
                    total += loss.detach() * x.shape[0]
                    samples += x.shape[0]
            mean = total.item() / max(samples, 1)
            if not math.isfinite(mean):
                raise CompressionError(f"{label}: the distillation loss became non-finite in epoch {epoch}; lower "
                                       f"train.optimizer.lr for this trial or promote.{label}'s epochs")
            # plateau steps on the validation loss in the loop; the training loss stands in for it here.
            schedule.step_epoch(mean)
    finally:
        student.cpu().eval()
        teacher.cpu().eval()


def footprint_of(model: nn.Module, example: torch.Tensor) -> dict:
    """``params`` and ``macs`` of ``model`` on one sample (MACs None when PyTorch's counter
    cannot run the model)."""
    from raytune_opt.recipe import footprint

    out = {"params": footprint.count_params(model), "macs": None}
    try:
        out["macs"] = footprint.count_macs(model, example[:1])
    except Exception:  # the FLOP counter on a model it cannot dispatch: the count is a nicety, not the step
        pass
    return out


def finish(ctx: StepContext, model: nn.Module, *, made: str, spec: dict, recipe: dict, epochs: int,
           details: dict) -> None:
    """Score ``model`` (the output of the compression step ``ctx.step``), save it as
    ``promotion/model.<made>.pt``, gate it against the trial and record it; when it passes,
    the later steps convert it instead of the model they had.

    Args:
        made: what the step made, for the file name and reason lines (``pruned``, ``distilled``).
        spec: the model spec its checkpoint records (``load_model`` rebuilds it from that).
        recipe: the recipe its checkpoint records.
        epochs: the epochs it was trained for.
        details: step-specific facts for its manifest record (and its checkpoint).

    Raises:
        CompressionError: the saved checkpoint does not rebuild the model exactly.
    """
    from raytune_opt.recipe.checkpoint import load_model, make_checkpoint, save_checkpoint

    name, cfg = ctx.step, ctx.settings
    model.eval()
    runner = measure.torch_runner(model)
    with progress.step(f"{name}: scoring, measuring latency"):
        outputs = measure.predict(runner, ctx.x_val)
        score = ctx.scorer.score(outputs, ctx.y_val)
        latency = measure.latencies(runner, ctx.x_val)
        test = ctx.test_score(runner)
    metric = "val_accuracy" if not ctx.scorer.regression else f"val_{ctx.scorer.metric}"
    path = ctx.out_dir / f"model.{made}.pt"
    save_checkpoint(make_checkpoint(
        model_spec=spec, model_state=model.state_dict(), epoch=epochs, metrics={metric: score}, recipe=recipe,
        spec_sha256=str(ctx.checkpoint.get("spec_sha256", "")),
        extra={"promotion": {"step": name, "trial_id": ctx.source.trial_id, "settings": cfg, **details}}), path)
    # The spec names the model this promotion built: a user one only where the experiment is trusted.
    _check_reloads(path, outputs, ctx.x_val, lambda p: load_model(p, trust_code=ctx.trust_code), made)
    limit = cfg["max_relative_change"] if ctx.scorer.regression else cfg["max_accuracy_drop"]
    gate = measure.Scorer(ctx.scorer.metric, float(limit), section=name, against="the trial")
    reason = gate.rejection(score, ctx.fp32)
    size = footprint_of(model, ctx.data.input_example)
    trial = ctx.artifacts[0]  # the pytorch row
    of_trial = {k: (size[k] / trial[k] if size.get(k) is not None and trial.get(k) else None) for k in size}
    ctx.record(name, "rejected" if reason else "ok", path=path, reason=reason, **ctx.scored(score, test),
               latency_ms=latency, runtime=f"pytorch cpu, {ctx.threads} threads", **size, of_trial=of_trial,
               from_step=None, **details)
    if not reason:
        ctx.use(model, outputs, score, size, against=f"the {made} fp32 model")


def _check_reloads(path, outputs: np.ndarray, x_val: np.ndarray, load_model, made: str) -> None:
    """The checkpoint must rebuild the very model that was scored (what a user loads is what the manifest describes)."""
    model, _ = load_model(path)
    again = measure.predict(measure.torch_runner(model), x_val[:256])
    if again.shape != outputs[:256].shape or not np.allclose(again, outputs[:256], rtol=1e-4, atol=1e-5):
        raise CompressionError(f"the {made} model saved in {path.name} does not rebuild to the same model (its "
                               f"outputs differ); the model's structure cannot be described by its checkpoint")
