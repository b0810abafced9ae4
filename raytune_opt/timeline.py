"""Start-up marks for ``benchmarks/ddp_startup.py``: where a trial's seconds go.

With ``RAYTUNE_OPT_TIMELINE`` set to a file path, every process of a sweep that inherits the
variable (on an embedded Ray: the driver, the trial actors and the Train workers) appends
one JSON line per mark: ``{"event", "t" (time.time()), "pid", ...}``. Unset (the default) a
mark costs one environment lookup. A diagnostic must never fail a trial: a path that cannot
be written drops the marks.
"""

from __future__ import annotations

import json
import os
import time

ENV = "RAYTUNE_OPT_TIMELINE"


def mark(event: str, **fields) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **fields}) + "\n"
    try:  # one small O_APPEND write: lines from concurrent processes do not interleave
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def read(path: str) -> list[dict]:
    """The marks in ``path``, oldest first (none when the file does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return sorted((json.loads(line) for line in f if line.strip()), key=lambda m: m["t"])
