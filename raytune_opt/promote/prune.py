"""The ``prune`` promotion step: structured channel pruning with Torch-Pruning, then
fine-tuning with knowledge distillation from the unpruned model.

Torch-Pruning (``torch-pruning`` on PyPI, Fang et al., CVPR 2023) traces a forward pass into
a dependency graph and removes whole channels: a conv's output channels together with the
batch norm after it, the input channels of every layer that reads them, and the channels
tied to them through residual additions and concatenations. The result is a smaller dense
model that is faster on every runtime, unlike ``torch.nn.utils.prune``, which only masks
weights to zero. Channels are ranked by the L2 norm of their group's weights; ``ratio`` of
them go from each prunable layer (with ``global_pruning``, ranked across layers, ``ratio``
of the whole model); ``round_to`` keeps counts multiples of a number. The layers that make
the model's output are never pruned, so it keeps its classes.

The pruned model is then fine-tuned on the trial's recipe with distillation from the
unpruned one (:mod:`.compress`), gated against the trial (``promote.prune.max_accuracy_drop``,
a regression ``max_relative_change``), and saved as ``promotion/model.pruned.pt``: the
trial's model spec plus the resized layers (:mod:`raytune_opt.recipe.resize`), so
``raytune_opt.load_model`` rebuilds it without Torch-Pruning, as the trial's own module
classes with fewer channels.

Torch-Pruning is imported here only, when a model is pruned. This module imports neither
torch nor Ray at import time (validation imports :func:`check`).
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

from raytune_opt import registry
from raytune_opt.promote.errors import CompressionError

if TYPE_CHECKING:
    from torch import nn

    from raytune_opt.promote.pipeline import _Run

__all__ = ["prune_step", "prune_model", "dry_run", "check"]

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


def prune_step(run: _Run) -> None:
    """Prune a copy of the trial's model, fine-tune it with distillation from the trial's,
    gate, save and record it (a model Torch-Pruning cannot prune: a failed record, one line)."""
    from raytune_opt import progress
    from raytune_opt.promote import compress, manifest
    from raytune_opt.recipe.errors import RecipeConfigError

    cfg = compress.settings(run.cfg, "prune")
    teacher = run.trial_model  # the first step: the model the chain had is the trial's
    try:
        with progress.step("prune: tracing the model and removing channels"):
            pruned = prune_model(copy.deepcopy(teacher), run.data.input_example, ratio=float(cfg["ratio"]),
                                 round_to=cfg["round_to"], global_pruning=bool(cfg["global_pruning"]))
        spec = _spec(run, pruned)
        epochs = int(cfg["finetune_epochs"])
        compress.distill_train(pruned, teacher, run, epochs=epochs, alpha=float(cfg["distill_alpha"]),
                               temperature=float(cfg["temperature"]), label="prune")
        recipe = dict(run.ckpt["recipe"])
        compress.finish(run, "prune", pruned, made="pruned", spec=spec, recipe=recipe, epochs=epochs,
                        details={"pruning": {"ratio": cfg["ratio"], "round_to": cfg["round_to"],
                                             "global_pruning": cfg["global_pruning"], "library": _library(),
                                             "finetune_epochs": epochs}})
    except (CompressionError, RecipeConfigError) as exc:
        run.add(manifest.artifact("prune", "failed", reason=str(exc)))


def _spec(run: _Run, pruned: nn.Module) -> dict:
    """The trial's model spec plus the layers pruning resized (what load_model rebuilds)."""
    from raytune_opt.recipe.resize import describe

    try:
        resized = describe(pruned, run.trial_model)
    except ValueError as exc:
        raise CompressionError(f"prune: {exc}") from None
    return {**run.ckpt["model"], "resized": resized}


