"""The terminal while a sweep runs: a header, a status line, one line per finished trial.

Fits 80 columns. On a terminal the status line is a tqdm bar updated in place and trial
lines print above it (``tqdm.write``); without one (CI, ``ray job logs``) everything is
plain lines with no control codes, and the status is printed at most every
``PLAIN_STATUS_EVERY_S``. ``raytune-opt run --verbose`` shows Ray's own tables instead.
"""

from __future__ import annotations

import os
import sys
import time

from ray.tune import Callback

from raytune_opt import objectives
from raytune_opt.progress import WIDTH
from raytune_opt.results import short_config
PLAIN_STATUS_EVERY_S = 30.0
TTY_STATUS_EVERY_S = 1.0


# Ray Tune's legacy console reporter while our view shows the sweep: the newer one prints its
# configuration box even at ``verbose=0``, the legacy one at 0 prints nothing. Set only around
# the fit (sweep.py).
QUIET_CONSOLE = {"RAY_AIR_NEW_OUTPUT": "0"}


def callbacks(spec, where: str) -> list:
    """The live view for a sweep of ``spec`` stored at ``where`` (Ray's own console output
    goes off during the fit: ``QUIET_CONSOLE``)."""
    from raytune_opt.searchers import planned_trials

    return [LiveView(spec, where, planned_trials(spec.data["search"], spec.space))]


def _clip(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LiveView(Callback):
    """A Tune callback in the driver; holds no stream until ``setup`` (it is pickled with the Tuner)."""

    def __init__(self, spec, where: str, total: int | None, tty: bool | None = None):
        """``total``: the trials planned; None: as many as search.budget allows."""
        if total is not None and total < 1:
            raise ValueError(f"total must be >= 1 or None, but got {total=}")
        s = spec.data
        self.metric, self.mode = objectives.primary(s["search"])
        algo = s["search"]["algorithm"] + (f" ({s['search']['sampler']})" if s["search"]["algorithm"] == "optuna"
                                           else "")
        planned = "trials until the budget ends" if total is None else f"{total} trials"
        self.header = [f"sweep {spec.name}: {planned}, {algo}, scheduler {s['scheduler']['name']}, "
                       f"{self.metric} ({self.mode})", f"storage: {where}"]
        from raytune_opt.budget import Limits

        limits = Limits.from_spec(s)
        if limits.any:
            self.header.append(f"budget: {limits.describe()}")
        self.total, self.tty = total, tty
        self._space = spec.space
        self._state: dict = {}  # trial id -> running | done | stopped | errored
        self._best = None  # (value, trial id, config text)
        self._best_shown = None  # the trial id of the last "best so far" line
        self._started = self._last_status = 0.0
        self._bar = None
        self._out = None

    # --- output ----------------------------------------------------------------------------
    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(_clip(line), file=self._out)
        else:
            print(_clip(line), file=self._out, flush=True)

    def status(self) -> str:
        counts = {k: 0 for k in ("running", "done", "stopped", "errored")}
        for v in self._state.values():
            counts[v] += 1
        finished = counts["done"] + counts["stopped"] + counts["errored"]
        elapsed = time.monotonic() - self._started
        eta = (f" eta {_duration(elapsed / finished * (self.total - finished))}"
               if self.total is not None and 0 < finished < self.total else "")
        best = f" | best {self._best[0]:.4f} {self._best[1][:8]}" if self._best else ""
        # e.g. "12/16 (2 ok 10 stop 0 err 2 run) | best 0.9582 fd31f04a | 10m25s eta 13m03s": 80 columns
        of = f"{finished}" if self.total is None else f"{finished}/{self.total}"
        return (f"{of} ({counts['done']} ok {counts['stopped']} stop {counts['errored']} err "
                f"{counts['running']} run){best} | {_duration(elapsed)}{eta}")

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        every = TTY_STATUS_EVERY_S if self._bar is not None else PLAIN_STATUS_EVERY_S
        if not force and now - self._last_status < every:
            return
        self._last_status = now
        if self._bar is not None:
            finished = sum(v != "running" for v in self._state.values())
            self._bar.n = finished
            self._bar.set_description_str(_clip(self.status())[: WIDTH - 22], refresh=True)
        else:
            self._print(f"status {self.status()}")

    # --- Tune's calls ----------------------------------------------------------------------
    def setup(self, **info):
        self._out = sys.stdout
        tty = self._out.isatty() if self.tty is None else self.tty
        self._started = time.monotonic()
        for line in self.header:
            self._print(line)
        if tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, file=self._out, ncols=WIDTH, leave=False,
                             bar_format="{desc} |{bar}| {n}/{total}" if self.total else "{desc} {n} trials")

    def _config_text(self, trial) -> str:
        from raytune_opt.searchers import flatten_config

        return short_config(flatten_config(getattr(trial, "config", None) or {}, self._space))

    def _catch_up(self, trials) -> None:
        """Trials that ended before this driver started (a resumed sweep) count as they ended."""
        for t in trials or ():
            if t.trial_id in self._state or getattr(t, "status", None) not in ("TERMINATED", "ERROR"):
                continue
            last = getattr(t, "last_result", None) or {}
            reason = last.get("stop_reason") or ""
            self._state[t.trial_id] = ("errored" if t.status == "ERROR" or reason.startswith("diverged")
                                       else "done" if reason in ("completed", "early_stopping") else "stopped")
            self._consider(t, last)

    def _consider(self, trial, result: dict) -> None:
        v = result.get(self.metric)
        if isinstance(v, (int, float)) and v == v and (self._best is None or (
                v > self._best[0] if self.mode == "max" else v < self._best[0])):
            self._best = (float(v), trial.trial_id, self._config_text(trial))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._catch_up(trials)
        self._state[trial.trial_id] = "running"
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._consider(trial, result)
        self._refresh()

    def _show_best(self) -> None:
        """One line when the best so far has moved to another trial since the last one."""
        if self._best is not None and self._best[1] != self._best_shown:
            self._best_shown = self._best[1]
            config = f": {self._best[2]}" if self._best[2] else ""
            self._print(f"  best so far {self._best[0]:.4f} {self._best[1][:8]}{config}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epoch, value = last.get("epoch"), last.get(self.metric)
        reason = last.get("stop_reason") or ""
        shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) and value == value else "no value"
        if reason.startswith("diverged"):
            self._state[trial.trial_id] = "errored"
            self._print(f"trial {trial.trial_id} diverged at epoch {epoch}")
        elif reason in ("completed", "early_stopping"):
            self._state[trial.trial_id] = "done"
            how = "finished" if reason == "completed" else "stopped early"
            self._print(f"trial {trial.trial_id} {how} at epoch {epoch}: {shown}")
        else:
            self._state[trial.trial_id] = "stopped"
            self._print(f"trial {trial.trial_id} stopped at epoch {epoch}: {shown}")
        self._show_best()
        self._refresh(force=self._bar is not None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._state[trial.trial_id] = "errored"
        epoch = (trial.last_result or {}).get("epoch")
        self._print(f"trial {trial.trial_id} errored" + (f" at epoch {epoch}" if epoch else "")
                    + (f" (see {trial.path}/error.txt)" if getattr(trial, "path", None) else ""))
        self._refresh(force=self._bar is not None)

    def on_step(self, iteration, trials, **info):
        self._catch_up(trials)
        self._refresh()

    def on_experiment_end(self, trials, **info):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._print(f"done {self.status()}")
