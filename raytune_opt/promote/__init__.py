"""Promotion of a sweep's best trial: ONNX (with a parity check), INT8 with ONNX Runtime
(behind an accuracy gate) and TensorRT engines on a GPU node, described by
``promotion/manifest.json``.

Modules: :mod:`.select` (which trial), :mod:`.prune` and :mod:`.distill` (compression
before conversion, sharing :mod:`.compress`), :mod:`.export` (ONNX, parity), :mod:`.quantize`
(INT8, gate), :mod:`.tensorrt` (engines), :mod:`.measure` (accuracy, latency),
:mod:`.manifest` (the record and its table), :mod:`.pipeline` (the order of the steps).
"""

from raytune_opt.promote.errors import NoSuccessfulTrialError, NotAnExperimentError, PromotionError
from raytune_opt.promote.manifest import table
from raytune_opt.promote.pipeline import TARGETS, parse_targets, promote

__all__ = ["promote", "parse_targets", "table", "TARGETS", "PromotionError", "NotAnExperimentError",
           "NoSuccessfulTrialError"]
