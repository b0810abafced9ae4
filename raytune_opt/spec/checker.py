"""What every spec rule records its problems through, and the check of one value against its schema field.

:class:`Checker` collects problems with their place in the file (or the override that set
them) while :mod:`raytune_opt.spec.validate` walks a spec; :func:`coerce` checks one value
against a :class:`~raytune_opt.spec.schema.Field`. The rule modules (the space parser, the
user-code check, the rules across sections) and validate share them. Imports neither torch
nor Ray.
"""

from __future__ import annotations

import difflib
import json
import math
from typing import Any

from raytune_opt.errors import Problem
from raytune_opt.redact import redact_data
from raytune_opt.registry import is_import_path
from raytune_opt.space import Space
from raytune_opt.spec.schema import Field
from raytune_opt.spec.yaml_loader import Located


def fmt(value: Any) -> str:
    """A short rendering of a user value for '(got VALUE)', credentials in URIs redacted."""
    value = redact_data(value)
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def did_you_mean(word: Any, options) -> str:
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


class Checker:
    """Collects problems with their positions while walking the spec."""

    def __init__(self, located: Located, raw_root: dict, code_dirs: tuple = ()):
        self.located = located
        self.code_dirs = code_dirs  # where user code is imported from first (the spec's directory)
        self.problems: list[Problem] = []
        self.override_at: dict[tuple, str] = {}  # key path -> "override 'k=v'"
        self.raw_root = raw_root
        self.invalid: set[tuple] = set()  # key paths already reported
        self.param_at: dict[str, tuple] = {}  # space key -> where it is written (maybe nested)

    def ok(self, *dotted: str) -> bool:
        """Whether none of these settings was reported invalid (cross rules read them)."""
        return not any(tuple(k.split(".")) in self.invalid for k in dotted)

    def where(self, path: tuple) -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in self.override_at:
                return self.override_at[path[:n]]
        return self.located.where(path)

    def add(self, path: tuple, message: str, fix: str, at: tuple | None = None) -> None:
        """Record a problem with ``path``, located at ``at`` (default: ``path`` itself)."""
        self.invalid.add(tuple(path))
        self.problems.append(Problem(self.where(at or path), ".".join(str(p) for p in path), message, fix))

    def rule(self, reads: str, path: tuple, message: str, fix: str) -> None:
        """Record a cross-key problem unless a setting it ``reads`` (space-separated dotted keys)
        was already reported: a rule over an invalid value would only repeat that problem."""
        if self.ok(*reads.split()):
            self.add(path, message, fix)

    def given(self, path: tuple) -> bool:
        """Whether the user wrote ``path`` (in the file or an override)."""
        node: Any = self.raw_root
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
        return True


def coerce(value: Any, fld: Field) -> tuple[Any, str | None, str]:
    """Check one value against a Field: (value, what is wrong or None, how to fix).

    PyYAML reads ``1e-3`` (no dot) as a string: float fields accept such strings.
    """
    if value is None:
        if fld.nullable or fld.type == "any":
            return None, _run_check(fld, None), "see the README's spec reference"
        return value, f"must not be null (got null)", f"give a {fld.type} or remove the key for the default"
    t = fld.type
    if t == "float" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, list),
        "dict": isinstance(value, dict),
        "any": True,
    }[t]
    if not ok:
        names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                 "list": "a list", "dict": "a mapping"}
        fix = f"give {names[t]}"
        if t == "int" and isinstance(value, float) and value.is_integer():
            fix = f"write {int(value)} without the decimal point"
        return value, f"must be {names[t]} (got {fmt(value)})", fix
    if t == "float":
        value = float(value)
        if not math.isfinite(value):
            return value, f"must be finite (got {fmt(value)})", "give a finite number"
    if fld.choices is not None and value not in fld.choices:
        hint = did_you_mean(value, fld.choices)
        return value, f"unknown value (got {fmt(value)})", (
            (hint + " " if hint else "") + "valid: " + ", ".join(map(str, fld.choices)))
    if fld.registry is not None and value not in fld.registry:
        if ":" in value:
            if not is_import_path(value):
                return value, f"not an import path (got {fmt(value)})", "write 'package.module:callable'"
        else:
            hint = did_you_mean(value, fld.registry)
            return value, f"unknown value (got {fmt(value)})", (
                (hint + " " if hint else "") + "valid: " + ", ".join(fld.registry) + ", or a 'module:callable' "
                "import path")
    if t in ("int", "float"):
        bad = ((fld.ge is not None and value < fld.ge) or (fld.gt is not None and value <= fld.gt)
               or (fld.le is not None and value > fld.le) or (fld.lt is not None and value >= fld.lt))
        if bad:
            return value, f"out of range (got {fmt(value)})", f"must be {fld.bounds_text()}"
    return value, _run_check(fld, value), "see the README's spec reference"


def _run_check(fld: Field, value: Any) -> str | None:
    if fld.check is None:
        return None
    msg = fld.check(value)
    return f"{msg} (got {fmt(value)})" if msg else None


def values_of(d: dict, space: Space, key: str) -> set:
    """Values a setting may take during the sweep: its fixed value, or every option of a categorical domain
    (empty for a numeric domain)."""
    node: Any = d
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    vals = {node} if not isinstance(node, (dict, list)) else set()
    p = space.by_key.get(key)
    if p is not None:
        vals = set(p.domain.args) if p.domain.categorical else set()
    return vals
