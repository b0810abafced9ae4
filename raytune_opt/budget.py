"""Sweep budgets (``search.budget``): a wall-clock limit, a limit on trial resource-hours and a
plateau rule; when one is reached the sweep stops proposing and its running trials are stopped.

The rules and the budget's state (the :class:`Ledger`: time spent, resource-seconds, the
finished trials' values, why the budget ended) are plain Python, checked and tested without
Ray. :func:`tune_parts` builds what applies them during a sweep: a ``ray.tune.Callback`` that
keeps the ledger (it sees trials run, report and end) and a ``ray.tune.Stopper`` whose
``stop_all`` ends the experiment when the ledger says so (Tune then stops proposing and stops
every live trial, as for its own ``time_budget_s``).

Why not Ray's ``TuneConfig(time_budget_s=)`` (a ``TimeoutStopper``) for the time: Tune keeps
its stopper inside its own experiment state, so a resumed sweep gets back only what was spent
up to Tune's last save (seconds to minutes old after a kill), the state is a pickle nothing
else can read before Tune restores it, and it says nothing of why a sweep ended; resource-hours
and the plateau need a callback anyway. Ray's ``ExperimentPlateauStopper`` looks at the spread
of the top results' values per result, not at the best over finished trials. So the ledger is
kept in the experiment (``budget.json``), written atomically (an S3 object appears whole) at
every trial's end and at most every :data:`SAVE_EVERY_S` (local) / :data:`SAVE_EVERY_S3` (S3)
in between; a resumed sweep's callback (the copy ``tuner.pkl`` holds) reads it back when the
fit starts, and ``resume`` reads it before Ray starts to say what is left. A kill -9 loses at
most that much of the clock.

Torch-free and Ray-free (validation imports it); Ray is imported by :func:`tune_parts` only.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from raytune_opt import objectives
from raytune_opt import storage as stores
from raytune_opt.experiment import BUDGET
from raytune_opt.registry import Finding

FORMAT = "raytune-opt/budget/v1"
SAVE_EVERY_S = 1.0  # the clock's saves between trial events, local experiment
SAVE_EVERY_S3 = 10.0  # ... S3 experiment (one PUT each)
CAPACITY_EVERY_S = 10.0  # how often the cluster's resources are asked of Ray (resource_hours' cap)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_TIME = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*$")
RULES = ("time", "resource_hours", "plateau")


# ---------------------------------------------------------------- the spec's settings


def parse_time(value: Any) -> float:
    """``search.budget.time`` in seconds: a number of seconds, or ``90s``, ``30m``, ``2h``.

    Raises:
        ValueError: anything else, or a value that is not above 0.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _TIME.match(value) if isinstance(value, str) else None
        if m is None:
            raise ValueError(f"not a duration: {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"not above 0: {value!r}")
    return seconds


def time_problem(value: Any) -> str | None:
    """What is wrong with a ``search.budget.time`` value (the schema's check), or None."""
    if value is None:
        return None
    try:
        parse_time(value)
    except ValueError:
        return "must be seconds above 0 or a duration such as 90s, 30m, 2h"
    return None


@dataclass(frozen=True)
class Limits:
    """A spec's budget: what is limited, and what the rules read."""

    time: Any = None  # as written: seconds or "2h"
    resource_hours: float | None = None
    plateau_trials: int | None = None
    min_delta: float = 0.0
    metric: str = "val_accuracy"  # the plateau's: the first objective
    mode: str = "max"
    resource: str = "CPU"  # GPU when trials use GPUs
    per_trial: float = 1.0  # resource units one trial holds (workers x per worker)

    @classmethod
    def from_spec(cls, data: dict) -> "Limits":
        """The budget of a resolved spec (``Spec.data``)."""
        b = data["search"].get("budget") or {}
        plateau = b.get("plateau") or {}
        res = data["resources"]
        gpus = res["gpus_per_worker"] * res["num_workers"]
        metric, mode = objectives.primary(data["search"])
        return cls(time=b.get("time"), resource_hours=b.get("resource_hours"), plateau_trials=plateau.get("trials"),
                   min_delta=float(plateau.get("min_delta") or 0.0), metric=metric, mode=mode,
                   resource="GPU" if gpus > 0 else "CPU",
                   per_trial=float(gpus if gpus > 0 else res["cpus_per_worker"] * res["num_workers"]))

    @property
    def time_s(self) -> float | None:
        return None if self.time is None else parse_time(self.time)

    @property
    def any(self) -> bool:
        return self.time is not None or self.resource_hours is not None or self.plateau_trials is not None

    def describe(self) -> str:
        """``time 2h, 40 CPU-hours, plateau 20 trials (min_delta 0.001)``."""
        parts = []
        if self.time is not None:
            parts.append(f"time {self.time}" + ("" if isinstance(self.time, str) else " s"))
        if self.resource_hours is not None:
            parts.append(f"{self.resource_hours:g} {self.resource}-hours")
        if self.plateau_trials is not None:
            parts.append(f"plateau {self.plateau_trials} trials (min_delta {self.min_delta:g})")
        return ", ".join(parts)


def budget_set(data: dict) -> bool:
    """Whether a resolved spec sets any budget."""
    b = data["search"].get("budget") or {}
    return any(v is not None for v in (b.get("time"), b.get("resource_hours"), (b.get("plateau") or {}).get("trials")))


_LIMIT_KEYS = "search.budget.time search.budget.resource_hours search.budget.plateau.trials"


def check(view) -> list[Finding]:
    """The budget's rules across keys (each value was checked on its own by the schema)."""
    search, out = view.data["search"], []
    b = search.get("budget") or {}
    plateau = b.get("plateau") or {}
    if search["num_samples"] is None:
        if not budget_set(view.data):
            out.append(Finding(("search", "num_samples"), "null runs trials until search.budget ends, and no budget "
                               "is set (got null)", "set search.budget.time (e.g. 2h), resource_hours or plateau, or "
                               "give a number of trials", reads=f"search.num_samples {_LIMIT_KEYS}"))
        if search["algorithm"] == "grid":
            out.append(Finding(("search", "num_samples"), "grid search runs every grid point num_samples times: "
                               "null would repeat the grid without end (got null)", "give a number (1: every point "
                               "once)", reads="search.num_samples search.algorithm"))
    if plateau.get("trials") is None and view.given(("search", "budget", "plateau", "min_delta")):
        out.append(Finding(("search", "budget", "plateau", "min_delta"), "does nothing without "
                           f"search.budget.plateau.trials (got {plateau.get('min_delta')})",
                           "set search.budget.plateau.trials (e.g. 20), or remove min_delta",
                           reads="search.budget.plateau.trials search.budget.plateau.min_delta"))
    trials = plateau.get("trials")
    if trials is not None and search["num_samples"] is not None and search["algorithm"] != "grid":
        from raytune_opt.searchers import planned_trials

        planned = planned_trials(search, view.space)
        if planned is not None and planned <= trials:
            out.append(Finding(("search", "budget", "plateau", "trials"), f"needs more than {trials} finished "
                               f"trials to judge, and the sweep plans {planned} (got {trials})",
                               f"lower plateau.trials below {planned}, raise search.num_samples, or set it to null "
                               "(until the budget ends)", reads="search.budget.plateau.trials search.num_samples search.algorithm"))
    return out


# ---------------------------------------------------------------- the rules


def _better(a: float | None, b: float | None, mode: str) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b) if mode == "max" else min(a, b)


