"""The recipe's user-facing errors, all rooted in :class:`RaytuneOptError`.

They live in one small module so that ``data``, ``checkpoint`` and ``loop`` can share them
without importing each other; each module re-exports the ones it raises.
"""

from __future__ import annotations

from raytune_opt.errors import RaytuneOptError


class DataError(RaytuneOptError):
    """The data set cannot be read: missing, empty, wrong format, one class, corrupt."""


class CheckpointError(RaytuneOptError):
    """A checkpoint file is missing, truncated, or not a raytune-opt checkpoint."""


class RecipeConfigError(RaytuneOptError):
    """A recipe setting that only the running trial can check (it depends on the data or device)."""
