"""Promotion's user-facing errors, rooted in :class:`~raytune_opt.errors.RaytuneOptError`.

The CLI prints them as one line and exits 2. A model that fails its parity check is not
one of them: that is an artifact marked ``failed`` in the manifest (exit 1).
"""

from __future__ import annotations

from raytune_opt.errors import RaytuneOptError


class PromotionError(RaytuneOptError):
    """A promotion that cannot start: bad experiment directory, bad target, missing best trial."""


class NotAnExperimentError(PromotionError):
    """The directory is not one that ``raytune-opt run`` wrote."""


class NoSuccessfulTrialError(PromotionError):
    """The experiment has no best trial with a readable checkpoint."""


class ArtifactError(PromotionError):
    """One artifact could not be built (a TensorRT task timed out or was lost); it is recorded
    as ``failed`` in the manifest with this message, and the other artifacts are kept."""


class CompressionError(PromotionError):
    """A compression step cannot compress this model (Torch-Pruning cannot trace or prune it,
    the student does not build, fine-tuning diverged): recorded as ``failed`` in the manifest
    with this one line, and the chain goes on with the model it had."""
