"""What a promotion step gets: :class:`StepContext`, the public contract every step uses.

A step is a function ``step(ctx) -> None`` (the built-ins: :mod:`raytune_opt.promote.steps`;
yours: ``promote.targets: [onnx, mypkg.steps:card]``). Through ``ctx`` it reads the trial
(its model, checkpoint and scores), the data (validation, test, calibration batches), the
scorer and gate, its own settings and where to write; and it may do three things, each
through a method: add an artifact record to the manifest (:meth:`StepContext.record`), hand
the later steps a compressed model to convert (:meth:`StepContext.use`), and leave a named
output for the later steps (:meth:`StepContext.leave`: the ONNX step leaves the bytes of
``model.onnx``, which INT8 and TensorRT start from).

The context is frozen: its fields cannot be reassigned, and what it hands out (settings,
records, outputs) are copies or read-only views. What changes as the steps run (the model
the later steps convert, the records, the outputs) lives in one state the pipeline shares
between the steps' contexts, and changes only through those methods.

This module imports neither torch nor Ray (a step's module may import it for type hints).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import numpy as np

    from raytune_opt.promote.measure import Scorer
    from raytune_opt.promote.select import Source
    from raytune_opt.promote.tensorrt import Placement

__all__ = ["StepContext"]

_log = logging.getLogger(__name__)


@dataclass
class _Chain:
    """What the steps change as they run, shared by every step's context (see the properties
    of :class:`StepContext` of the same names)."""

    model: Any
    reference: Any
    model_score: float
    gate: Any
    footprint: dict
    made_by: str | None = None
    artifacts: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class StepContext:
    """What one promotion step may read, and the methods through which it adds to the promotion.

    Attributes:
        step: the step's name (a registered name, or the import path ``promote.targets`` gives);
            its records are named after it (``int8``, ``int8-tensorrt-qdq``).
        source: the trial being promoted (:class:`~raytune_opt.promote.select.Source`: its id,
            metric and value, the experiment's resolved spec, its directory and checkpoint path).
        checkpoint: the trial's checkpoint as loaded (its ``recipe``, ``model`` spec...).
        trial_model: the trial's fp32 model in eval mode (a teacher for distillation); do not
            change it: copy it first (``copy.deepcopy``).
        data: the data set (:class:`~raytune_opt.recipe.bundle.DataBundle`: ``input_example``,
            ``input_shape``, ``num_classes``, ``task``...).
        x_val, y_val: the validation split as arrays, what scores and gates use.
        x_test, y_test: the test split no trial saw (None when there is none).
        scorer: scores outputs on labels (accuracy, or a regression's metric) and holds the
            promotion's gate (:class:`~raytune_opt.promote.measure.Scorer`).
        fp32: the trial's fp32 score on the validation split (every artifact's change is
            reported against it).
        out_dir: the promotion directory; write artifacts there (atomically).
        threads: intra-op threads for ONNX Runtime and torch when measuring latency.
        targets: the steps asked for (as given, in the order they run).
        placement: where GPU work runs (:class:`~raytune_opt.promote.tensorrt.Placement`), for
            a step registered with ``gpu=True``; None otherwise.
        code_dirs: where the experiment's own code imports from (empty unless trusted).
        trust_code: whether code the experiment names may be imported.
        log: prints one line (what the CLI shows).
    """

    step: str
    source: Source
    checkpoint: Mapping
    trial_model: Any
    data: Any
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    scorer: Scorer
    fp32: float
    out_dir: Path
    threads: int
    targets: tuple[str, ...]
    placement: Placement | None
    code_dirs: tuple[str, ...]
    trust_code: bool
    log: Callable[[str], None]
    _promote: dict = field(repr=False)
    _sections: Mapping = field(repr=False)
    _calibration: Callable[[int], list] = field(repr=False)
    _chain: _Chain = field(repr=False)

    def for_step(self, step: str) -> StepContext:
        """The same promotion, as step ``step`` sees it (its own name and settings)."""
        return dataclasses.replace(self, step=step)

    # ---- what a step reads ------------------------------------------------------------------
    @property
    def settings(self) -> dict:
        """This step's ``promote.<step>`` settings, the schema's defaults under what the spec
        says (a copy; empty for a step without a section)."""
        return self.section(self.step)

    def section(self, name: str) -> dict:
        """Step ``name``'s settings, as :attr:`settings` gives them (a copy): for a step that
        reads another's, as TensorRT reads ``promote.int8``'s calibration."""
        declared = self._sections.get(name)
        if declared is None:
            return copy.deepcopy(self._promote.get(name)) if isinstance(self._promote.get(name), dict) else {}
        from raytune_opt.spec.schema import defaults

        # Experiments written before a section existed have none: its defaults are what they get.
        return {**defaults(declared), **copy.deepcopy(self._promote.get(name) or {})}

    @property
    def promote(self) -> dict:
        """The whole ``promote`` section as the experiment's spec resolved it (a copy), e.g.
        ``parity_atol``."""
        return copy.deepcopy(self._promote)

    @property
    def seed(self) -> int:
        """The experiment's seed (seed any random draw with it)."""
        return int(self.source.spec["seed"])

    @property
    def model(self):
        """The fp32 model to convert (eval mode): the trial's, or the last one a compression
        step handed on with :meth:`use`. Do not change it: copy it first."""
        return self._chain.model

    @property
    def reference(self) -> np.ndarray:
        """:attr:`model`'s outputs on the validation split: what a conversion's parity is checked against."""
        return self._chain.reference

    @property
    def model_score(self) -> float:
        """:attr:`model`'s score on the validation split: what a conversion's gate compares with."""
        return self._chain.model_score

    @property
    def gate(self) -> Scorer:
        """The scorer whose ``rejection(score, model_score)`` a conversion's gate calls (its
        reason names :attr:`model`)."""
        return self._chain.gate

    @property
    def made_by(self) -> str | None:
        """The compression step that made :attr:`model` (None: it is the trial's)."""
        return self._chain.made_by

    @property
    def footprint(self) -> dict:
        """``params`` and ``macs`` of :attr:`model` (a copy)."""
        return dict(self._chain.footprint)

    @property
    def artifacts(self) -> tuple[dict, ...]:
        """The records so far (copies), the ``pytorch`` reference first."""
        return tuple(copy.deepcopy(rec) for rec in self._chain.artifacts)

    @property
    def outputs(self) -> Mapping[str, Any]:
        """What earlier steps left (:meth:`leave`), read-only: e.g. ``outputs["onnx"]``, the
        bytes of ``model.onnx`` (None when the export failed; absent when ``onnx`` did not run)."""
        return types.MappingProxyType(self._chain.outputs)

    def calibration_batches(self, n: int) -> list[np.ndarray]:
        """``n`` batches of training inputs (the trial's batch size, drawn with the
        experiment's seed; fewer when the training split is small): calibration data."""
        return self._calibration(int(n))

    def scored(self, score: float | None, test: float | None = None) -> dict:
        """The score fields of a record, against the trial: pass them to :meth:`record`.
        ``score``: on the validation split; ``test``: on the test split (see :meth:`test_score`)."""
        if not self.scorer.regression:
            return {"accuracy": score, "fp32_accuracy": self.fp32, "test_accuracy": test}
        return {"metric": self.scorer.metric, "score": score, "fp32_score": self.fp32,
                "relative_change": None if score is None else self.scorer.change(score, self.fp32),
                "test_score": test}

    def test_score(self, run: Callable[[np.ndarray], np.ndarray]) -> float | None:
        """The score on the test split of ``run`` (inputs -> outputs); None without one."""
        if self.x_test is None:
            return None
        from raytune_opt.promote import measure

        return self.scorer.score(measure.predict(run, self.x_test), self.y_test)

    # ---- what a step does -------------------------------------------------------------------
    def record(self, name: str, status: str, *, path: str | Path | None = None, reason: str = "",
               **fields: Any) -> dict:
        """Add an artifact record to the manifest and print its line; returns the record.

        Args:
            name: the artifact's name: the step's own, or ``<step>-<what>``.
            status: ``ok``, ``rejected`` (failed its gate; the file is kept), ``skipped`` or
                ``failed``; anything but ``ok`` says why in ``reason``.
            path: its file, hashed and recorded relative to :attr:`out_dir`.
            fields: the rest of the record (:meth:`scored`'s fields, ``latency_ms``, ``runtime``,
                and anything of the step's own, JSON values).
        """
        from raytune_opt.promote import manifest

        return self.add(manifest.artifact(name, status, path=path, root=self.out_dir, reason=reason, **fields))

    def add(self, rec: dict) -> dict:
        """Add a record made with :func:`raytune_opt.promote.manifest.artifact` (see :meth:`record`)."""
        chain = self._chain
        if rec["status"] in ("ok", "rejected"):
            for key, value in chain.footprint.items():  # a compressed model's record has its own
                rec.setdefault(key, value)
        if chain.made_by is not None and rec["name"] != "pytorch":
            rec.setdefault("from_step", chain.made_by)  # converted from a compressed model, not the trial's
        chain.artifacts.append(rec)
        if rec["name"] != "pytorch":
            detail = rec["reason"] or _summary(rec)
            self.log(f"{rec['name']}: {rec['status']}{' — ' + detail if detail else ''}")
        return rec

    def failed(self, name: str, exc: BaseException) -> dict:
        """Record artifact ``name`` as failed by ``exc``, with the traceback (for a bug report)."""
        _log.warning("promotion step %s failed", name, exc_info=exc)
        return self.record(name, "failed", reason=f"{type(exc).__name__}: {_first_line(exc)}",
                           traceback="".join(traceback.format_exception(exc)))

    def use(self, model, outputs: np.ndarray, score: float, footprint: dict, *, against: str) -> None:
        """Hand the later steps ``model``, which this (compression) step made and its gate
        accepted: they convert it instead. ``outputs`` (its validation outputs) become their
        parity reference, ``score`` what their gates compare with (``against`` names the
        model in their reason lines), ``footprint`` its ``params`` and ``macs``."""
        chain = self._chain
        chain.model, chain.reference, chain.made_by, chain.model_score = model, outputs, self.step, score
        chain.footprint = dict(footprint)
        chain.gate = dataclasses.replace(self.scorer, against=against)

    def leave(self, key: str, value: Any) -> None:
        """Leave ``value`` under ``key`` in :attr:`outputs` for the later steps (by convention
        ``key`` is the step's name, or the artifact's)."""
        self._chain.outputs[key] = value

    def version(self, tool: str, version: str) -> None:
        """Record the version of a tool that built an artifact (the manifest's ``versions``)."""
        self._chain.versions[tool] = version


def _summary(rec: dict) -> str:
    from raytune_opt._fmt import signed

    parts = []
    if rec.get("parity"):
        p = rec["parity"]
        top1 = "" if rec.get("metric") else f", top-1 agree {p['top1_agreement']:.2%}"  # a regression has no classes
        parts.append(f"parity max |Δ| {p['max_abs_diff']:.2g}{top1}")
    if rec.get("quantization"):
        parts.append(f"{rec['quantization']['calibration_method']} calibration")
    if rec.get("of_trial"):  # a compressed model: how much of the trial's it kept
        parts.append(", ".join(f"{k} {v:.0%}" for k, v in rec["of_trial"].items() if v is not None) + " of the trial's")
    against = "the trial" if "from_step" in rec else "fp32"  # after a compression step, fp32 is ambiguous
    if rec.get("delta_points") is not None:
        parts.append(f"Δ {signed(rec['delta_points'], '+.2f')} points vs {against}")
    if rec.get("relative_change") is not None:
        what = "1 - r2" if rec["metric"] == "r2" else rec["metric"]
        parts.append(f"{what} {signed(rec['relative_change'], '+.2%')} vs {against}")
    return ", ".join(parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
