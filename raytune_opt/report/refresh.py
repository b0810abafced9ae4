"""The Tune callback that refreshes report.html while a sweep runs (in the driver).

A module of its own, at module level, so that Tune can pickle it into the experiment state
(``tuner.pkl``) by reference and a resumed sweep refreshes the page too.
"""

from __future__ import annotations

import time
from pathlib import Path

from ray.tune import Callback

from raytune_opt._warn import WarnOnce

REFRESH_EVERY_S = 30.0  # at most one rebuild per this many seconds: a build reads every trial's files


class RefreshReport(Callback):
    """Rebuilds the report after a trial ends, at most once per ``every_s``.

    A failure (a trial file half-written by Tune, a full disk) warns once and never stops
    the sweep: the page is a view of the results, not part of them.
    """

    def __init__(self, exp_dir: str | Path, every_s: float = REFRESH_EVERY_S):
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0, but got {every_s=}")
        self.exp_dir, self.every_s = Path(exp_dir), every_s
        self._last = None
        self._warn = WarnOnce(f"refreshing {self.exp_dir / 'report.html'}", self.exp_dir, then="the sweep goes on")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._refresh()

    def _refresh(self) -> None:
        from raytune_opt.report import write_report

        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            return
        self._last = now
        try:
            write_report(self.exp_dir, journal=False)
        except Exception as exc:  # never fail a trial for a view of it; later refreshes still try
            self._warn(exc)
