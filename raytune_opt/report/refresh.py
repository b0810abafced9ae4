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
MAX_SHARE = 0.05  # ...and at most this share of the driver's time: a build grows with the trials


class RefreshReport(Callback):
    """Rebuilds the report after a trial ends, at most once per ``every_s``, and never more
    than ``max_share`` of the driver's time: the build runs in Tune's event loop and reads
    every trial's files, so at 1,000 trials one build takes seconds (``benchmarks/report_scale.py``);
    after a build of t seconds the next waits at least t / max_share.

    A failure (a trial file half-written by Tune, a full disk) warns once and never stops
    the sweep: the page is a view of the results, not part of them.
    """

    def __init__(self, exp_dir: str | Path, every_s: float = REFRESH_EVERY_S, max_share: float = MAX_SHARE):
        if every_s < 0 or not 0 < max_share <= 1:
            raise ValueError(f"need every_s >= 0 and 0 < max_share <= 1, but got {every_s=}, {max_share=}")
        self.exp_dir, self.every_s, self.max_share = Path(exp_dir), every_s, max_share
        self._next = None  # when the next rebuild may start
        self._warn = WarnOnce(f"refreshing {self.exp_dir / 'report.html'}", self.exp_dir, then="the sweep goes on")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._refresh()

    def _refresh(self) -> None:
        from raytune_opt.report import write_report

        now = time.monotonic()
        if self._next is not None and now < self._next:
            return
        try:
            write_report(self.exp_dir, journal=False)
        except Exception as exc:  # never fail a trial for a view of it; later refreshes still try
            self._warn(exc)
        self._next = now + max(self.every_s, (time.monotonic() - now) / self.max_share)
