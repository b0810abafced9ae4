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
