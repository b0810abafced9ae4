"""The promotion pipeline: the best trial -> the steps of ``promote.targets`` -> the manifest.

The steps are the entries of :data:`raytune_opt.registry.PROMOTION_STEPS` (one module each in
:mod:`raytune_opt.promote.steps`), run in their ``order``, each with the steps it ``needs``
first, then the user's own steps (``module:callable``) in the order listed. A step is a
function ``step(ctx)`` of a :class:`~raytune_opt.promote.context.StepContext`: what it may read
(the model to convert and its reference outputs, the trial's model and checkpoint, the data,
the scorer and gate, its settings, where to write) and the methods through which it records
artifacts, hands the later steps a compressed model, or leaves them outputs. Before the steps
the pipeline measures the fp32 PyTorch model (the ``pytorch`` record); after them it writes the
manifest.

A classification is scored by accuracy, a regression by its metric (:class:`measure.Scorer`);
the INT8 and TensorRT gates compare that score with the fp32 PyTorch model's they were made from.
Scores and gates are on the validation split (an artifact against its fp32 source); every
artifact is also scored on the test split (``test_accuracy`` / ``test_score``), the split no
trial saw: that figure is what the manifest calls the model's quality.

Compression steps (``prune``, ``distill``) run first when listed. Each gates its model against
the trial's; one that passes replaces the model the later steps convert
(:meth:`StepContext.use`): ONNX's parity is then checked against the compressed model's own
outputs, and the INT8 and TensorRT gates compare with its score, while every artifact's change
is still reported against the trial. A rejected one changes nothing: the chain goes on from
the last accepted model.

Each step records an artifact; a step that cannot run (its input failed, no GPU) records
why instead. Only problems with the experiment itself raise (exit 2); a failed artifact is
reported in the manifest and makes the manifest's status ``failed`` (exit 1). A user's step
that raises is such a failed artifact, named after the step, with its traceback.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from raytune_opt import progress, registry, storage
from raytune_opt.experiment import BEST, RESULTS, SPEC, code_dirs_of
from raytune_opt.promote import export, manifest, measure, quantize, tensorrt
from raytune_opt.promote.context import StepContext, _Chain
from raytune_opt.promote.errors import PromotionError
from raytune_opt.promote.select import Source, select_source

TARGETS = registry.PROMOTION_STEPS.names()
DIRNAME = "promotion"


def parse_targets(targets) -> list[str]:
    """Targets in pipeline order, from a list or a comma-separated string: the registered
    steps in their order, then import paths (your own steps) in the order given.

    Raises:
        PromotionError: an unknown or empty target list.
    """
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    items = [str(t).strip() for t in items if str(t).strip()]
    steps = registry.PROMOTION_STEPS.names()
    unknown = [t for t in items if t not in steps and not registry.is_import_path(t)]
    if unknown or not items:
        raise PromotionError(f"targets {','.join(items) or '(none)'}: "
                             f"{'unknown target ' + ', '.join(unknown) if unknown else 'no target given'}; "
                             f"use a comma-separated subset of {','.join(steps)}, or your own step as "
                             f"'module:callable'")
    return [t for t in steps if t in items] + list(dict.fromkeys(t for t in items if t not in steps))


def steps_for(targets: list[str]) -> list[str]:
    """The steps that build ``targets``: each target and what it needs, in pipeline order."""
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            entry = registry.PROMOTION_STEPS.get(name)
            for need in entry.meta.get("needs", ()) if entry is not None else ():
                add(need)

    for t in targets:
        add(t)
    return ([s for s in registry.PROMOTION_STEPS.names() if s in wanted]
            + [t for t in targets if t not in registry.PROMOTION_STEPS])


def promote(exp_dir: str | Path, targets=None, address: str | None = None, *,
            log: Callable[[str], None] | None = None, endpoint_url: str | None = None,
            trust_code: bool = False) -> dict:
    """Promote the best trial of the experiment in ``exp_dir`` into ``exp_dir/promotion/``.

    Args:
        exp_dir: a directory written by ``raytune-opt run`` (``STORAGE/NAME``), or an
            experiment on S3 (``s3://bucket/prefix/NAME``); its best checkpoint is read from
            wherever best.json says it is.
        targets: a subset of :data:`TARGETS` (list or comma-separated string), and your own
            steps as ``module:callable``; None: the spec's ``promote.targets``. ``int8`` and
            ``tensorrt`` build the ONNX model too.
        address: a Ray cluster to build TensorRT engines on (default ``$RAY_ADDRESS``, or
            the Ray this process is connected to; else this machine, if it has a GPU).
        log: called with one line per step (the CLI passes ``print``).
        endpoint_url: the S3 endpoint of an ``s3://`` experiment (default
            ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``, else AWS).
        trust_code: import the user code the experiment's files name (its model, data set
            distillation student or promotion step, from the run's code directories), as its
            sweep did (``--trust-code``); without it only built-in ones are rebuilt and a user
            one is refused before anything is written. A step named in ``targets`` is the
            caller's own: it needs no trust. ``run`` and ``resume`` pass it for their own
            promotion.

    Returns:
        The manifest, as written to ``promotion/manifest.json``.

    Raises:
        UntrustedCodeError: the experiment names user code and ``trust_code`` is false.
        NotAnExperimentError: ``exp_dir`` is not an experiment.
        NoSuccessfulTrialError: no best trial, or its checkpoint is missing.
        PromotionError: unknown targets, or a step of yours that does not import or take the context.
        CheckpointError, DataError: the checkpoint or the data set cannot be read.
        UsageError: ``address`` cannot be reached.
    """
    log = log or (lambda line: None)
    # An S3 experiment is promoted in its local mirror; the promotion is uploaded beside it.
    loc = storage.from_uri(str(exp_dir), endpoint_url)
    loc.fetch(SPEC, BEST, RESULTS, f"{DIRNAME}/{manifest.FILENAME}")
    source = select_source(loc.local)
    named_by_file = targets is None
    targets = parse_targets(source.promote_cfg["targets"] if targets is None else targets)
    # Decided first: joining a cluster that is not there should fail before minutes of work.
    gpu = any(registry.PROMOTION_STEPS[s].meta.get("gpu") for s in steps_for(targets) if s in registry.PROMOTION_STEPS)
    place = tensorrt.placement(address, loc.uri) if gpu else None
    try:
        result = _promote(source, targets, place, log, trust_code, named_by_file)
    finally:
        tensorrt.leave(place)
    loc.publish(DIRNAME)
    return result


def _promote(source: Source, targets: list[str], place: tensorrt.Placement | None,
             log: Callable[[str], None], trust_code: bool, named_by_file: bool) -> dict:
    from raytune_opt.promote.compress import footprint_of
    from raytune_opt.recipe.bundle import load_bundle, materialize
    from raytune_opt.recipe.checkpoint import load_model

    cfg = source.promote_cfg
    # The run's code directories go on sys.path only for a trusted experiment: untrusted, a
    # file there could stand in for a module a built-in imports.
    code_dirs = code_dirs_of(source.exp_dir) if trust_code else []
    with registry.code_path(code_dirs) if trust_code else contextlib.nullcontext():
        model, ckpt = load_model(source.checkpoint, trust_code=trust_code)  # an untrusted user model: refused
        model, merged = _deployable(model, ckpt)
        # The data set, the student and the steps the experiment names, before anything is written.
        _check_trusted(source, ckpt, targets, trust_code, named_by_file)
        user_steps = _user_steps(targets, code_dirs)  # imported now: a bad one stops the promotion here
        data_cfg = dict(ckpt["recipe"]["data"])
        if not trust_code:  # an untrusted file must not make us write where it says (data.root)
            data_cfg["download"] = False
        data = load_bundle(data_cfg, int(source.spec["seed"]))
    out_dir = source.exp_dir / DIRNAME
    out_dir.mkdir(exist_ok=True)
    log(f"promotion: trial {source.trial_id} ({source.metric}={source.value:.4f}), targets {','.join(targets)}")
    threads = measure.threads_for(cfg.get("ort_threads"))  # experiments of older versions have no such key
    scorer = measure.scorer_for(data.task, source.metric, cfg["int8"], _default("max_relative_change"))
    x_val, y_val = (t.numpy() for t in materialize(data.val, collate_fn=data.collate_fn))
    # The test split is scored on every artifact, never gated on.
    x_test, y_test = (None, None) if data.test is None else (
        t.numpy() for t in materialize(data.test, collate_fn=data.collate_fn))

    with measure.torch_threads(threads):
        with progress.step("pytorch: measuring the fp32 reference"):
            runner = measure.torch_runner(model)
            ref = measure.predict(runner, x_val)
            fp32 = scorer.score(ref, y_val)
            chain = _Chain(model=model, reference=ref, model_score=fp32, gate=scorer,
                           footprint=footprint_of(model, data.input_example))
            ctx = StepContext(
                step="pytorch", source=source, checkpoint=ckpt, trial_model=model, data=data, x_val=x_val,
                y_val=y_val, x_test=x_test, y_test=y_test, scorer=scorer, fp32=fp32, out_dir=out_dir,
                threads=threads, targets=tuple(targets), placement=place, code_dirs=tuple(code_dirs),
                trust_code=trust_code, log=log, _promote=cfg, _sections=_sections(),
                _calibration=_calibration(data, ckpt, int(source.spec["seed"])), _chain=chain)
            ctx.record("pytorch", "ok", path=source.checkpoint, **ctx.scored(fp32, ctx.test_score(runner)),
                       latency_ms=measure.latencies(runner, x_val), runtime=f"pytorch cpu, {threads} threads")
        for name in steps_for(targets):
            if name in user_steps:
                _run_user_step(user_steps[name], ctx.for_step(name))
            else:
                registry.PROMOTION_STEPS[name].load()(ctx.for_step(name))

    result = manifest.build(
        source, targets=targets, artifacts=manifest.merge(manifest.previous_artifacts(out_dir, source),
                                                          chain.artifacts),
        inputs=_inputs(data), settings=_settings(ctx, targets), tensorrt_version=chain.versions.get("tensorrt"))
    result["versions"].update({k: v for k, v in chain.versions.items() if k != "tensorrt"})
    if merged is not None:
        result["source"]["merged"] = merged
    manifest.write(out_dir, result)
    return result


def _deployable(model, ckpt: dict) -> tuple[Any, dict | None]:
    """The model the steps convert: what the trial's loop says deploys from its checkpoint's
    (its LOOPS entry's ``deploy``: hf_trainer merges the LoRA adapter into the base weights),
    else the checkpoint's model; and what was changed (for the manifest's ``source.merged``)."""
    entry = registry.LOOPS.get(((ckpt.get("recipe") or {}).get("train") or {}).get("loop"))
    deploy = entry.meta.get("deploy") if entry is not None else None
    if deploy is None:
        return model, None
    return registry.import_target(deploy)(model)


def _settings(ctx: StepContext, targets: list[str]) -> dict:
    """The manifest's ``settings``: what the measurements and gates ran with."""
    cfg, threads = ctx.promote, ctx.threads
    settings = {"parity_atol": cfg["parity_atol"], "int8": cfg["int8"], "ort_threads": threads,
                "latency": f"CPU: onnxruntime CPUExecutionProvider and torch, {threads} intra-op "
                           f"threads, 5 warm-up runs, then p50/p95 of 10-200 runs; TensorRT: CUDA, "
                           f"device-resident input, synchronized"}
    if ctx.scorer.regression:  # a classification's settings stay as they always were
        settings["gate"] = ctx.scorer.settings()
    for name in targets:
        entry = registry.PROMOTION_STEPS.get(name)
        if entry is not None and entry.meta.get("compresses"):
            settings[name] = ctx.section(name)
    return settings


