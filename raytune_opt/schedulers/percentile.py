"""The ``percentile`` scheduler: Optuna's PercentilePruner and ThresholdPruner as a Ray Tune
scheduler.

At every epoch from ``scheduler.grace_period`` on, a trial is stopped when

- its metric there is worse than ``scheduler.threshold`` (below it when ``search.mode`` is max,
  above it when min), as Optuna's ``ThresholdPruner`` does; or
- its best value so far is outside the best ``scheduler.percentile`` percent of the values the
  other trials reported at that epoch (50: the median rule; 25: it must rank in the top
  quarter), once at least ``scheduler.min_samples_required`` others have reported there, as
  Optuna's ``PercentilePruner`` does, except that the others need not have finished (as Ray's
  ASHA and median rule, it compares with every trial that reached the epoch).

Either rule may be off (null); a value that is not a finite number is not judged. Its records
(each epoch's values, each trial's best) are kept in the experiment (``percentile_state.json``,
through ``schedulers/_persisted.py``), so a resumed sweep judges against the epochs reported
before the kill too.

This scheduler was added as one file: its registration, its settings (``percentile``,
``threshold``, and the shared ``grace_period`` and ``min_samples_required``), its rules and its
builder are all here. Importing it imports neither torch nor Ray.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

from raytune_opt import registry
from raytune_opt.registry import Finding, SpecView
from raytune_opt.schedulers._settings import GRACE_PERIOD, MIN_SAMPLES_REQUIRED, TIME_ATTR, check_grace_period
from raytune_opt.spec.fields import Field

if TYPE_CHECKING:
    from raytune_opt.spec import Spec

__all__ = ["percentile", "check", "STATE"]

registry.SCHEDULERS.register(
    "percentile", f"{__name__}:percentile", doc="stops a trial worse than a threshold, or outside the best percentile "
    "of the others at the same epoch (Optuna's ThresholdPruner and PercentilePruner)", check=f"{__name__}:check",
    order=90, hash_neutral=True, needs_storage=True, settings={
        "grace_period": GRACE_PERIOD,
        "min_samples_required": MIN_SAMPLES_REQUIRED,
        "percentile": Field("float", 50.0, "a trial is stopped when its best value so far is outside the best "
                            "percentile percent of the others' values at the same epoch (50: the median rule; 25: "
                            "top quarter); null: no percentile rule.", nullable=True, gt=0, lt=100, tunable=False),
        "threshold": Field("float", None, "a trial is stopped when its metric at an epoch is worse than this "
                           "(below it for mode max, above for min); null: no threshold.", nullable=True,
                           tunable=False),
    })


def check(view: SpecView) -> list[Finding]:
    """``grace_period`` within the epochs, and at least one rule on."""
    out = check_grace_period(view)
    sched = view.settings.scheduler
    if sched.percentile is None and sched.threshold is None:
        out.append(Finding(("scheduler", "percentile"), "percentile and threshold are both null: the percentile "
                           "scheduler would stop no trial (got null)", "set scheduler.percentile (e.g. 50) or "
                           "scheduler.threshold, or use scheduler.name: fifo", reads="scheduler.threshold"))
    return out


STATE = "percentile_state.json"  # in the experiment: each epoch's values and each trial's best


def percentile(spec: Spec, where: dict):
    s = spec.settings.scheduler
    return _percentile_class()(percentile=s.percentile, threshold=s.threshold, grace_period=s.grace_period,
                               min_samples_required=s.min_samples_required, where=where)


@functools.cache
def _percentile_class():
    import numpy as np
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    from raytune_opt.schedulers._persisted import PersistedState

    class PercentileStopper(PersistedState, FIFOScheduler):
        """Stops trials below a threshold or outside a percentile of the others (module
        docstring). Its records are kept in the experiment (``percentile_state.json``): a
        resumed sweep judges against the values from before the kill too."""

        def __init__(self, *, percentile: float | None, threshold: float | None, grace_period: int,
                     min_samples_required: int, where: dict):
            super().__init__()
            self._percentile, self._threshold = percentile, threshold
            self._grace_period, self._min_samples = grace_period, min_samples_required
            self._mode = None
            self._at: dict[float, dict[str, float]] = {}  # epoch -> trial id -> its value there
            self._best: dict[str, float] = {}  # trial id -> its best value so far
            self._num_stopped = 0
            self._init_persisted(where, STATE)

        def _state(self) -> dict:
            return {"at": [[t, values] for t, values in self._at.items()], "best": self._best,
                    "num_stopped": self._num_stopped}

        def _set_state(self, state: dict) -> None:
            self._at = {t: dict(values) for t, values in state["at"]}
            self._best = dict(state["best"])
            self._num_stopped = int(state["num_stopped"])

        def set_search_properties(self, metric, mode, **spec) -> bool:
            if (self._metric and metric) or (self._mode and mode):
                return False
            self._metric, self._mode = metric or self._metric, mode or self._mode
            return True

        def _worse(self, a: float, b: float) -> bool:
            return a < b if self._mode == "max" else a > b

        def on_trial_add(self, tune_controller, trial):
            self._load()

        def on_trial_result(self, tune_controller, trial, result):
            self._load()
            decision = self._decide(trial, result)
            self._persist_if_changed()
            return decision

        def _decide(self, trial, result) -> str:
            t, value = result.get(TIME_ATTR), result.get(self._metric)
            if not isinstance(t, (int, float)) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return TrialScheduler.CONTINUE
            tid = trial.trial_id
            best = self._best.get(tid, value)
            self._best[tid] = best = value if self._worse(best, value) else best
            others = [v for other, v in self._at.get(t, {}).items() if other != tid]
            self._at.setdefault(t, {})[tid] = value
            if t < self._grace_period:
                return TrialScheduler.CONTINUE
            if self._threshold is not None and self._worse(value, self._threshold):
                return self._stop()
            if self._percentile is not None and len(others) >= self._min_samples:
                # The value a trial must reach to be among the best `percentile` percent.
                cut = float(np.percentile(others, 100 - self._percentile if self._mode == "max" else self._percentile))
                if self._worse(best, cut):
                    return self._stop()
            return TrialScheduler.CONTINUE

        def _stop(self) -> str:
            self._num_stopped += 1
            return TrialScheduler.STOP

        def debug_string(self) -> str:
            return f"Using percentile stopping: num_stopped={self._num_stopped}."

    PercentileStopper.__module__ = __name__
    return PercentileStopper
