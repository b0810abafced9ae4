"""Number formatting shared by the printed tables, the manifest and the report."""

from __future__ import annotations


def signed(x: float, spec: str) -> str:
    """``format(x, spec)`` with an explicit sign, but never a negative zero: a change that
    rounds to zero (float noise a hair below it, or ``-0.0``) prints ``+0.00``, not ``-0.00``."""
    text = format(x, spec)
    if text.startswith("-") and not any(c in "123456789" for c in text):
        text = "+" + text[1:]
    return text
