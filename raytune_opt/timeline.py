"""Start-up marks for ``benchmarks/ddp_startup.py``: where a trial's seconds go.

With ``RAYTUNE_OPT_TIMELINE`` set to a file path, every process of a sweep that inherits the
variable (on an embedded Ray: the driver, the trial actors and the Train workers) appends
one JSON line per mark: ``{"event", "t" (time.time()), "pid", ...}``. Unset (the default) a
mark costs one environment lookup. The CLI checks the path once (:func:`check`); past that, a
diagnostic never fails a trial: a mark that cannot be written is dropped.
"""

from __future__ import annotations

import json
import os
import time

ENV = "RAYTUNE_OPT_TIMELINE"


def check() -> None:
    """Refuse a ``$RAYTUNE_OPT_TIMELINE`` that cannot be appended to.

    Raises:
        UsageError: the path's directory is missing, the path is a directory, not writable...
    """
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        from raytune_opt.errors import UsageError

        raise UsageError(f"${ENV}={path!r}: cannot append start-up marks there ({exc.strerror or exc}); set it "
                         "to a writable file path, or unset it") from None


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
