"""What several schedulers share: the time unit, the ``scheduler.*`` settings more than one
entry reads, and the rules on ``max_t`` and ``grace_period``.

A scheduler entry declares every ``scheduler.*`` key it reads in its ``settings`` meta (a
mapping of key to :class:`~raytune_opt.spec.fields.Field`); the schema puts the union of
them under ``scheduler`` (:func:`raytune_opt.spec.schema.scheduler_section`), and a key two
entries read is one Field both declare. Those Fields are here, so that a scheduler in a file
of its own can declare them as the built-ins do. A Field's doc says what the key does; the
schema starts it with the schedulers that read it.

This module is private (the registry's discovery of :mod:`raytune_opt.schedulers` skips
it) and imports neither torch nor Ray.
"""

from __future__ import annotations

from raytune_opt.registry import Finding, SpecView
from raytune_opt.spec.fields import Field

TIME_ATTR = "epoch"

MAX_T = Field("int", None, "most epochs a trial may run; null: train.epochs.", nullable=True, ge=1, tunable=False)
GRACE_PERIOD = Field("int", 1, "epochs before a trial can be stopped.", ge=1, tunable=False)
REDUCTION_FACTOR = Field("float", 3.0, "halving rate (moasha: a trial goes on when it ranks in the top "
                         "1/reduction_factor of its rung).", gt=1, tunable=False)
MIN_SAMPLES_REQUIRED = Field("int", 3, "trials needed before stopping any.", ge=1, tunable=False)
PERTURBATION_INTERVAL = Field("int", 2, "epochs between exploit/explore steps.", ge=1, tunable=False)
QUANTILE_FRACTION = Field("float", 0.25, "fraction of trials that exploit the top ones.", gt=0, le=0.5,
                          tunable=False)
SYNCH = Field("bool", False, "every trial waits at each perturbation_interval until all have reached it (Ray's "
              "synchronous PBT; each wait restarts the trial from its checkpoint).", tunable=False)


def max_epochs(data: dict, space) -> int:
    """The most epochs a trial can run: train.epochs, or the top of its searched domain."""
    p = space.by_key.get("train.epochs")
    if p is None:
        return data["train"]["epochs"]  # data: a resolved spec (every key there)
    return max(p.domain.args) if p.domain.categorical else int(p.domain.args[1])


def check_max_t(view: SpecView) -> list[Finding]:
    """``max_t`` within the epochs a trial can run (the rule of every scheduler that reads max_t)."""
    max_t, epochs = view.settings.scheduler.max_t, max_epochs(view.data, view.space)
    if max_t is not None and max_t > epochs:
        return [Finding(("scheduler", "max_t"), f"exceeds train.epochs (got {max_t} > {epochs})",
                        "lower scheduler.max_t or raise train.epochs", reads="train.epochs")]
    return []


def check_grace_period(view: SpecView) -> list[Finding]:
    """``grace_period`` within the epochs a trial can run (``max_t`` where the scheduler has one)."""
    sched = view.settings.scheduler
    max_t = sched.max_t or max_epochs(view.data, view.space)
    if sched.grace_period > max_t:
        return [Finding(("scheduler", "grace_period"), f"exceeds the epochs a trial can run (got "
                        f"{sched.grace_period} > {max_t})", "lower scheduler.grace_period",
                        reads="train.epochs scheduler.max_t")]
    return []
