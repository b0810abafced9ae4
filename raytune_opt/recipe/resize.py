"""Models whose layers were resized after they were built, described in plain values.

Structured pruning (:mod:`raytune_opt.promote.prune`, with Torch-Pruning) removes channels
from a built model in place: the modules stay where they were, only their sizes change (a
conv's ``out_channels`` and weight, the next batch norm's ``num_features`` and buffers...).
Such a model is described by the spec of the model it was built from plus, per module that
changed, the plain attributes that changed and the new shapes of its tensors::

    {"layer1.0.conv1": {"attrs": {"out_channels": 32}, "shapes": {"weight": [32, 64, 3, 3]}}, ...}

Why this and not a pickled module, TorchScript or ``torch.export``: checkpoints are read
with ``torch.load(weights_only=True)`` (no unpickling of classes), and this description is
plain ints, strings and lists, so it rides in the checkpoint's model spec. Rebuilding needs
only the model's own builder and PyTorch, not the tool that pruned it, and gives back the
same ``nn.Module`` classes as the trial's (a user model's own ``forward``), which promotion
exports to ONNX as any other model. TorchScript is deprecated and loads with
``torch.jit.load``, not ``torch.load``; an exported program is a graph, not the module.
It holds for tools that only resize existing modules; :func:`describe` refuses a model
whose modules were added, removed or replaced.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from raytune_opt.recipe.errors import RecipeConfigError

__all__ = ["describe", "apply"]

_PLAIN = (bool, int, float, str)


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, _PLAIN) for v in value)
    return isinstance(value, _PLAIN)


def describe(model: nn.Module, base: nn.Module) -> dict:
    """What differs between ``model`` (resized) and ``base`` (as built): per module, the plain
    public attributes that changed and the new shapes of its own parameters and buffers.

    Raises:
        ValueError: the two do not have the same modules under the same names and types, or
            an attribute that changed is not a plain value (then this description cannot
            rebuild the model).
    """
    mods, base_mods = dict(model.named_modules()), dict(base.named_modules())
    if list(mods) != list(base_mods) or any(type(mods[n]) is not type(base_mods[n]) for n in mods):
        changed = sorted(set(mods) ^ set(base_mods)) or [n for n in mods if type(mods[n]) is not type(base_mods[n])]
        raise ValueError(f"the resized model's modules differ from the built model's ({', '.join(changed[:3])}); "
                         f"only resized layers can be described")
    out: dict = {}
    for name, module in mods.items():
        before = vars(base_mods[name])
        attrs = {}
        for key, value in vars(module).items():
            if key.startswith("_") or key == "training" or before.get(key) == value:
                continue
            if not _plain(value):
                raise ValueError(f"module {name or '(root)'}: attribute {key} changed to a {type(value).__name__}, "
                                 f"which a checkpoint cannot describe")
            attrs[key] = list(value) if isinstance(value, tuple) else value
        shapes = {}
        own = {**module._parameters, **module._buffers}
        base_own = {**base_mods[name]._parameters, **base_mods[name]._buffers}
        for key, tensor in own.items():
            old = base_own.get(key)
            if tensor is not None and (old is None or tensor.shape != old.shape):
                shapes[key] = list(tensor.shape)
        if attrs or shapes:
            out[name] = {"attrs": attrs, "shapes": shapes}
    return out


def apply(model: nn.Module, resized: dict) -> nn.Module:
    """Resize ``model`` (as built from its spec) as :func:`describe` recorded, in place.

    Each resized tensor is replaced by a freshly initialised one of the recorded shape (the
    module's ``reset_parameters`` where it has one), so the result can be trained as well as
    loaded into.

    Raises:
        RecipeConfigError: a recorded module is not in ``model`` (the checkpoint is from
            another version of the model).
    """
    for name, change in resized.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise RecipeConfigError(f"the checkpoint resizes module {name!r}, which the model does not have; it was "
                                    f"saved from another version of the model") from None
        for key, value in change.get("attrs", {}).items():
            current = getattr(module, key, None)
            setattr(module, key, tuple(value) if isinstance(current, tuple) else value)
        for key, shape in change.get("shapes", {}).items():
            old = module._parameters.get(key, module._buffers.get(key))
            dtype = old.dtype if old is not None else torch.float32
            device = old.device if old is not None else None
            tensor = torch.zeros(shape, dtype=dtype, device=device)
            if key in module._parameters:
                module._parameters[key] = nn.Parameter(tensor, requires_grad=old is None or old.requires_grad)
            else:
                module._buffers[key] = tensor
        if change.get("shapes") and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model