def _check_trusted(source: Source, ckpt: dict, targets: list[str], trust_code: bool, named_by_file: bool) -> None:
    """Refuse, before anything is imported or written, user code the experiment names that the
    caller does not trust: the checkpoint's model (again: :func:`load_model` refused it
    already) and data set, the distillation student, and promotion steps of the spec's
    ``promote.targets`` (``named_by_file``: the caller did not name the targets itself).

    Raises:
        UntrustedCodeError: see :mod:`raytune_opt.trust`.
    """
    from raytune_opt import trust

    trust.check_checkpoint(ckpt, source.checkpoint, trust_code=trust_code, data=True)
    if named_by_file:
        for target in targets:
            if target not in registry.PROMOTION_STEPS:
                trust.require(target, registry.PROMOTION_STEPS, source=source.exp_dir / SPEC, trust_code=trust_code,
                              what="promotion step")
    if "distill" in steps_for(targets):
        from raytune_opt.promote.steps.distill import student_section

        section = source.promote_cfg.get("distill")
        given = section.get("model") if isinstance(section, dict) else None
        recipe = ckpt.get("recipe") if isinstance(ckpt.get("recipe"), dict) else {}
        trial = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
        student = student_section(trial, given) if isinstance(given, dict) else {}
        target = trust.section_target(student.get("name"), registry.MODELS)
        if target is not None:
            trust.require(target, registry.MODELS, source=source.exp_dir / SPEC, trust_code=trust_code)


