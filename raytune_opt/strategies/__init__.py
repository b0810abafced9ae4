"""Distributed strategies: how one trial's model and optimizer are set up, stepped and saved.

:class:`Strategy` is the interface the training loop is written against (modelled on
Lightning Fabric's); :class:`DDPStrategy` (PyTorch DDP, and the single process) and
:class:`~raytune_opt.strategies.deepspeed.DeepSpeedStrategy` (ZeRO 1-3) implement it.
DeepSpeed itself is imported only when a DeepSpeed trial starts.
"""

from __future__ import annotations

from raytune_opt import registry
from raytune_opt.strategies.base import Strategy
from raytune_opt.strategies.ddp import DDPStrategy

__all__ = ["Strategy", "DDPStrategy", "build_strategy", "strategy_class", "NAMES"]

NAMES = registry.STRATEGIES.names()


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
