"""Promotion of a sweep's best trial: ONNX (with a parity check), INT8 with ONNX Runtime
(behind an accuracy gate) and TensorRT engines on a GPU node, described by
``promotion/manifest.json``.

Modules: :mod:`.select` (which trial), :mod:`.prune` and :mod:`.distill` (compression
before conversion, sharing :mod:`.compress`), :mod:`.export` (ONNX, parity), :mod:`.quantize`
(INT8, gate), :mod:`.tensorrt` (engines), :mod:`.measure` (accuracy, latency),
:mod:`.manifest` (the record and its table), :mod:`.pipeline` (the order of the steps).
"""

import importlib

from raytune_opt.promote.errors import NoSuccessfulTrialError, NotAnExperimentError, PromotionError

__all__ = ["promote", "parse_targets", "table", "TARGETS", "PromotionError", "NotAnExperimentError",
           "NoSuccessfulTrialError"]

# Imported when first used: validation imports the compression steps' checks from this package
# (.prune, .distill), and the pipeline imports torch.
_LAZY = {"promote": "pipeline", "parse_targets": "pipeline", "TARGETS": "pipeline", "table": "manifest"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
