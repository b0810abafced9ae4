"""Schedulers: thin adapters over ``ray.tune.schedulers``, chosen by name.

Train V2 reports no ``training_iteration``-style counters of its own, so every scheduler
uses the epoch number the recipe reports (:data:`TIME_ATTR`) as its time unit.
"""

from __future__ import annotations

from typing import Callable

from raytune_opt.spec import Spec

TIME_ATTR = "epoch"


def _max_t(spec: Spec) -> int:
    sched, train = spec.data["scheduler"], spec.data["train"]
    if sched["max_t"]:
        return sched["max_t"]
    p = spec.space.by_key.get("train.epochs")
    if p is None:
        return train["epochs"]
    return max(p.domain.args) if p.domain.categorical else int(p.domain.args[1])


def _fifo(spec: Spec):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _asha(spec: Spec):
    from ray.tune.schedulers import ASHAScheduler

    s = spec.data["scheduler"]
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=_max_t(spec), grace_period=s["grace_period"],
                         reduction_factor=s["reduction_factor"], brackets=s["brackets"])


def _hyperband(spec: Spec):
    from ray.tune.schedulers import HyperBandScheduler

    s = spec.data["scheduler"]
    return HyperBandScheduler(time_attr=TIME_ATTR, max_t=_max_t(spec), reduction_factor=s["reduction_factor"])


def _median(spec: Spec):
    from ray.tune.schedulers import MedianStoppingRule

    s = spec.data["scheduler"]
    return MedianStoppingRule(time_attr=TIME_ATTR, grace_period=s["grace_period"],
                              min_samples_required=s["min_samples_required"])


def _pbt(spec: Spec):
    from ray.tune.schedulers import PopulationBasedTraining

    s = spec.data["scheduler"]
    seed = spec.data["search"]["seed"] if spec.data["search"]["seed"] is not None else spec.data["seed"]
    import random

    # PBT draws its perturbations from the global `random` module.
    random.seed(seed)
    return PopulationBasedTraining(
        time_attr=TIME_ATTR, perturbation_interval=s["perturbation_interval"],
        quantile_fraction=s["quantile_fraction"],
        hyperparam_mutations={p.key: p.domain.to_tune() for p in spec.space.params},
    )


SCHEDULERS: dict[str, Callable[[Spec], object]] = {
    "fifo": _fifo, "asha": _asha, "hyperband": _hyperband, "median": _median, "pbt": _pbt,
}


def build_scheduler(spec: Spec):
    """The Ray Tune scheduler the spec names (metric and mode come from TuneConfig)."""
    return SCHEDULERS[spec.data["scheduler"]["name"]](spec)