def best_of(values, mode: str) -> float | None:
    """The best finite value (None: none)."""
    out = None
    for v in values:
        if v is not None and math.isfinite(v):
            out = _better(out, v, mode)
    return out


def plateau_reached(values: list, trials: int, min_delta: float, mode: str) -> bool:
    """Whether the best did not improve by at least ``min_delta`` (and by more than nothing)
    within the last ``trials`` finished trials.

    Args:
        values: each finished trial's best value, in the order they finished (None: the
            trial has none: it errored, diverged or was infeasible; it counts as a trial that
            did not improve the best).
    """
    if len(values) <= trials:  # the best before the window is the best of at least one trial
        return False
    before, after = best_of(values[:-trials], mode), best_of(values, mode)
    if after is None:
        return True  # nothing has a value: nothing improved
    if before is None:
        return False
    gain = after - before if mode == "max" else before - after
    return not (gain > 0 and gain >= min_delta)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f}s"


@dataclass
class Ledger:
    """The budget's state, kept in the experiment (``budget.json``) and read back on resume."""

    limits: Limits
    sessions: int = 0  # drivers that ran the sweep (run, then each resume)
    time_spent_s: float = 0.0  # wall-clock seconds the sweep ran, over every session
    resource_s: float = 0.0  # resource-unit seconds held by running trials (CPU or GPU)
    finished: list = field(default_factory=list)  # [[trial_id, best value or None], ...] in finish order
    running_best: dict = field(default_factory=dict)  # trial_id -> best value so far, of live trials
    reached: dict | None = None  # {"rule", "text", ...} once the budget ended the sweep
    _judged: int = field(default=-1, repr=False, compare=False)  # finished trials the plateau was judged on

    @property
    def resource_hours(self) -> float:
        return self.resource_s / 3600.0

    # --- accounting ------------------------------------------------------------------------
    def tick(self, dt: float, running: int, capacity: float | None = None) -> None:
        """``dt`` seconds passed with ``running`` trials holding their resources, of at most
        ``capacity`` units the cluster has (None: not known). A multi-worker trial is RUNNING
        in Tune while it waits for its workers (a warm slot, a placement group): trials
        cannot hold more than the cluster has, so they are not counted beyond it."""
        self.time_spent_s += dt
        units = running * self.limits.per_trial
        self.resource_s += dt * (units if capacity is None else min(units, capacity))

    def result(self, trial_id: str, value: Any) -> None:
        """A trial reported ``value`` of the plateau's metric."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        self.running_best[trial_id] = _better(self.running_best.get(trial_id), float(value), self.limits.mode)

    def finish(self, trial_id: str, usable: bool) -> bool:
        """A trial ended (``usable``: not errored, diverged or infeasible); whether it was new."""
        best = self.running_best.pop(trial_id, None)
        if any(t == trial_id for t, _ in self.finished):  # told again after a resume
            return False
        self.finished.append([trial_id, best if usable else None])
        return True

    # --- the rules -------------------------------------------------------------------------
    def check(self) -> dict | None:
        """Why the budget ends the sweep now (recorded in :attr:`reached`), or None."""
        if self.reached is not None:
            return self.reached
        lim = self.limits
        rule = text = None
        if lim.time_s is not None and self.time_spent_s >= lim.time_s:
            rule, text = "time", f"time {lim.time} reached ({_clock(self.time_spent_s)} spent)"
        elif lim.resource_hours is not None and self.resource_hours >= lim.resource_hours:
            rule, text = "resource_hours", (f"resource_hours {lim.resource_hours:g} reached "
                                            f"({self.resource_hours:.4g} {lim.resource}-hours spent)")
        elif lim.plateau_trials is not None and self._judged != len(self.finished) and \
                self._judge_plateau():
            best = best_of((v for _, v in self.finished), lim.mode)
            rule, text = "plateau", (f"plateau: {lim.metric} did not improve by {lim.min_delta:g} or more in the "
                                     f"last {lim.plateau_trials} finished trials (best "
                                     f"{'none' if best is None else f'{best:.4g}'})")
        if rule is None:
            return None
        self.reached = {"rule": rule, "text": text, "time_spent_s": round(self.time_spent_s, 3),
                        "resource_hours": round(self.resource_hours, 6), "finished_trials": len(self.finished),
                        "session": self.sessions}
        return self.reached

    def _judge_plateau(self) -> bool:
        self._judged = len(self.finished)  # judged again only when another trial finishes (check runs every step)
        return plateau_reached([v for _, v in self.finished], self.limits.plateau_trials, self.limits.min_delta,
                               self.limits.mode)

    def left(self) -> str:
        """What is left of each limit, for the line a resume prints."""
        lim, parts = self.limits, []
        if lim.time_s is not None:
            parts.append(f"time {_clock(max(0.0, lim.time_s - self.time_spent_s))} of {lim.time} left")
        if lim.resource_hours is not None:
            parts.append(f"{max(0.0, lim.resource_hours - self.resource_hours):.4g} of {lim.resource_hours:g} "
                         f"{lim.resource}-hours left")
        if lim.plateau_trials is not None:
            parts.append(f"plateau judged over {len(self.finished)} finished trial(s) so far")
        return ", ".join(parts)

    def summary(self) -> dict:
        """What best.json and the sweep's outcome carry."""
        return {"limits": self.limits.describe(), "reached": (self.reached or {}).get("rule"),
                "reason": (self.reached or {}).get("text"), "time_spent_s": round(self.time_spent_s, 3),
                "resource_hours": round(self.resource_hours, 6), "resource": self.limits.resource,
                "sessions": self.sessions, "finished_trials": len(self.finished)}

    # --- the file --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        lim = self.limits
        return {"format": FORMAT, "limits": {"time": lim.time, "resource_hours": lim.resource_hours,
                                              "plateau": {"trials": lim.plateau_trials, "min_delta": lim.min_delta},
                                              "metric": lim.metric, "mode": lim.mode, "resource": lim.resource,
                                              "per_trial": lim.per_trial},
                "sessions": self.sessions, "time_spent_s": self.time_spent_s, "resource_s": self.resource_s,
                "finished": self.finished, "running_best": self.running_best, "reached": self.reached}

    @classmethod
    def from_dict(cls, d: dict, limits: Limits) -> "Ledger":
        """The ledger a file holds, under today's ``limits`` (the spec's; resume checked its hash).

        Raises:
            ValueError: not a budget file of this format, or a field of the wrong kind.
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        out = cls(limits, sessions=int(d["sessions"]), time_spent_s=float(d["time_spent_s"]),
                  resource_s=float(d["resource_s"]),
                  finished=[[str(t), None if v is None else float(v)] for t, v in d["finished"]],
                  running_best={str(k): float(v) for k, v in (d.get("running_best") or {}).items()},
                  reached=d.get("reached"))
        if out.reached is not None and not isinstance(out.reached, dict):
            raise ValueError("reached must be a mapping")
        return out


def load(text: str | None, limits: Limits) -> Ledger:
    """The ledger in ``text`` (a budget.json), or a fresh one for None.

    Raises:
        ValueError: unreadable (see :meth:`Ledger.from_dict`).
    """
    if text is None:
        return Ledger(limits)
    return Ledger.from_dict(json.loads(text), limits)


def read(loc, limits: Limits) -> Ledger | None:
    """The experiment's ledger (``loc``: its :class:`raytune_opt.storage.Location`); None when
    it has none (no budget, or a sweep that ended before its first save).

    Raises:
        UsageError: budget.json is there but unreadable.
    """
    from raytune_opt.errors import UsageError

    text = stores.read_text(stores.filesystem(loc.remote, loc.endpoint_url), f"{loc.fs_path}/{BUDGET}")
    if text is None:
        return None
    try:
        return load(text, limits)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{loc.uri}/{BUDGET}: unreadable ({exc}); the budget's clock is lost: move the file away "
                         "to resume with the whole budget again") from None


def write(loc, ledger: Ledger) -> None:
    """Write the experiment's ledger (atomically; an S3 object appears whole)."""
    stores.write_text(stores.filesystem(loc.remote, loc.endpoint_url), f"{loc.fs_path}/{BUDGET}",
                json.dumps(ledger.to_dict(), indent=1), loc.remote)


