"""Distributed strategies: how one trial's model and optimizer are set up, stepped and saved.

:class:`Strategy` is the interface the training loop is written against (modelled on
Lightning Fabric's); :class:`DDPStrategy` (PyTorch DDP, and the single process) and
:class:`~raytune_opt.strategies.deepspeed.DeepSpeedStrategy` (ZeRO 1-3) implement it.
DeepSpeed itself is imported only when a DeepSpeed trial starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raytune_opt import registry

if TYPE_CHECKING:
    from raytune_opt.strategies.base import Strategy

__all__ = ["Strategy", "DDPStrategy", "build_strategy", "strategy_class", "NAMES"]

NAMES = registry.STRATEGIES.names()
# Importing the package imports no torch (validation reads deepspeed_config, inside it): the
# classes that need torch are imported on first use.
_LAZY = {"Strategy": "raytune_opt.strategies.base", "DDPStrategy": "raytune_opt.strategies.ddp"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def strategy_class(name: str) -> type[Strategy]:
    """The Strategy class for ``train.strategy`` (a :data:`raytune_opt.registry.STRATEGIES`
    entry, imported when first used: DeepSpeed only for a DeepSpeed trial).

    Raises:
        RecipeConfigError: an unknown name.
    """
    entry = registry.STRATEGIES.get(name)
    if entry is None:
        from raytune_opt.recipe.errors import RecipeConfigError

        raise RecipeConfigError(f"train.strategy {name!r} is not a strategy; use one of {', '.join(NAMES)}")
    return entry.load()


def build_strategy(session, train_cfg: dict) -> Strategy:
    """The strategy ``train_cfg['strategy']`` names, for one rank of a trial run by ``session``."""
    return strategy_class(train_cfg["strategy"])(session, train_cfg)
