"""The promotion pipeline: best trial -> ONNX (parity) -> INT8 (gate) -> TensorRT -> manifest.

The steps are the entries of :data:`raytune_opt.registry.PROMOTION_STEPS` (``promote.targets``),
run in their registration order, each with the steps it ``needs`` first; a step is a function
``step(run)`` of the :class:`_Run` that holds the model, the data and what earlier steps made.

A classification is scored by accuracy, a regression by its metric (:class:`measure.Scorer`);
the INT8 and TensorRT gates compare that score with the fp32 PyTorch model's they were made from.
Scores and gates are on the validation split (an artifact against its fp32 source); every
artifact is also scored on the test split (``test_accuracy`` / ``test_score``), the split no
trial saw: that figure is what the manifest calls the model's quality.

Compression steps (``prune``, ``distill``: :mod:`.prune`, :mod:`.distill`) run first when
listed. Each gates its model against the trial's; one that passes replaces the model the
later steps convert (:meth:`_Run.use`): ONNX's parity is then checked against the compressed
model's own outputs, and the INT8 and TensorRT gates compare with its score, while every
artifact's change is still reported against the trial. A rejected one changes nothing: the
chain goes on from the last accepted model.

Each step records an artifact; a step that cannot run (its input failed, no GPU) records
why instead. Only problems with the experiment itself raise (exit 2); a failed artifact is
reported in the manifest and makes the manifest's status ``failed`` (exit 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from raytune_opt import _atomic, progress, registry, storage
from raytune_opt._fmt import signed
from raytune_opt.experiment import BEST, RESULTS, SPEC, code_dirs_of
from raytune_opt.promote import export, manifest, measure, quantize, tensorrt
from raytune_opt.promote.errors import ArtifactError, PromotionError
from raytune_opt.promote.select import Source, select_source

TARGETS = registry.PROMOTION_STEPS.names()
DIRNAME = "promotion"
_log = logging.getLogger(__name__)


def parse_targets(targets) -> list[str]:
    """Targets in pipeline order, from a list or a comma-separated string.

    Raises:
        PromotionError: an unknown or empty target list.
    """
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    items = [str(t).strip() for t in items if str(t).strip()]
    steps = registry.PROMOTION_STEPS.names()
    unknown = [t for t in items if t not in steps]
    if unknown or not items:
        raise PromotionError(f"targets {','.join(items) or '(none)'}: "
                             f"{'unknown target ' + ', '.join(unknown) if unknown else 'no target given'}; "
                             f"use a comma-separated subset of {','.join(steps)}")
    return [t for t in steps if t in items]


def steps_for(targets: list[str]) -> list[str]:
    """The steps that build ``targets``: each target and what it needs, in pipeline order."""
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for need in registry.PROMOTION_STEPS[name].meta.get("needs", ()):
                add(need)

    for t in targets:
        add(t)
    return [s for s in registry.PROMOTION_STEPS.names() if s in wanted]


def promote(exp_dir: str | Path, targets=None, address: str | None = None, *,
            log: Callable[[str], None] | None = None, endpoint_url: str | None = None,
            trust_code: bool = False) -> dict:
    """Promote the best trial of the experiment in ``exp_dir`` into ``exp_dir/promotion/``.

    Args:
        exp_dir: a directory written by ``raytune-opt run`` (``STORAGE/NAME``), or an
            experiment on S3 (``s3://bucket/prefix/NAME``); its best checkpoint is read from
            wherever best.json says it is.
        targets: a subset of :data:`TARGETS` (list or comma-separated string); None: the
            spec's ``promote.targets``. ``int8`` and ``tensorrt`` build the ONNX model too.
        address: a Ray cluster to build TensorRT engines on (default ``$RAY_ADDRESS``, or
            the Ray this process is connected to; else this machine, if it has a GPU).
        log: called with one line per step (the CLI passes ``print``).
        endpoint_url: the S3 endpoint of an ``s3://`` experiment (default
            ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``, else AWS).
        trust_code: import the user code the experiment's files name (its model, data set
            or distillation student, from the run's code directories), as its sweep did
            (``--trust-code``); without it only built-in ones are rebuilt and a user one is
            refused before anything is written. ``run`` and ``resume`` pass it for their own
            promotion.

    Returns:
        The manifest, as written to ``promotion/manifest.json``.

    Raises:
        UntrustedCodeError: the experiment names user code and ``trust_code`` is false.
        NotAnExperimentError: ``exp_dir`` is not an experiment.
        NoSuccessfulTrialError: no best trial, or its checkpoint is missing.
        PromotionError: unknown targets.
        CheckpointError, DataError: the checkpoint or the data set cannot be read.
        UsageError: ``address`` cannot be reached.
    """
    log = log or (lambda line: None)
    # An S3 experiment is promoted in its local mirror; the promotion is uploaded beside it.
    loc = storage.from_uri(str(exp_dir), endpoint_url)
    loc.fetch(SPEC, BEST, RESULTS, f"{DIRNAME}/{manifest.FILENAME}")
    source = select_source(loc.local)
    targets = parse_targets(source.promote_cfg["targets"] if targets is None else targets)
    # Decided first: joining a cluster that is not there should fail before minutes of work.
    place = tensorrt.placement(address, loc.uri) if "tensorrt" in targets else None
    try:
        result = _promote(source, targets, place, log, trust_code)
    finally:
        tensorrt.leave(place)
    loc.publish(DIRNAME)
    return result


def _promote(source: Source, targets: list[str], place: tensorrt.Placement | None,
             log: Callable[[str], None], trust_code: bool) -> dict:
    from raytune_opt.recipe.bundle import load_bundle, materialize
    from raytune_opt.recipe.checkpoint import load_model

    cfg = source.promote_cfg
    # The run's code directories go on sys.path only for a trusted experiment: untrusted, a
    # file there could stand in for a module a built-in imports.
    code_dirs = code_dirs_of(source.exp_dir) if trust_code else []
    with registry.code_path(code_dirs) if trust_code else contextlib.nullcontext():
        model, ckpt = load_model(source.checkpoint, trust_code=trust_code)  # an untrusted user model: refused
        _check_trusted(source, ckpt, targets, trust_code)  # the data set and the student, before anything is written
        data_cfg = dict(ckpt["recipe"]["data"])
        if not trust_code:  # an untrusted file must not make us write where it says (data.root)
            data_cfg["download"] = False
        data = load_bundle(data_cfg, int(source.spec["seed"]))
    out_dir = source.exp_dir / DIRNAME
    out_dir.mkdir(exist_ok=True)
    log(f"promotion: trial {source.trial_id} ({source.metric}={source.value:.4f}), targets {','.join(targets)}")
    threads = measure.threads_for(cfg.get("ort_threads"))  # experiments of older versions have no such key
    scorer = measure.scorer_for(data.task, source.metric, cfg["int8"], _default("max_relative_change"))
    x_val, y_val = materialize(data.val, collate_fn=data.collate_fn)
    run = _Run(source, cfg, out_dir, x_val.numpy(), y_val.numpy(), log, threads, scorer)
    if data.test is not None:  # scored on every artifact, never gated on
        x_test, y_test = materialize(data.test, collate_fn=data.collate_fn)
        run.x_test, run.y_test = x_test.numpy(), y_test.numpy()
    run.model, run.data, run.ckpt, run.place, run.targets = model, data, ckpt, place, targets
    run.trial_model, run.code_dirs, run.trust_code = model, code_dirs, trust_code

    with measure.torch_threads(threads):
        with progress.step("pytorch: measuring the fp32 reference"):
            run.ref = run.reference(model)
        for name in steps_for(targets):
            registry.PROMOTION_STEPS[name].load()(run)

    old = manifest.previous_artifacts(out_dir, source)
    settings = {"parity_atol": cfg["parity_atol"], "int8": cfg["int8"], "ort_threads": threads,
                "latency": f"CPU: onnxruntime CPUExecutionProvider and torch, {threads} intra-op "
                           f"threads, 5 warm-up runs, then p50/p95 of 10-200 runs; TensorRT: CUDA, "
                           f"device-resident input, synchronized"}
    if scorer.regression:  # a classification's settings stay as they always were
        settings["gate"] = scorer.settings()
    for name in targets:
        if registry.PROMOTION_STEPS[name].meta.get("compresses"):
            from raytune_opt.promote.compress import settings as section

            settings[name] = section(cfg, name)
    result = manifest.build(
        source, targets=targets, artifacts=manifest.merge(old, run.artifacts), inputs=_inputs(data),
        settings=settings, tensorrt_version=run.tensorrt_version)
    manifest.write(out_dir, result)
    return result


def _check_trusted(source: Source, ckpt: dict, targets: list[str], trust_code: bool) -> None:
    """Refuse, before anything is imported or written, user code the experiment names that the
    caller does not trust: the checkpoint's model (again: :func:`load_model` refused it
    already) and data set, and the distillation student.

    Raises:
        UntrustedCodeError: see :mod:`raytune_opt.trust`.
    """
    from raytune_opt import trust

    trust.check_checkpoint(ckpt, source.checkpoint, trust_code=trust_code, data=True)
    if "distill" in steps_for(targets):
        from raytune_opt.promote.distill import student_section

        section = source.promote_cfg.get("distill")
        given = section.get("model") if isinstance(section, dict) else None
        recipe = ckpt.get("recipe") if isinstance(ckpt.get("recipe"), dict) else {}
        trial = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
        student = student_section(trial, given) if isinstance(given, dict) else {}
        target = trust.section_target(student.get("name"), registry.MODELS)
        if target is not None:
            trust.require(target, registry.MODELS, source=source.exp_dir / SPEC, trust_code=trust_code)


class _Run:
    """One promotion's state: the artifacts so far and what later steps need.

    Besides the constructor's: ``model`` (fp32, eval: the model the ONNX, INT8 and TensorRT
    steps convert; the trial's until a compression step is accepted), ``ref`` (its outputs on
    the validation set), ``trial_model`` (the trial's, the teacher of distillation), ``data``
    (the DataBundle), ``ckpt`` (the trial's checkpoint), ``code_dirs`` (where user code
    imports from), ``trust_code`` (whether user code the experiment names may be imported),
    ``targets``, ``place`` (where TensorRT builds, None when it is not a target), and what
    steps leave: ``onnx_bytes`` (None when the export failed),
    ``qdq_bytes`` (TensorRT's S8S8 QDQ model when it passed its gate) and ``qdq_done``
    (whether that was tried). ``fp32`` is the trial's score (every artifact's change is
    against it); ``input``, ``input_score``, ``gate`` and ``footprint`` describe ``model``:
    the compression step that made it (None: the trial), its score and the scorer the later
    gates compare with it, its params and MACs."""

    def __init__(self, source: Source, cfg: dict, out_dir: Path, x_val: np.ndarray, y_val: np.ndarray,
                 log: Callable[[str], None], threads: int, scorer: measure.Scorer):
        self.source, self.cfg, self.out_dir, self.log = source, cfg, out_dir, log
        self.threads = threads  # intra-op threads of ONNX Runtime and torch
        self.x_val, self.y_val = x_val, y_val
        self.x_test: np.ndarray | None = None  # the test split (None: the data set has none)
        self.y_test: np.ndarray | None = None
        self.scorer = scorer
        self.fp32 = 0.0  # the trial's fp32 PyTorch model's score: what every change is reported against
        self.input: str | None = None  # the compression step whose model the later steps convert (None: the trial's)
        self.input_score = 0.0  # that model's score, the ONNX, INT8 and TensorRT gates' reference
        self.gate = scorer  # those gates' scorer (its reason lines name the model they compare with)
        self.footprint: dict = {}  # params and macs of that model
        self.artifacts: list[dict] = []
        self.tensorrt_version: str | None = None
        self.model = self.data = self.ckpt = self.place = self.ref = self.trial_model = None
        self.code_dirs: list[str] = []
        self.trust_code = False
        self.targets: list[str] = []
        self.onnx_bytes: bytes | None = None
        self.qdq_bytes: bytes | None = None
        self.qdq_done = False
        self._x_train: np.ndarray | None = None

    @property
    def x_train(self) -> np.ndarray:
        """The training inputs calibration draws from (read once, when a step first asks)."""
        if self._x_train is None:
            self._x_train = _calibration_pool(self.data, self.cfg, self.ckpt, int(self.source.spec["seed"]))
        return self._x_train

    def add(self, rec: dict) -> dict:
        if rec["status"] in ("ok", "rejected"):
            for key, value in self.footprint.items():  # a compressed model's record has its own
                rec.setdefault(key, value)
        if self.input is not None and rec["name"] != "pytorch":
            rec.setdefault("from_step", self.input)  # converted from a compressed model, not the trial's
        self.artifacts.append(rec)
        if rec["name"] != "pytorch":
            detail = rec["reason"] or _summary(rec)
            self.log(f"{rec['name']}: {rec['status']}{' — ' + detail if detail else ''}")
        return rec

    def use(self, name: str, model, outputs: np.ndarray, score: float, footprint: dict, *, against: str) -> None:
        """Make ``model``, accepted by compression step ``name``, the one the later steps
        convert: ``outputs`` (its validation outputs) become ONNX's parity reference, ``score``
        the INT8 and TensorRT gates' (``against`` names it in their reason lines)."""
        self.model, self.ref, self.input, self.input_score = model, outputs, name, score
        self.footprint = footprint
        self.gate = dataclasses.replace(self.scorer, against=against)

    def scored(self, score: float | None, test: float | None = None) -> dict:
        """The score fields of an artifact record (manifest.artifact's keywords), against the
        trial; ``test``: the artifact's score on the test split (``test_accuracy`` or ``test_score``)."""
        if not self.scorer.regression:
            return {"accuracy": score, "fp32_accuracy": self.fp32, "test_accuracy": test}
        return {"metric": self.scorer.metric, "score": score, "fp32_score": self.fp32,
                "relative_change": None if score is None else self.scorer.change(score, self.fp32),
                "test_score": test}

    def test_score(self, run: Callable[[np.ndarray], np.ndarray]) -> float | None:
        """``run``'s score on the test split (None without one)."""
        if self.x_test is None:
            return None
        return self.scorer.score(measure.predict(run, self.x_test), self.y_test)

    def _failed(self, name: str, exc: Exception) -> None:
        """Record a step that failed, with the traceback in the manifest (for a bug report)."""
        _log.warning("promotion step %s failed", name, exc_info=True)
        self.add(manifest.artifact(name, "failed", reason=f"{type(exc).__name__}: {_first_line(exc)}",
                                   traceback="".join(traceback.format_exception(exc))))

    # ---- PyTorch, the fp32 reference ------------------------------------------------------
    def reference(self, model) -> np.ndarray:
        """fp32 PyTorch outputs (logits, or a regression's (N, 1)) on the validation set;
        records the ``pytorch`` row."""
        from raytune_opt.promote.compress import footprint_of

        run = measure.torch_runner(model)
        outputs = measure.predict(run, self.x_val)
        self.fp32 = self.input_score = self.scorer.score(outputs, self.y_val)
        self.footprint = footprint_of(model, self.data.input_example)
        self.add(manifest.artifact("pytorch", "ok", path=self.source.checkpoint,
                                   **self.scored(self.fp32, self.test_score(run)),
                                   latency_ms=measure.latencies(run, self.x_val),
                                   runtime=f"pytorch cpu, {self.threads} threads"))
        return outputs

    # ---- ONNX ---------------------------------------------------------------------------
    def onnx(self, model, ref: np.ndarray, example) -> bytes | None:
        """Export (traced with the data set's ``input_example``: its shape and dtype) and check
        parity; the ONNX bytes, or None when the export failed either way."""
        import torch

        path = self.out_dir / "model.onnx"
        try:
            # Two rows, so the exporter keeps the batch axis dynamic (as validate --smoke exports).
            data = export.export_onnx(model, torch.from_numpy(measure.batch_of(example.numpy(), 2)), path)
            runner = measure.ort_runner(measure.ort_session(path, self.threads))
            outputs = measure.predict(runner, self.x_val)
            par = export.parity(ref, outputs, float(self.cfg["parity_atol"]), scaled=self.scorer.regression)
            latency = measure.latencies(runner, self.x_val)
            test = self.test_score(runner)
        except (RuntimeError, OSError, MemoryError, *measure.ort_errors()) as exc:
            # The exporter (torch.onnx's errors are RuntimeErrors) or ONNX Runtime refusing this model is
            # this artifact's failure, not the run's; a TypeError or KeyError is our bug and propagates.
            self._failed("onnx", exc)
            return None
        self.add(manifest.artifact("onnx", "ok" if par.ok else "failed", path=path, root=self.out_dir,
                                   reason=par.reason, **self.scored(self.scorer.score(outputs, self.y_val), test),
                                   latency_ms=latency,
                                   runtime=f"onnxruntime cpu, {self.threads} threads",
                                   opset=export.OPSET, parity=par.as_dict()))
        return data if par.ok else None

    # ---- INT8 ---------------------------------------------------------------------------
    def int8(self, x_train: np.ndarray, ckpt: dict, *, flavor: str, usable: bool) -> bytes | None:
        """Quantize (``cpu`` or ``tensorrt`` flavour) behind the gate; the bytes when it passed."""
        name, filename = (("int8", "model.int8.onnx") if flavor == "cpu"
                          else ("int8-tensorrt-qdq", "model.int8.qdq-s8s8.onnx"))
        if not usable:
            self.add(manifest.artifact(name, "skipped", reason="the ONNX model failed; nothing to quantize"))
            return None
        icfg = self.cfg["int8"]
        batches = calibration_batches(x_train, _calibration_batch_size(ckpt), int(icfg["calibration_batches"]),
                                      int(self.source.spec["seed"]))
        path = self.out_dir / filename
        try:
            gate = quantize.quantize_with_gate(
                self.out_dir / "model.onnx", path, batches, flavor=flavor, first_method=icfg["calibration_method"],
                x_val=self.x_val, y_val=self.y_val, scorer=self.gate, fp32_score=self.input_score, name=name)
            # The S8S8 form is TensorRT's input; ORT's CPU kernels run it slowly, so it is not timed here.
            with progress.step(f"{name}: measuring latency"):
                latency = (measure.latencies(measure.ort_runner(measure.ort_session(path, self.threads)),
                                             self.x_val) if flavor == "cpu" else None)
            # Scored on the test split as the gate scored it on validation (the S8S8 form unfused).
            test = self.test_score(measure.ort_runner(measure.ort_session(path, self.threads,
                                                                          fuse_qdq=flavor == "cpu")))
        except (RuntimeError, OSError, MemoryError, ValueError, *measure.ort_errors()) as exc:
            # ONNX Runtime's quantizer raises ValueError for operators it cannot quantize.
            self._failed(name, exc)
            return None
        runtime = (f"onnxruntime cpu, {self.threads} threads" if flavor == "cpu"
                   else "accuracy: onnxruntime cpu; for TensorRT explicit quantization")
        self.add(manifest.artifact(
            name, gate.status, path=path, root=self.out_dir, reason=gate.reason, **self.scored(gate.score, test),
            latency_ms=latency, runtime=runtime,
            quantization={"format": "QDQ", "per_channel": True,
                          "activations": "uint8 asymmetric" if flavor == "cpu" else "int8 symmetric",
                          "weights": "int8 symmetric", "bias": "int32" if flavor == "cpu" else "float",
                          "calibration_method": gate.method, "calibration_batches": len(batches),
                          "calibration_batch_size": int(batches[0].shape[0]),
                          "attempts": [a.as_dict() for a in gate.attempts]}))
        return path.read_bytes() if gate.status == "ok" else None

    # ---- TensorRT -------------------------------------------------------------------------
    def tensorrt(self, place: tensorrt.Placement, onnx_bytes: bytes | None, qdq_bytes: bytes | None) -> None:
        if place.where == "skip":
            self.add(manifest.artifact("tensorrt", "skipped", reason=place.reason))
            return
        if onnx_bytes is None:
            self.add(manifest.artifact("tensorrt", "skipped", reason="the ONNX model failed; nothing to build"))
            return
        try:
            test = None if self.x_test is None else (self.x_test, self.y_test)
            res = tensorrt.build(place, onnx_bytes, qdq_bytes, self.x_val, self.y_val, self.scorer, test)
        except ArtifactError as exc:
            self._failed("tensorrt", exc)
            return
        if res.get("skipped"):
            self.add(manifest.artifact("tensorrt", "skipped", reason=res["skipped"]))
            return
        self.tensorrt_version = res["tensorrt_version"]
        for name, filename in (("tensorrt-fp16", "model.fp16.engine"), ("tensorrt-int8", "model.int8.engine")):
            eng = res["engines"].get(name)
            if eng is None:  # only the INT8 engine can be missing: no QDQ model passed its gate
                self.add(manifest.artifact(name, "skipped", reason=f"no TensorRT-ready QDQ model passed the "
                                                                   f"{self.scorer.gate} (see int8-tensorrt-qdq)"))
                continue
            if eng["status"] != "ok":
                self.add(manifest.artifact(name, "failed", reason=eng["reason"], traceback=eng.get("traceback", "")))
                continue
            path = self.out_dir / filename
            _atomic.write_bytes(path, eng["plan"])
            reason = self.gate.rejection(eng["score"], self.input_score)
            self.add(manifest.artifact(name, "rejected" if reason else "ok", path=path, root=self.out_dir,
                                       reason=reason, **self.scored(eng["score"], eng.get("test_score")),
                                       latency_ms=eng["latency_ms"],
                                       runtime=f"tensorrt {res['tensorrt_version']} on {res['device']}",
                                       max_batch=tensorrt.MAX_BATCH))


# ---- the steps: registry.PROMOTION_STEPS targets, step(run) -> None ------------------------------


def onnx_step(run: _Run) -> None:
    """ONNX export traced with the data set's input example, parity against PyTorch, latency."""
    with progress.step("onnx: exporting, checking parity, measuring latency"):
        run.onnx_bytes = run.onnx(run.model, run.ref, run.data.input_example)


def int8_step(run: _Run) -> None:
    """INT8 for ONNX Runtime's CPU kernels, and TensorRT's symmetric S8S8 form, each behind the gate."""
    run.int8(run.x_train, run.ckpt, flavor="cpu", usable=run.onnx_bytes is not None)
    _tensorrt_qdq(run)


def tensorrt_step(run: _Run) -> None:
    """fp16 and INT8 engines built and timed on a GPU node (skipped, with the reason, without one)."""
    if run.place.where != "skip":
        _tensorrt_qdq(run)
    with progress.step("tensorrt: building and timing engines"):
        run.tensorrt(run.place, run.onnx_bytes, run.qdq_bytes)


def _tensorrt_qdq(run: _Run) -> None:
    if not run.qdq_done:
        run.qdq_bytes = run.int8(run.x_train, run.ckpt, flavor="tensorrt", usable=run.onnx_bytes is not None)
        run.qdq_done = True


def calibration_batches(x_train: np.ndarray, batch_size: int, n: int, seed: int) -> list[np.ndarray]:
    """The calibration data (a seam for tests that need deliberately bad calibration)."""
    return quantize.calibration_batches(x_train, batch_size, n, seed)


def _default(key: str):
    """The schema's default of ``promote.int8.<key>``, for experiments written before the key existed."""
    from raytune_opt.spec import schema

    return schema.lookup(("promote", "int8", key)).default


def _calibration_batch_size(ckpt: dict) -> int:
    """Calibration batches are the trial's training batches."""
    return int(ckpt["recipe"].get("train", {}).get("batch_size") or 64)


def _calibration_pool(data, cfg: dict, ckpt: dict, seed: int) -> np.ndarray:
    """The training inputs calibration draws its batches from: all of an in-memory data set;
    of one that must be iterated sample by sample, a seeded draw of as many as calibration takes."""
    from torch.utils.data import TensorDataset

    from raytune_opt.recipe.bundle import materialize

    limit = None
    if not isinstance(data.train, TensorDataset):
        limit = int(cfg["int8"]["calibration_batches"]) * _calibration_batch_size(ckpt)
    return materialize(data.train, limit=limit, seed=seed, collate_fn=data.collate_fn)[0].numpy()


def _inputs(data) -> dict:
    """The model's input as the manifest describes it (shape, dtype; layout and
    normalization where the data set says)."""
    out = {"name": export.INPUT_NAME, "shape": ["batch", *data.input_shape],
           "dtype": str(data.input_example.dtype).removeprefix("torch."), "output": export.OUTPUT_NAME}
    out.update({k: data.info[k] for k in ("layout", "normalize") if k in data.info})
    out["class_names"] = list(data.class_names)
    return out


def _summary(rec: dict) -> str:
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