def row_reason(reached: dict, epochs: int) -> str:
    """results.csv's stop_reason of a trial the budget stopped."""
    when = f"at epoch {epochs}" if epochs else "before its first epoch"
    return f"budget: {reached['text']}, stopped {when}"


def report_line(raw) -> str:
    """What the report says of the budget, from budget.json as parsed (never raises: the
    report is a view of whatever the file holds)."""
    try:
        lim = raw["limits"]
        limits = Limits(time=lim["time"], resource_hours=lim["resource_hours"],
                        plateau_trials=lim["plateau"]["trials"], min_delta=float(lim["plateau"]["min_delta"]),
                        metric=str(lim["metric"]), mode=str(lim["mode"]), resource=str(lim["resource"]),
                        per_trial=float(lim["per_trial"]))
        return summary_line(Ledger.from_dict(raw, limits).summary())
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"{BUDGET} is unreadable"


def summary_line(summary: dict) -> str:
    """The terminal's line about the budget when a sweep ends."""
    spent = (f"{_clock(summary['time_spent_s'])} and {summary['resource_hours']:.4g} {summary['resource']}-hours "
             f"over {summary['sessions']} session(s)")
    if summary["reached"]:
        return f"budget: {summary['reason']}; the sweep stopped proposing and stopped its running trials ({spent})"
    return f"budget: not reached ({summary['limits']}; {spent})"


