"""The built-in data sets' rules on a spec: what each needs, and the inputs it gives.

:func:`check` is the ``check`` of every built-in :data:`raytune_opt.registry.DATASETS` entry
(by import path; validation runs it for the data set a spec names, when that is valid): the
settings a data set requires (``needs_root``, ``requires`` meta), and a model (fixed, or every
searched option) that takes the data set's inputs, with no image augmentation for inputs
other than images. Next to :mod:`.data`, which loads them; this module imports neither torch
nor Ray.
"""

from __future__ import annotations

from raytune_opt import registry
from raytune_opt.registry import Finding, SpecView

# Augmentations that move or recolour image pixels; 1-D signals take Mixup only.
IMAGE_AUGMENTATIONS = ("hflip", "random_crop_padding", "rotation_degrees", "color_jitter", "cutmix_alpha")
_KINDS = {0: "feature vectors", 1: "1-D signals", 2: "images"}


def check(view: SpecView) -> list[Finding]:
    """The rules of the data set ``data.dataset`` names (a built-in: its entry has ``keys``)."""
    from raytune_opt.spec import schema

    d, space, out = view.data, view.space, []
    data = d["data"]
    entry = registry.DATASETS[data["dataset"]]
    needs_root = entry.meta["needs_root"] and not (entry.meta.get("downloads") and data["download"])
    if needs_root and not data["root"]:
        out.append(Finding(("data", "root"), f"required for dataset {data['dataset']} (got null)",
                           "set data.root to the directory holding the data", reads="data.download",
                           at=("data", "dataset")))
    for key in entry.meta.get("requires", ()):
        if not data[key]:
            out.append(Finding(("data", key), f"required for dataset {data['dataset']} (got null)",
                               f"set data.{key} ({schema.lookup(('data', key)).doc.split(';')[0].split(' (')[0]})",
                               reads=f"data.{key}", at=("data", "dataset")))
    if "data.dataset" not in space.by_key:
        out += _input_kind_checks(d, space)
    return out


def _input_kind_checks(d: dict, space) -> list[Finding]:
    """The model (fixed or every searched option) must take the data set's inputs, and
    inputs other than images take no image augmentation. (A searched data set is checked by
    each trial.)"""
    from raytune_opt.spec.checker import fmt, values_of

    dataset, out = d["data"]["dataset"], []
    dims = registry.DATASETS[dataset].meta["inputs"]
    kind = _KINDS[dims]
    fit = [m for m in registry.MODELS if dims in registry.MODELS[m].meta.get("inputs", ())]
    searched = space.by_key.get("model.name")
    # Models that say which inputs they take (user models by import path do not: --smoke would).
    described = {m for m in registry.MODELS if "inputs" in registry.MODELS[m].meta}
    for name in sorted((values_of(d, space, "model.name") & described) - set(fit)):
        if searched is not None:
            out.append(Finding(("space", "model.name"), f"option {name} does not take {kind} (data.dataset {dataset}) "
                               f"(got {fmt(name)})", f"drop it; models for {kind}: {', '.join(fit)}", at="model.name"))
        else:
            out.append(Finding(("model", "name"), f"does not take {kind} (data.dataset {dataset}) (got {fmt(name)})",
                               f"use one of {', '.join(fit)}, or another data.dataset", reads="model.name"))
    if dims == 2:
        return out
    for key in IMAGE_AUGMENTATIONS:
        dotted = f"train.augment.{key}"
        values = values_of(d, space, dotted)
        if dotted in space.by_key and (not values or any(v for v in values)):
            out.append(Finding(("space", dotted), f"an image augmentation; {dataset} holds {kind} (got a searched "
                               f"{dotted})", "remove it from space (mixup_alpha works on any input)", at=dotted))
        elif dotted not in space.by_key and any(v for v in values):
            out.append(Finding(("train", "augment", key), f"an image augmentation; {dataset} holds {kind} "
                               f"(got {fmt(d['train']['augment'][key])})", "set it to 0 (mixup_alpha works on any input)",
                               reads=dotted))
    return out
