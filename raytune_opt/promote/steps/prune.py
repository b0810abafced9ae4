"""The ``prune`` promotion step: structured channel pruning of the trial's model with
Torch-Pruning (:mod:`raytune_opt.promote.prune`), then fine-tuning with knowledge distillation
from the unpruned model (:mod:`raytune_opt.promote.compress`), gated against the trial
(``promote.prune.max_accuracy_drop``, a regression ``max_relative_change``) and saved as
``promotion/model.pruned.pt``: the trial's model spec plus the resized layers
(:mod:`raytune_opt.recipe.resize`), so ``raytune_opt.load_model`` rebuilds it without
Torch-Pruning. When its gate accepts it, the later steps convert it instead of the trial's.

A compression step: it runs first (``order``), and only when listed (``by_default`` false).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raytune_opt import registry
from raytune_opt.spec.fields import Field, Section

if TYPE_CHECKING:
    from torch import nn

    from raytune_opt.promote.context import StepContext

__all__ = ["prune", "check"]

SETTINGS = Section("promote.targets: prune. Structured channel pruning with Torch-Pruning (channels are "
                   "removed: a smaller, faster model), then fine-tuning on the trial's recipe with knowledge "
                   "distillation from the unpruned model.", {
    "ratio": Field("float", 0.5, "Fraction of the channels removed from each prunable layer (with "
                   "global_pruning: from the whole model).", gt=0, lt=1, tunable=False),
    "round_to": Field("int", 8, "Round every pruned layer's kept channels down to a multiple of this (so "
                      "more than ratio goes): ONNX Runtime's CPU convolutions work in blocks of 8 channels, "
                      "and other counts fall off that path (a CNN pruned to 22/44 channels ran 2.4-3.7x "
                      "slower than its unpruned 32/64); null: no rounding.", nullable=True, ge=1,
                      tunable=False),
    "global_pruning": Field("bool", False, "Rank channels across all layers (layers lose different "
                            "fractions) instead of removing ratio from each.", tunable=False),
    "finetune_epochs": Field("int", 2, "Epochs of fine-tuning after pruning (the trial's optimizer, "
                             "schedule, loss, augmentation); 0: none.", ge=0, tunable=False),
    "distill_alpha": Field("float", 0.5, "Weight of distillation from the unpruned model in the fine-tuning "
                           "loss (1 - alpha: the trial's own loss on the labels).", ge=0, le=1, tunable=False),
    "temperature": Field("float", 4.0, "Softmax temperature of the distillation (a regression matches the "
                         "teacher's outputs by MSE instead).", gt=0, tunable=False),
    "max_accuracy_drop": Field("float", 1.0, "Gate: most accuracy points the pruned, fine-tuned model may "
                               "lose vs the trial; a model that loses more is kept but rejected.", ge=0,
                               tunable=False),
    "max_relative_change": Field("float", 0.05, "Regression gate: most relative worsening of the metric "
                                 "vs the trial.", ge=0, tunable=False),
})

registry.PROMOTION_STEPS.register(
    "prune", f"{__name__}:prune", doc="structured channel pruning (Torch-Pruning removes channels), fine-tuned with "
    "distillation from the unpruned model, behind its gate", check=f"{__name__}:check", order=10, needs=(),
    compresses=True, by_default=False, settings=SETTINGS)

_UNUSED_WITHOUT_FINETUNING = ("distill_alpha", "temperature")


def check(view: registry.SpecView) -> list[registry.Finding]:
    """The prune step's rules beyond the schema's bounds: settings of the fine-tuning are
    refused when there is none (they would do nothing)."""
    cfg = view.data["promote"]["prune"]
    out = []
    if cfg["finetune_epochs"] == 0:
        for key in _UNUSED_WITHOUT_FINETUNING:
            if view.given(("promote", "prune", key)):
                out.append(registry.Finding(("promote", "prune", key), f"not used with finetune_epochs 0 (got "
                                            f"{cfg[key]})", "remove it, or fine-tune: promote.prune.finetune_epochs: 2",
                                            reads="promote.prune.finetune_epochs"))
    return out


def prune(ctx: StepContext) -> None:
    """Prune a copy of the trial's model, fine-tune it with distillation from the trial's,
    gate, save and record it (a model Torch-Pruning cannot prune: a failed record, one line)."""
    import copy

    from raytune_opt import progress
    from raytune_opt.promote import compress
    from raytune_opt.promote.errors import CompressionError
    from raytune_opt.promote.prune import prune_model
    from raytune_opt.recipe.errors import RecipeConfigError

    cfg = ctx.settings
    teacher = ctx.trial_model  # the first step: the model the chain had is the trial's
    try:
        with progress.step("prune: tracing the model and removing channels"):
            pruned = prune_model(copy.deepcopy(teacher), ctx.data.input_example, ratio=float(cfg["ratio"]),
                                 round_to=cfg["round_to"], global_pruning=bool(cfg["global_pruning"]))
        spec = _spec(ctx, pruned)
        epochs = int(cfg["finetune_epochs"])
        compress.distill_train(pruned, teacher, ctx, epochs=epochs, alpha=float(cfg["distill_alpha"]),
                               temperature=float(cfg["temperature"]), label="prune")
        recipe = dict(ctx.checkpoint["recipe"])
        compress.finish(ctx, pruned, made="pruned", spec=spec, recipe=recipe, epochs=epochs,
                        details={"pruning": {"ratio": cfg["ratio"], "round_to": cfg["round_to"],
                                             "global_pruning": cfg["global_pruning"], "library": _library(),
                                             "finetune_epochs": epochs}})
    except (CompressionError, RecipeConfigError) as exc:
        ctx.record("prune", "failed", reason=str(exc))


def _spec(ctx: StepContext, pruned: nn.Module) -> dict:
    """The trial's model spec plus the layers pruning resized (what load_model rebuilds)."""
    from raytune_opt.promote.errors import CompressionError
    from raytune_opt.recipe.resize import describe

    try:
        resized = describe(pruned, ctx.trial_model)
    except ValueError as exc:
        raise CompressionError(f"prune: {exc}") from None
    return {**ctx.checkpoint["model"], "resized": resized}


def _library() -> str:
    from importlib import metadata

    try:
        return f"torch-pruning {metadata.version('torch-pruning')}"
    except metadata.PackageNotFoundError:
        return "torch-pruning"