# ---------------------------------------------------------------- files (local or S3)


# ---------------------------------------------------------------- the Tune side

# The budget callback running each experiment in this driver, by its budget.json: how the
# stopper finds it. Read and written through functions only: the Tune classes below are
# pickled by value (cloudpickle), and a by-value function carries a copy of the module
# globals it names, but calls a module-level function by reference.
_RUNNING: dict[str, Any] = {}


def _running(key: str):
    return _RUNNING.get(key)


def _start_running(key: str, owner) -> None:
    _RUNNING[key] = owner


def _stop_running(key: str, owner) -> None:
    if _RUNNING.get(key) is owner:
        del _RUNNING[key]


def tune_parts(spec, loc) -> tuple | None:
    """``(callback, stopper)`` that apply ``spec``'s budget to a sweep stored at ``loc`` (a
    :class:`raytune_opt.storage.Location`), for ``RunConfig(callbacks=[..., callback],
    stop=stopper)``; None when the spec sets no budget.

    The callback keeps the ledger (it sees trials run, report and end); the stopper holds only
    the ledger's key. Tune pickles its stopper into its experiment state at every save and a
    resumed sweep's controller gets that copy back, while the callbacks come back from
    ``tuner.pkl``: the two are never one object after a resume, so the stopper asks whichever
    callback runs the experiment in this driver."""
    if not budget_set(spec.data):
        return None
    callback_cls, stopper_cls = _tune_classes()
    key = f"{loc.fs_path}/{BUDGET}"
    return (callback_cls(Limits.from_spec(spec.data), key, loc.remote, loc.endpoint_url, str(loc.local)),
            stopper_cls(key))


