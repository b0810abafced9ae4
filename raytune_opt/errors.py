"""The one exception family for problems a user can fix.

Every user-facing error derives from :class:`RaytuneOptError`. The CLI turns them into
one line per problem on stderr and exit code 2, without a traceback. Internal invariants
use ``assert`` instead: a failed assert is our bug, not the user's.
"""

from __future__ import annotations

from dataclasses import dataclass


class RaytuneOptError(Exception):
    """Base of every error a user can fix (bad spec, bad flag, missing data...)."""

    def lines(self) -> list[str]:
        return [str(self)]


@dataclass(frozen=True)
class Problem:
    """One problem in a spec: where, which key, what is wrong and how to fix it."""

    where: str  # "FILE:LINE:COL" or "override 'key=value'"
    key: str  # dotted key path, "" for the document root
    message: str  # what is wrong, including "(got VALUE)"
    fix: str  # how to fix it

    def __str__(self) -> str:
        key = f" {self.key}:" if self.key else ""
        return f"{self.where}:{key} {self.message}; {self.fix}"


class SpecError(RaytuneOptError):
    """A spec with one or more problems; all of them are reported together."""

    def __init__(self, problems: list[Problem]):
        assert problems, "SpecError needs at least one problem"
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class UsageError(RaytuneOptError):
    """A bad command-line flag, path or argument."""


class MissingDependencyError(RaytuneOptError):
    """An optional dependency is needed but not installed."""


def describe_raised(exc: BaseException) -> str:
    """``"KeyError: 'x' (at /home/me/mypkg/data.py:12)"``: a user's exception in one line, with
    the innermost frame outside raytune-opt and installed packages (the user's own code)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # some exporters colour their messages
    where = raised_at(exc)
    return f"{type(exc).__name__}: {text[0] if text else '(no message)'}{f' (at {where})' if where else ''}"


def raised_at(exc: BaseException) -> str:
    """``FILE:LINE`` of the innermost frame of ``exc``'s traceback in the user's own code
    (outside raytune-opt, installed packages and the standard library); "" if none."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if is_user_file(f.filename)]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def is_user_file(filename: str) -> bool:
    """Whether a frame's file is the user's code: not ours, not an installed package, not
    Python's own (the standard library, importlib's frozen modules)."""
    import sysconfig

    if filename.startswith("<") or "/raytune_opt/" in filename or "/site-packages/" in filename:
        return False
    return not filename.startswith(sysconfig.get_paths()["stdlib"])
