"""Structured channel pruning with Torch-Pruning: what the ``prune`` promotion step
(:mod:`raytune_opt.promote.steps.prune`) and ``validate --smoke`` use.

Torch-Pruning (``torch-pruning`` on PyPI, Fang et al., CVPR 2023) traces a forward pass into
a dependency graph and removes whole channels: a conv's output channels together with the
batch norm after it, the input channels of every layer that reads them, and the channels
tied to them through residual additions and concatenations. The result is a smaller dense
model that is faster on every runtime, unlike ``torch.nn.utils.prune``, which only masks
weights to zero. Channels are ranked by the L2 norm of their group's weights; ``ratio`` of
them go from each prunable layer (with ``global_pruning``, ranked across layers, ``ratio``
of the whole model); ``round_to`` keeps counts multiples of a number. The layers that make
the model's output are never pruned, so it keeps its classes.

Torch-Pruning is imported here only, when a model is pruned. This module imports neither
torch nor Ray at import time.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

from raytune_opt.promote.errors import CompressionError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["prune_model", "dry_run"]


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