def _user_steps(targets: list[str], code_dirs: list[str]) -> dict[str, Callable]:
    """Your own steps among ``targets`` (import paths), imported and checked to take the context.

    Raises:
        PromotionError: one does not import, or cannot be called with the context alone.
    """
    from raytune_opt.promote.steps import load_user_step

    out = {}
    for target in targets:
        if target not in registry.PROMOTION_STEPS:
            try:
                out[target] = load_user_step(target, code_dirs)
            except registry.ImportTargetError as exc:
                raise PromotionError(f"promotion step {target}: {exc}; {exc.fix}") from None
    return out


def _run_user_step(step: Callable, ctx: StepContext) -> None:
    """Run a user's step as the built-ins run; what it raises is its artifact's failure (with
    the traceback in the manifest), not the promotion's."""
    with registry.code_path(ctx.code_dirs):  # where its module imports from, for what it imports lazily
        try:
            step(ctx)
        except Exception as exc:  # the user's code: any exception is its own failure
            ctx.failed(ctx.step, exc)


def _sections() -> dict:
    """``promote.<step>`` as each registered step declares it (its ``settings`` meta)."""
    return {n: registry.PROMOTION_STEPS[n].meta["settings"] for n in registry.PROMOTION_STEPS
            if registry.PROMOTION_STEPS[n].meta.get("settings") is not None}


