"""The training recipe: one readable loop (:mod:`.loop`) and its parts.

``data`` loads and splits a data set, ``models`` builds a network by name, ``losses``,
``augment`` and ``optim`` build what the loop steps through, ``checkpoint`` saves and
restores self-describing checkpoints, and ``session`` is the small interface between the
loop and whoever runs it (a local process, or a Ray Train worker).
"""

from raytune_opt.recipe.errors import CheckpointError, DataError, RecipeConfigError

__all__ = ["CheckpointError", "DataError", "RecipeConfigError"]
