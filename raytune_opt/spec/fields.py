"""The schema's node types: a :class:`Field` (one leaf key) and a :class:`Section` (keys to
fields or sections).

Registry entries declare their own settings with them beside their code (a promotion step's
``promote.<step>`` section: :mod:`raytune_opt.promote.steps`), so this module imports
nothing of raytune-opt: an entry's module can import it without pulling in the schema,
which reads the registries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Field", "Section"]


@dataclass(frozen=True)
class Field:
    """One leaf key of the spec."""

    type: str  # "int" | "float" | "bool" | "str" | "list" | "dict" | "any"
    default: Any
    doc: str
    choices: tuple | None = None
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    check: Callable[[Any], str | None] | None = None  # extra rule: returns what is wrong
    # The choices are this registry's names as they are when a spec is checked (names
    # registered later count), or a "module:callable" import path.
    registry: Any = None
    tunable: bool = True
    fixed_because: str = ""  # why a tunable section's key is not tunable, for the space error

    def bounds_text(self) -> str:
        parts = []
        if self.ge is not None:
            parts.append(f">= {self.ge:g}")
        if self.gt is not None:
            parts.append(f"> {self.gt:g}")
        if self.le is not None:
            parts.append(f"<= {self.le:g}")
        if self.lt is not None:
            parts.append(f"< {self.lt:g}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Section:
    """A mapping of keys to Fields or nested Sections."""

    doc: str
    fields: dict = field(default_factory=dict)
    open: bool = False  # open sections accept any key (DeepSpeed's config is passed through)
