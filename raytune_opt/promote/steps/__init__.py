"""The built-in promotion steps, one module each, and your own steps by import path.

A step is a function ``step(ctx) -> None`` of a :class:`raytune_opt.promote.StepContext`.
Each module here is a whole step: it registers itself in
:data:`raytune_opt.registry.PROMOTION_STEPS` exactly as a user's code would (its name, target,
``order``, what it ``needs``, its ``settings`` section and its ``check``), and the registry
imports every module of this package when it is first imported. So a new built-in step is one
new file here; the schema puts its ``settings`` under ``promote.<name>``, the README's tables
and ``promote --targets`` list it, and ``tests/promote/test_steps.py`` runs it.

These modules import neither torch nor Ray when imported (validation imports them); a step
imports what it needs when it runs.

A step you write yourself is named in the spec by import path, ``promote.targets: [onnx,
mypkg.steps:card]``: it runs after the built-in steps, in the order listed, and gets the same
context (``ctx.settings`` is empty: it has no section of its own). Validation imports it and
checks that it takes the context (:func:`user_step_problem`); ``raytune-opt promote EXP``
imports one that the experiment's spec names only with ``--trust-code``
(:mod:`raytune_opt.trust`).
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

from raytune_opt import registry

__all__ = ["user_step_problem", "load_user_step", "check_enabled", "check_targets"]

_SHAPE = "define it as def step(ctx): ... (ctx: raytune_opt.promote.StepContext)"


class _NotAStep(registry.ImportTargetError):
    """It imports, but cannot be called with the context alone."""


def check_enabled(view: registry.SpecView) -> list[registry.Finding]:
    """Promotion starts from the best trial's checkpoint."""
    if view.settings.promote.enabled and not view.settings.train.checkpoint:
        return [registry.Finding(("train", "checkpoint"), "promotion needs the best trial's checkpoint (got false)",
                                 "set train.checkpoint: true or promote.enabled: false", reads="promote.enabled")]
    return []


def check_targets(view: registry.SpecView) -> list[registry.Finding]:
    """``promote.targets`` (validation runs this when the list itself is valid): each step of yours
    imports and takes the context, each built-in step's ``needs`` are listed too, and each
    built-in step's own ``check``."""
    targets, out = view.settings.promote.targets, []
    for i, target in enumerate(targets):
        entry = registry.PROMOTION_STEPS.get(target)
        if entry is None:  # your own step, by import path: it must import and take the context
            problem = user_step_problem(target, view.code_dirs)
            if problem:
                out.append(registry.Finding(("promote", "targets"), *problem, at=("promote", "targets", i)))
            continue
        for need in entry.meta.get("needs", ()):
            if need not in targets:
                from raytune_opt.spec.checker import fmt

                out.append(registry.Finding(("promote", "targets"), f"{target} is built from what the {need} step "
                                            f"makes (got {fmt(targets)})", f"add {need} to promote.targets"))
        out.extend(entry.checks(view))
    return out


def user_step_problem(target: str, code_dirs: Sequence[str] = ()) -> tuple[str, str] | None:
    """What is wrong with ``target``, a promotion step given by import path, as ``(what, fix)``;
    None when it imports and takes one positional argument (the context). Validation's check,
    with its guard on the import (a module that exits or hangs is a problem, not a stall)."""
    from raytune_opt.spec.checker import fmt
    from raytune_opt.spec.user_code import CODE_PATH_FIX

    try:
        load_user_step(target, code_dirs, guard_s=registry.IMPORT_TIMEOUT_S)
    except _NotAStep as exc:
        return str(exc), exc.fix
    except registry.ImportTargetError as exc:
        return f"{exc} (got {fmt(target)})", f"{exc.fix}; {CODE_PATH_FIX}"
    return None


def load_user_step(target: str, code_dirs: Sequence[str] = (), *, guard_s: float | None = None) -> Callable:
    """Import the promotion step ``target`` (``module:callable``) and check that it can be
    called with the context alone.

    Raises:
        ImportTargetError: it does not import, or its signature does not take one argument.
    """
    fn = registry.import_target(target, code_dirs, guard_s=guard_s)
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        raise _NotAStep(f"{target} must take the step context as its only argument (got a signature "
                                         f"{inspect.signature(fn)})", _SHAPE) from None
    except ValueError:  # no signature Python can read (a C callable): calling it will tell
        pass
    return fn
