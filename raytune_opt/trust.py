"""Which code a file may make raytune-opt import: built-ins always, the user's only when trusted.

Checkpoints, an experiment's resolved spec (``spec.yaml``) and its run record name code: a
model's or a data set's ``target`` (``module:callable``) with the arguments to call it with, a
promotion step of ``promote.targets``, and the directories to import it from (``code_dirs``). Rebuilding the model imports and
calls that target; ``torch.load(weights_only=True)`` does not help, since the code is named,
not pickled. So, as Hugging Face's ``trust_remote_code``:

- a built-in target (one some entry of the registry holds, matched exactly, e.g.
  ``raytune_opt.recipe.models:small_cnn``) is always imported;
- any other target named by a file (``mypkg.models:Net``, but also ``os:system`` or
  ``raytune_opt.recipe.models:torch.save``) is imported only when the caller trusts the file:
  ``load_model(path, trust_code=True)``, ``raytune-opt promote EXP --trust-code``; otherwise
  :class:`UntrustedCodeError`, one line naming the target, the file and the flag, raised
  before anything is imported or written.

``run`` trusts the spec it is given (its own promotion needs no flag) and ``resume`` the
experiment it resumes (Ray's restore unpickles the experiment's state anyway). ``report``
imports no user code at all: it reads the files as data.

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import os
from typing import Any

from raytune_opt import registry
from raytune_opt.errors import UsageError

__all__ = ["UntrustedCodeError", "FLAG", "builtin", "require", "checkpoint_model_target", "section_target",
           "check_checkpoint"]

#: The command-line flag that trusts an experiment's files (``promote``).
FLAG = "--trust-code"


class UntrustedCodeError(UsageError):
    """A file names code outside raytune-opt and the caller did not say it trusts the file."""


def builtin(target: Any, reg: registry.Registry) -> bool:
    """Whether ``target`` is exactly the target of an entry of ``reg`` (never a prefix match:
    ``raytune_opt_evil:x`` and ``raytune_opt.recipe.models:torch.save`` are not built-in)."""
    return isinstance(target, str) and any(reg[name].target == target for name in reg)


def require(target: Any, reg: registry.Registry, *, source: str | os.PathLike, trust_code: bool,
            what: str = "model") -> None:
    """Refuse to import ``target``, named by the file ``source``, unless it is built-in or trusted.

    Args:
        target: the ``module:callable`` the file names.
        reg: the registry whose entries are built-in for it (:data:`registry.MODELS`...).
        source: the file that names it (a checkpoint, an experiment's spec.yaml).
        trust_code: the caller trusts the file (``trust_code=True``, ``--trust-code``).
        what: what the target is, for the message (``model``, ``data set``).

    Raises:
        UntrustedCodeError: not built-in and not trusted.
    """
    if trust_code or builtin(target, reg):
        return
    raise UntrustedCodeError(
        f"{source} names your own {what} {target}; raytune-opt imports code named by a file only when you trust "
        f"it: add {FLAG} (Python: trust_code=True) if this is your own experiment")


def checkpoint_model_target(spec: Any) -> Any:
    """What a checkpoint's model spec makes :func:`~raytune_opt.recipe.models.build_model_from_spec`
    import: its ``target`` when it has one, else None (a built-in named by its registry name)."""
    return spec.get("target") if isinstance(spec, dict) and "target" in spec else None


def section_target(name: Any, reg: registry.Registry) -> Any:
    """What a spec section naming ``name`` (``model.name``, ``data.dataset``) makes the recipe
    import: None for a built-in (an entry that reads its section's keys) or a name that is
    neither registered nor an import path (that is refused without importing anything), else
    the import path (a registered user entry's target, or ``name`` itself)."""
    if not isinstance(name, str):
        return None
    entry = reg.get(name)
    if entry is not None and "keys" in entry.meta:
        return None
    if entry is None and not registry.is_import_path(name):
        return None
    return reg.target_of(name)


def check_checkpoint(ckpt: dict, source: str | os.PathLike, *, trust_code: bool, data: bool = False) -> None:
    """Refuse a checkpoint whose model (and, with ``data``, whose recipe's data set) is
    neither built-in nor trusted.

    Raises:
        UntrustedCodeError: as :func:`require`.
    """
    target = checkpoint_model_target(ckpt.get("model"))
    if target is not None:
        require(target, registry.MODELS, source=source, trust_code=trust_code)
    if data:
        recipe = ckpt.get("recipe") if isinstance(ckpt.get("recipe"), dict) else {}
        section = recipe.get("data") if isinstance(recipe.get("data"), dict) else {}
        from raytune_opt.spec.view import view

        target = section_target(view(("data",), section).dataset, registry.DATASETS)
        if target is not None:
            require(target, registry.DATASETS, source=source, trust_code=trust_code, what="data set")
