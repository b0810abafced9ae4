"""Warnings of the driver's views (trackers, the report): one line once, the traceback kept.

A view never fails a sweep, but a bug in it must stay findable: the warning is one line on
stderr and the traceback goes to the experiment's ``warnings.log``.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from raytune_opt.redact import redact

WARNINGS_LOG = "warnings.log"


class WarnOnce:
    """A view that fails says so once, on stderr, and then stays quiet.

    Args:
        name: what failed, e.g. ``"MLflow logging to URI"``.
        exp_dir: the experiment, whose ``warnings.log`` gets the traceback (None: not kept).
        then: what happens next, after the failure's first line.
    """

    def __init__(self, name: str, exp_dir=None, then: str = "the sweep goes on without it"):
        self.name, self.exp_dir, self.then, self.warned = name, exp_dir, then, False

    def __call__(self, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            where = keep_traceback(self.exp_dir, self.name, exc)
            print(redact(f"raytune-opt: warning: {self.name} failed ({type(exc).__name__}: {first_line(exc)[:200]}); "
                         f"{self.then}{where}"), file=sys.stderr, flush=True)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message ("" for none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def keep_traceback(exp_dir, what: str, exc: BaseException) -> str:
    """Append ``exc``'s traceback to ``exp_dir/warnings.log``; the text to add to the warning line."""
    if exp_dir is None:
        return ""
    path = Path(exp_dir) / WARNINGS_LOG
    try:
        with open(path, "a") as f:
            f.write(redact(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n"
                           f"{''.join(traceback.format_exception(exc))}"))
    except OSError:
        return ""
    return f" (traceback in {path})"
