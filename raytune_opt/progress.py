"""Progress of the driver's long steps (decoding a data set, each promotion step).

On a terminal a step shows as one transient line ("onnx: exporting…") that the step's result
line replaces, and a loop over many items (the images of an ImageFolder) as a tqdm bar that
goes away when done. Without a terminal (CI, ``ray job logs``) nothing is printed here: the
result lines that follow each step are the log, and the sweep's output stays short.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterable, Iterator, TypeVar

WIDTH = 80  # the terminal columns our output fits (the live view's too)
T = TypeVar("T")


def _tty(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextlib.contextmanager
def step(text: str, stream=None) -> Iterator[None]:
    """Show ``text…`` while the block runs (terminal only), then clear it."""
    stream = stream or sys.stdout
    if not _tty(stream):
        yield
        return
    line = (text if len(text) < WIDTH - 1 else text[: WIDTH - 2]) + "…"
    stream.write("\r" + line)
    stream.flush()
    try:
        yield
    finally:
        stream.write("\r" + " " * len(line) + "\r")
        stream.flush()


def items(iterable: Iterable[T], total: int, desc: str, stream=None) -> Iterable[T]:
    """``iterable`` with a transient tqdm bar on a terminal; unchanged without one."""
    stream = stream or sys.stdout
    if not _tty(stream):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=stream, ncols=WIDTH, leave=False, mininterval=0.5)
