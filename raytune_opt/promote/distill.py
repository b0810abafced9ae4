"""The ``distill`` promotion step: a student model trained with knowledge distillation from
the best trial's model as teacher.

The student is ``promote.distill.model``, a model section as the spec's ``model`` (a
registered name or a ``module:callable`` with its keys or ``args``). When it keeps the
trial's ``model.name`` (or names none), the keys it does not give are the trial's, so
``{width: 8}`` is the trial's model at width 8; a student of another model starts from the
schema's defaults. It is trained from scratch for ``promote.distill.epochs`` (default: the
trial's ``train.epochs``) on the trial's recipe (:mod:`.compress`), gated against the trial
(``promote.distill.max_accuracy_drop``, a regression ``max_relative_change``) and saved as
``promotion/model.distilled.pt`` with its own model section in the recipe, so it loads as any
checkpoint.

This module imports neither torch nor Ray at import time (validation imports :func:`check`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from raytune_opt import registry
from raytune_opt.promote.errors import CompressionError

if TYPE_CHECKING:
    from raytune_opt.promote.pipeline import _Run

__all__ = ["distill_step", "student_section", "check"]

_EXAMPLE = "e.g. {width: 8} (the trial's model, narrower) or {name: small_cnn, width: 8}"


def check(view: registry.SpecView) -> list[registry.Finding]:
    """The student must be given, as a model section whose keys are the spec's ``model`` keys,
    each valid there, naming a registered model or an import path that takes the data's inputs."""
    from raytune_opt.spec import schema
    from raytune_opt.spec.validate import coerce, did_you_mean, fmt

    at = ("promote", "distill", "model")
    student = view.data["promote"]["distill"]["model"]
    if student is None:
        return [registry.Finding(at, "distill needs a student model (got null)",
                                 f"set promote.distill.model to a model section, {_EXAMPLE}")]
    section = schema.lookup(("model",))
    out = []
    for key, value in student.items():
        node = section.fields.get(key)
        if node is None:
            hint = did_you_mean(key, section.fields)
            out.append(registry.Finding(at + (key,), f"not a model key (got {fmt(key)})",
                                        (hint + " " if hint else "") + "valid keys: " + ", ".join(section.fields)))
            continue
        if isinstance(node, schema.Section):  # args: any mapping of parameter names
            if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value):
                out.append(registry.Finding(at + (key,), f"must be a mapping of parameter names (got {fmt(value)})",
                                            "write the student's keyword arguments indented below it"))
            continue
        _, wrong, fix = coerce(value, node)
        if wrong:
            out.append(registry.Finding(at + (key,), wrong, fix))
    name = student.get("name")
    if name is not None and not out:
        out += _input_kinds(view.data, name, at)
    return out


def _input_kinds(d: dict, name: str, at: tuple) -> list[registry.Finding]:
    """A built-in student must take the built-in data set's inputs (images, signals, rows)."""
    model, data = registry.MODELS.get(name), registry.DATASETS.get(d["data"]["dataset"])
    takes = (model.meta.get("inputs") if model is not None else None) or ()
    gives = data.meta.get("inputs") if data is not None else None
    if not takes or gives is None or gives in takes:
        return []
    fit = [n for n in registry.MODELS if gives in registry.MODELS[n].meta.get("inputs", ())]
    return [registry.Finding(at + ("name",), f"{name} does not take the inputs of data set {d['data']['dataset']} "
                             f"(got {name!r})", f"use one of {', '.join(fit)}, or a 'module:callable'",
                             reads="data.dataset")]


def student_section(trial_model: dict, given: dict) -> dict:
    """The student's model section: ``given`` over the trial's section when it keeps the
    trial's model (or names none), else over the schema's defaults."""
    from raytune_opt.spec import schema

    keeps = given.get("name", trial_model.get("name")) == trial_model.get("name")
    base = dict(trial_model) if keeps else schema.defaults(schema.lookup(("model",)))
    return {**base, **given}


def distill_step(run: _Run) -> None:
    """Build the student, train it with distillation from the trial's model, gate, save and
    record it (a student that cannot be built: a failed record, one line)."""
    from raytune_opt.promote import compress, manifest
    from raytune_opt.recipe.errors import RecipeConfigError

    cfg = compress.settings(run.cfg, "distill")
    try:
        if not cfg["model"]:
            raise CompressionError(f"distill: promote.distill.model is not set; set it to the student's model "
                                   f"section, {_EXAMPLE}")
        section = student_section(run.ckpt["recipe"].get("model") or {}, cfg["model"])
        student, spec = _build(run, section)
        epochs = int(cfg["epochs"] or run.ckpt["recipe"].get("train", {}).get("epochs") or 1)
        compress.distill_train(student, run.trial_model, run, epochs=epochs, alpha=float(cfg["alpha"]),
                               temperature=float(cfg["temperature"]), label="distill")
        recipe = {**run.ckpt["recipe"], "model": section}
        compress.finish(run, "distill", student, made="distilled", spec=spec, recipe=recipe, epochs=epochs,
                        details={"student": section, "epochs": epochs})
    except (CompressionError, RecipeConfigError) as exc:
        run.add(manifest.artifact("distill", "failed", reason=str(exc)))


def _build(run: _Run, section: dict):
    """The student (seeded as a trial's model is) and its spec.

    Raises:
        CompressionError: the section names no model that builds for this data.
    """
    import torch

    from raytune_opt.errors import describe_raised
    from raytune_opt.recipe.errors import RecipeConfigError
    from raytune_opt.recipe.models import build_model_from_spec, model_spec

    data = run.data
    torch.manual_seed(int(run.source.spec["seed"]))
    # A user student was refused up front unless the experiment is trusted (pipeline._check_trusted).
    with registry.code_path(run.code_dirs) if run.trust_code else contextlib.nullcontext():
        try:
            spec = model_spec(section, data.input_shape, data.num_classes)
            return build_model_from_spec(spec, run.code_dirs), spec
        except RecipeConfigError as exc:
            raise CompressionError(f"distill: promote.distill.model: {exc}") from None
        except Exception as exc:  # the user's constructor
            raise CompressionError(f"distill: promote.distill.model {section.get('name')}: building it raised "
                                   f"{describe_raised(exc)}") from None
