"""Promotion of a sweep's best trial: ONNX (with a parity check), INT8 with ONNX Runtime
(behind an accuracy gate) and TensorRT engines on a GPU node, described by
``promotion/manifest.json``.

Modules: :mod:`.select` (which trial), :mod:`.steps` (the steps, one module each, written to
:class:`StepContext`, the contract in :mod:`.context`), :mod:`.pipeline` (their order, the
reference they compare with, the manifest), and what the steps use: :mod:`.prune` and
:mod:`.compress` (compression before conversion), :mod:`.export` (ONNX, parity),
:mod:`.quantize` (INT8, gate), :mod:`.tensorrt` (engines), :mod:`.measure` (accuracy,
latency), :mod:`.manifest` (the record and its table).
"""

import importlib

from raytune_opt.promote.errors import NoSuccessfulTrialError, NotAnExperimentError, PromotionError

__all__ = ["promote", "parse_targets", "table", "TARGETS", "StepContext", "PromotionError", "NotAnExperimentError",
           "NoSuccessfulTrialError"]

# Imported when first used: validation imports the steps' declarations and checks from this
# package (.steps), and the pipeline imports torch.
_LAZY = {"promote": "pipeline", "parse_targets": "pipeline", "TARGETS": "pipeline", "table": "manifest",
         "StepContext": "context"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
