"""Losses: cross-entropy and focal (classification, with class weights); mse, l1 and huber
(regression: a (N, 1) output against (N,) numeric targets).

Both take logits and either class indices (N,) or soft targets (N, C) that sum to one per
row (Mixup/CutMix produce those). Reduction is a mean that matches
``torch.nn.functional.cross_entropy``: weighted by the targets' class weights for class
indices, over the batch for soft targets. So focal loss with ``gamma=0`` *is*
cross-entropy, weights included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.spec.view import view
from raytune_opt import registry

__all__ = ["build_loss", "class_weights", "CrossEntropy", "FocalLoss", "RegressionLoss"]


def class_weights(spec, y_train: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """Per-class weights from the spec's ``train.loss.class_weights``.

    ``"balanced"`` gives ``n_samples / (num_classes * count_c)`` (scikit-learn's
    definition: inverse class frequency, mean weight 1 over samples); a class absent from
    the training labels gets weight 0, since it never contributes to the loss anyway.

    Args:
        spec: None, ``"balanced"`` or a list of one non-negative number per class.
        y_train: training labels (class indices).
        num_classes: number of classes.

    Raises:
        RecipeConfigError: the list's length is not ``num_classes``, or the value is none
            of the accepted forms.
    """
    if spec is None:
        return None
    if spec == "balanced":
        counts = torch.bincount(y_train.long().flatten(), minlength=num_classes).double()
        weights = torch.where(counts > 0, len(y_train) / (num_classes * counts.clamp_min(1)), 0.0)
        return weights.float()
    if isinstance(spec, (list, tuple)):
        if len(spec) != num_classes:
            raise RecipeConfigError(f"train.loss.class_weights has {len(spec)} weights but the data has "
                                    f"{num_classes} classes; give one weight per class or use 'balanced'")
        return torch.tensor([float(w) for w in spec], dtype=torch.float32)
    raise RecipeConfigError(f"train.loss.class_weights must be null, 'balanced' or a list (got {spec!r})")


class CrossEntropy(nn.Module):
    """Cross-entropy with label smoothing and class weights; hard or soft targets."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise RecipeConfigError(f"train.loss.label_smoothing must be in [0, 1) (got {label_smoothing})")
        self.register_buffer("weight", weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): ``-sum_c w_c t_c (1 - p_c)^gamma log p_c``."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        if gamma < 0:
            raise RecipeConfigError(f"train.loss.focal_gamma must be >= 0 (got {gamma})")
        self.gamma = float(gamma)
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        hard = target.dim() == 1
        soft = F.one_hot(target, log_p.shape[1]).to(log_p.dtype) if hard else target.to(log_p.dtype)
        modulating = (1 - log_p.exp()).pow(self.gamma) if self.gamma else 1.0
        per_class = -soft * modulating * log_p
        if self.weight is not None:
            per_class = per_class * self.weight
        total = per_class.sum()
        if hard and self.weight is not None:
            # As F.cross_entropy: a weighted mean over the targets' weights.
            return total / self.weight[target].sum()
        return total / logits.shape[0]


class RegressionLoss(nn.Module):
    """``mse``, ``l1`` or ``huber`` (delta 1) between a (N, 1) output and (N,) targets, mean over the batch."""

    _FN = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = self._FN[name]

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(output.float().reshape(target.shape), target.float())


def build_loss(loss_cfg: dict, y_train: torch.Tensor | None, num_classes: int,
               task: str = "classification") -> nn.Module:
    """The training loss from the spec's ``train.loss`` section.

    ``label_smoothing`` applies to cross_entropy only (the schema documents it so); focal
    loss takes ``focal_gamma``. Both use ``class_weights``.

    Args:
        loss_cfg: ``name``, ``label_smoothing``, ``class_weights``, ``focal_gamma``.
        y_train: training labels, read only for ``class_weights: balanced`` (else may be None).
        num_classes: number of classes.
        task: the data set's task; the loss must be one of its.

    Raises:
        RecipeConfigError: an unknown loss name, one of the other task, or bad class weights.
    """
    loss = view(("train", "loss"), loss_cfg)
    name = loss.name
    entry = registry.LOSSES.get(name)
    if entry is None:
        raise RecipeConfigError(f"train.loss.name {name!r} is not a loss; use {', '.join(registry.LOSSES)}")
    if entry.meta["task"] != task:
        fit = ", ".join(n for n in registry.LOSSES if registry.LOSSES[n].meta["task"] == task)
        raise RecipeConfigError(f"train.loss.name {name} is a {entry.meta['task']} loss but the data set holds a "
                                f"{task} task; use {fit}")
    kwargs = dict(entry.meta.get("fixed", {}))
    kwargs.update({arg: loss_cfg[key] for key, arg in entry.meta.get("args", {}).items() if key in loss_cfg})
    if task == "classification":
        kwargs["weight"] = class_weights(loss.class_weights, y_train, num_classes)
    return entry.load()(**kwargs)
