"""The ``distill`` promotion step: a student model trained with knowledge distillation from
the best trial's model as teacher.

The student is ``promote.distill.model``, a model section as the spec's ``model`` (a
registered name or a ``module:callable`` with its keys or ``args``). When it keeps the
trial's ``model.name`` (or names none), the keys it does not give are the trial's, so
``{width: 8}`` is the trial's model at width 8; a student of another model starts from the
schema's defaults. It is trained from scratch for ``promote.distill.epochs`` (default: the
trial's ``train.epochs``) on the trial's recipe (:mod:`raytune_opt.promote.compress`), gated
against the trial (``promote.distill.max_accuracy_drop``, a regression ``max_relative_change``)
and saved as ``promotion/model.distilled.pt`` with its own model section in the recipe, so it
loads as any checkpoint.

A compression step: it runs after ``prune`` (``order``), and only when listed (``by_default``
false). This module imports neither torch nor Ray at import time (validation imports it).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from raytune_opt import registry
from raytune_opt.promote.errors import CompressionError
from raytune_opt.spec.fields import Field, Section

if TYPE_CHECKING:
    from raytune_opt.promote.context import StepContext

__all__ = ["distill", "student_section", "check"]

SETTINGS = Section("promote.targets: distill. A student model trained from scratch on the trial's recipe "
                   "with knowledge distillation from the trial's model as teacher.", {
    "model": Field("dict", None, "The student, as a model section (e.g. {width: 8}, or {name: mlp, width: "
                   "64}): keys not given are the trial's when it keeps the trial's model.name, else the "
                   "defaults. Required when distill is a target.", nullable=True, tunable=False),
    "epochs": Field("int", None, "Training epochs of the student; null: the trial's train.epochs.",
                    nullable=True, ge=1, tunable=False),
    "alpha": Field("float", 0.5, "Weight of distillation in the loss (1 - alpha: the trial's own loss on "
                   "the labels).", ge=0, le=1, tunable=False),
    "temperature": Field("float", 4.0, "Softmax temperature of the distillation (a regression matches the "
                         "teacher's outputs by MSE instead).", gt=0, tunable=False),
    "max_accuracy_drop": Field("float", 1.0, "Gate: most accuracy points the student may lose vs the trial.",
                               ge=0, tunable=False),
    "max_relative_change": Field("float", 0.05, "Regression gate: most relative worsening of the metric "
                                 "vs the trial.", ge=0, tunable=False),
})

registry.PROMOTION_STEPS.register(
    "distill", f"{__name__}:distill", doc="a student model (promote.distill.model) trained with distillation from "
    "the trial, behind its gate", check=f"{__name__}:check", order=20, needs=(), compresses=True, by_default=False,
    settings=SETTINGS)

_EXAMPLE = "e.g. {width: 8} (the trial's model, narrower) or {name: small_cnn, width: 8}"


def check(view: registry.SpecView) -> list[registry.Finding]:
    """The student must be given, as a model section whose keys are the spec's ``model`` keys,
    each valid there, naming a registered model or an import path that takes the data's inputs."""
    from raytune_opt.spec import schema
    from raytune_opt.spec.checker import coerce, did_you_mean, fmt

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


def distill(ctx: StepContext) -> None:
    """Build the student, train it with distillation from the trial's model, gate, save and
    record it (a student that cannot be built: a failed record, one line)."""
    from raytune_opt.promote import compress
    from raytune_opt.recipe.errors import RecipeConfigError

    cfg = ctx.settings
    recipe = ctx.checkpoint["recipe"]
    try:
        if not cfg["model"]:
            raise CompressionError(f"distill: promote.distill.model is not set; set it to the student's model "
                                   f"section, {_EXAMPLE}")
        section = student_section(recipe.get("model") or {}, cfg["model"])
        student, spec = _build(ctx, section)
        epochs = int(cfg["epochs"] or recipe.get("train", {}).get("epochs") or 1)
        compress.distill_train(student, ctx.trial_model, ctx, epochs=epochs, alpha=float(cfg["alpha"]),
                               temperature=float(cfg["temperature"]), label="distill")
        compress.finish(ctx, student, made="distilled", spec=spec, recipe={**recipe, "model": section},
                        epochs=epochs, details={"student": section, "epochs": epochs})
    except (CompressionError, RecipeConfigError) as exc:
        ctx.record("distill", "failed", reason=str(exc))


def _build(ctx: StepContext, section: dict):
    """The student (seeded as a trial's model is) and its spec.

    Raises:
        CompressionError: the section names no model that builds for this data.
    """
    import torch

    from raytune_opt.errors import describe_raised
    from raytune_opt.recipe.errors import RecipeConfigError
    from raytune_opt.recipe.models import build_model_from_spec, model_spec

    data = ctx.data
    torch.manual_seed(ctx.seed)
    # A user student was refused up front unless the experiment is trusted (pipeline._check_trusted).
    with registry.code_path(ctx.code_dirs) if ctx.trust_code else contextlib.nullcontext():
        try:
            spec = model_spec(section, data.input_shape, data.num_classes)
            return build_model_from_spec(spec, list(ctx.code_dirs)), spec
        except RecipeConfigError as exc:
            raise CompressionError(f"distill: promote.distill.model: {exc}") from None
        except Exception as exc:  # the user's constructor
            raise CompressionError(f"distill: promote.distill.model {section.get('name')}: building it raised "
                                   f"{describe_raised(exc)}") from None
