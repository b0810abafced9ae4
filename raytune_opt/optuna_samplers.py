"""Optuna's genetic samplers, made picklable (registry.OPTUNA_SAMPLERS targets).

Ray saves a searcher's state by pickling its Optuna study, sampler included, into the
experiment (what ``resume`` restores). Optuna 5's genetic samplers hold a ``threading.Lock``,
which does not pickle ("cannot pickle '_thread.lock' object": the save failed and the sweep
could not resume). These subclasses drop the lock from the pickled state and make a new one
on load; they behave exactly as Optuna's own.
"""

from __future__ import annotations

import threading

import optuna


class _LockFreeState:
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


class NSGAIISampler(_LockFreeState, optuna.samplers.NSGAIISampler):
    """``optuna.samplers.NSGAIISampler``, picklable."""


class NSGAIIISampler(_LockFreeState, optuna.samplers.NSGAIIISampler):
    """``optuna.samplers.NSGAIIISampler``, picklable."""
