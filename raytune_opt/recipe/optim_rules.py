"""The built-in optimizers' rules on a spec: what ``train.optimizer`` may say, given the optimizers
the sweep may use.

A function here is the ``check`` of a :data:`raytune_opt.registry.OPTIMIZERS` entry (by import
path); validation runs the checks of the optimizers the sweep may use. Next to :mod:`.optim`,
which builds them; this module imports neither torch nor Ray.
"""

from __future__ import annotations

from raytune_opt.registry import Finding, SpecView


def check_sgd(view: SpecView) -> list[Finding]:
    """Nesterov momentum needs momentum (torch's SGD raises on nesterov with momentum 0; a
    searched momentum is left to the trials that draw it)."""
    opt = view.settings.train.optimizer
    if opt.nesterov is True and opt.momentum == 0 and "train.optimizer.momentum" not in view.space.by_key:
        return [Finding(("train", "optimizer", "nesterov"), "Nesterov momentum needs momentum > 0 (got momentum=0)",
                        "set train.optimizer.momentum > 0 or nesterov: false", reads="train.optimizer.momentum")]
    return []