@functools.cache
def _tune_classes():
    from ray.tune import Callback
    from ray.tune.stopper import Stopper

    from raytune_opt._warn import WarnOnce

    class BudgetCallback(Callback):
        """Keeps a :class:`Ledger` during a sweep (module doc) and says when it ends the sweep.

        Time counts from the fit's start (``setup``) to its end in every session; resource
        time counts for the trials Tune runs, at every step of its loop; a trial's value is
        the best of the plateau's metric it reported.
        """

        def __init__(self, limits: Limits, state_file: str, remote: bool, endpoint_url: str | None, warn_dir: str):
            self.limits, self._state_file, self._remote, self._endpoint_url = limits, state_file, remote, endpoint_url
            self._warn_dir = warn_dir
            self._reset()

        def _reset(self) -> None:
            self.ledger: Ledger | None = None
            self._fs = None
            self._trials: list = []
            self._last = self._saved = 0.0
            self._warn = None
            self._capacity_at, self._units = -math.inf, None

        def __getstate__(self):
            state = self.__dict__.copy()
            for key in ("ledger", "_fs", "_trials", "_last", "_saved", "_warn", "_capacity_at", "_units"):
                state.pop(key, None)
            return state

        def __setstate__(self, state):
            self.__dict__.update(state)
            self._reset()  # a resumed sweep reads the ledger kept in the experiment

        # --- the ledger's file -------------------------------------------------------------
        def _save(self, force: bool = False) -> None:
            now = time.monotonic()
            if not force and now - self._saved < (SAVE_EVERY_S3 if self._remote else SAVE_EVERY_S):
                return
            self._saved = now
            try:
                stores.write_text(self._fs, self._state_file, json.dumps(self.ledger.to_dict(), indent=1), self._remote)
            except OSError as exc:  # a full disk, S3 gone: the sweep goes on, the clock is not kept
                self._warn(exc)

        def _start(self) -> None:
            if self.ledger is not None:
                return
            self._fs = stores.filesystem(self._remote, self._endpoint_url)
            self._warn = WarnOnce(f"keeping the budget's state in {self._state_file}", self._warn_dir,
                                  then="the sweep goes on; a resume would start the budget again")
            self.ledger = load(stores.read_text(self._fs, self._state_file), self.limits)
            self.ledger.sessions += 1
            self._last = time.monotonic()
            self._save(force=True)
            _start_running(self._state_file, self)

        def _tick(self) -> None:
            self._start()
            now = time.monotonic()
            running = sum(1 for t in self._trials if getattr(t, "status", None) == "RUNNING")
            self.ledger.tick(now - self._last, running, self._capacity(now))
            self._last = now

        def _capacity(self, now: float) -> float | None:
            """The cluster's units of the budget's resource (CPU or GPU), asked of Ray at most
            every CAPACITY_EVERY_S (an autoscaler changes it); None when Ray cannot say."""
            if now - self._capacity_at >= CAPACITY_EVERY_S:
                import ray

                try:
                    self._units = float(ray.cluster_resources().get(self.limits.resource, 0.0)) or None
                except Exception:  # Ray not reachable for a moment: count as before, uncapped
                    self._units = None
                self._capacity_at = now
            return self._units

        def stop_all(self) -> bool:
            """Whether the budget ends the sweep now (the stopper's answer)."""
            self._tick()
            if self.ledger.reached is not None:
                return True
            if self.ledger.check() is not None:
                self._save(force=True)
                return True
            return False

        # --- Tune's calls -----------------------------------------------------------------
        def setup(self, **info):
            self._start()

        def on_step_begin(self, iteration, trials, **info):
            self._trials = trials

        def on_step_end(self, iteration, trials, **info):
            self._trials = trials
            self._tick()
            self._save()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._start()  # a replayed epoch (a resumed trial) reports what it reported before: harmless
            self.ledger.result(trial.trial_id, result.get(self.limits.metric))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._start()
            reason = str((trial.last_result or {}).get("stop_reason") or "")
            usable = not reason.startswith(("diverged", objectives.INFEASIBLE))
            if self.ledger.finish(trial.trial_id, usable):
                self._save(force=True)  # before Tune saves its state at this step's end

        def on_trial_error(self, iteration, trials, trial, **info):
            self._start()
            if self.ledger.finish(trial.trial_id, usable=False):
                self._save(force=True)

        def on_experiment_end(self, trials, **info):
            self._tick()
            self._save(force=True)
            _stop_running(self._state_file, self)

    class BudgetStopper(Stopper):
        """Tune's stopper: ends the sweep when the budget callback of its experiment says so.
        It holds nothing but the ledger's key (see :func:`tune_parts`)."""

        def __init__(self, key: str):
            self._key = key

        def __call__(self, trial_id, result) -> bool:
            return False  # the budget stops the whole sweep, never one trial

        def stop_all(self) -> bool:
            owner = _running(self._key)
            return owner is not None and owner.stop_all()

    BudgetCallback.__module__ = BudgetStopper.__module__ = __name__
    return BudgetCallback, BudgetStopper