def calibration_batches(x_train: np.ndarray, batch_size: int, n: int, seed: int) -> list[np.ndarray]:
    """The calibration data (a seam for tests that need deliberately bad calibration)."""
    return quantize.calibration_batches(x_train, batch_size, n, seed)


def _calibration(data, ckpt: dict, seed: int) -> Callable[[int], list[np.ndarray]]:
    """``n -> n`` calibration batches (:meth:`StepContext.calibration_batches`): batches of the
    trial's batch size drawn from a pool of training inputs, read once, when a step first asks:
    all of an in-memory data set; of one that must be iterated sample by sample, a seeded draw
    of as many as that first request takes."""
    batch_size = _calibration_batch_size(ckpt)
    pool: list[np.ndarray] = []

    def draw(n: int) -> list[np.ndarray]:
        if not pool:
            pool.append(_calibration_pool(data, n * batch_size, seed))
        return calibration_batches(pool[0], batch_size, n, seed)

    return draw


def _default(key: str):
    """The schema's default of ``promote.int8.<key>``, for experiments written before the key existed."""
    from raytune_opt.spec import schema

    return schema.lookup(("promote", "int8", key)).default


def _calibration_batch_size(ckpt: dict) -> int:
    """Calibration batches are the trial's training batches."""
    return int(ckpt["recipe"].get("train", {}).get("batch_size") or 64)


def _calibration_pool(data, limit: int, seed: int) -> np.ndarray:
    """The training inputs calibration draws its batches from: all of an in-memory data set;
    of one that must be iterated sample by sample, a seeded draw of ``limit`` of them."""
    from torch.utils.data import TensorDataset

    from raytune_opt.recipe.bundle import materialize

    return materialize(data.train, limit=None if isinstance(data.train, TensorDataset) else limit, seed=seed,
                       collate_fn=data.collate_fn)[0].numpy()


def _inputs(data) -> dict:
    """The model's input as the manifest describes it (shape, dtype; layout and
    normalization where the data set says)."""
    out = {"name": export.INPUT_NAME, "shape": ["batch", *data.input_shape],
           "dtype": str(data.input_example.dtype).removeprefix("torch."), "output": export.OUTPUT_NAME}
    out.update({k: data.info[k] for k in ("layout", "normalize") if k in data.info})
    out["class_names"] = list(data.class_names)
    return out