def prune_model(model: nn.Module, example, *, ratio: float, round_to: int | None = None,
                global_pruning: bool = False) -> nn.Module:
    """Remove channels from ``model`` in place with Torch-Pruning; returns it (eval mode).

    Args:
        model: an eval-mode model (pruning traces one forward pass of ``example``).
        example: a batch of inputs with the shape and dtype the model takes.
        ratio: in (0, 1), the fraction of channels removed.
        round_to: channel counts kept multiples of this; None: no rounding.
        global_pruning: rank channels across layers instead of per layer.

    Raises:
        CompressionError: Torch-Pruning cannot trace or prune the model, pruning removed
            nothing (its graph is cut), or the pruned model no longer runs or changed its
            output's shape. One line, naming the cause.
        ValueError: ``ratio`` outside (0, 1) or ``round_to`` below 1 (the schema bounds them).
    """
    import torch

    from raytune_opt import _imports
    from raytune_opt.errors import describe_raised

    if not 0 < ratio < 1 or (round_to is not None and round_to < 1):
        raise ValueError(f"prune_model: ratio must be in (0, 1) and round_to >= 1 or None, but got {ratio=} "
                         f"{round_to=}")
    tp = _imports.require("torch_pruning", "promote.targets: prune")
    model.eval()
    example = example[:1]
    with torch.no_grad():
        before = model(example)
    params = sum(p.numel() for p in model.parameters())
    heads = _output_layers(model, example)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Torch-Pruning warns about every operation it treats as element-wise
            pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                          pruning_ratio=ratio, global_pruning=global_pruning, round_to=round_to,
                                          ignored_layers=heads)
            pruner.step()
    except Exception as exc:  # the tracer's many failure types on a model it cannot follow
        raise CompressionError(f"prune: Torch-Pruning cannot trace this model ({describe_raised(exc)}); remove prune "
                               f"from promote.targets, or use promote.targets: [distill, ...] with a smaller "
                               f"model") from None
    model.eval()
    if sum(p.numel() for p in model.parameters()) >= params:
        raise CompressionError("prune: Torch-Pruning found no channel it can remove: the forward pass is cut off "
                               "from its layers' weights (a detach, torch.no_grad or a non-torch operation in "
                               "forward); remove prune from promote.targets")
    try:
        with torch.no_grad():
            after = model(torch.cat([example, example]))
    except Exception as exc:
        raise CompressionError(f"prune: the pruned model no longer runs ({describe_raised(exc)}): its forward "
                               f"depends on channel counts Torch-Pruning cannot see (e.g. a reshape to a fixed "
                               f"size); derive them from the input, or remove prune from promote.targets") from None
    if tuple(after.shape[1:]) != tuple(before.shape[1:]):
        raise CompressionError(f"prune: pruning changed the model's output from {tuple(before.shape[1:])} to "
                               f"{tuple(after.shape[1:])} per sample; remove prune from promote.targets")
    return model


def _output_layers(model: nn.Module, example) -> list:
    """The weight layers whose outputs reach the model's output without passing another weight
    layer (the classifier, or every branch that sums into the output): left unpruned."""
    import torch

    made_by: dict[Any, Any] = {}

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            made_by.setdefault(output.grad_fn, module)  # an identity passes its input on: the maker comes first

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.enable_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    heads, seen, stack = [], set(), [getattr(out, "grad_fn", None)]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        module = made_by.get(fn)
        weight = getattr(module, "weight", None) if module is not None else None
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:  # a linear or conv layer: it sets the width
            if module not in heads:
                heads.append(module)
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return heads


def dry_run(model: nn.Module, example, cfg: dict) -> tuple[int, int]:
    """Prune a copy of ``model`` as ``promote.prune`` says (``validate --smoke``); the
    parameter counts before and after.

    Raises:
        CompressionError: as :func:`prune_model`.
    """
    twin = copy.deepcopy(model).eval()
    before = sum(p.numel() for p in twin.parameters())
    prune_model(twin, example, ratio=float(cfg["ratio"]), round_to=cfg["round_to"],
                global_pruning=bool(cfg["global_pruning"]))
    return before, sum(p.numel() for p in twin.parameters())


def _library() -> str:
    from importlib import metadata

    try:
        return f"torch-pruning {metadata.version('torch-pruning')}"
    except metadata.PackageNotFoundError:
        return "torch-pruning"
