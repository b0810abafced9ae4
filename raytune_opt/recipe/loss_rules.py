"""The losses' rules on a spec: what train.loss may say, given the losses the sweep may use.

:func:`check` is the ``check`` of every :data:`raytune_opt.registry.LOSSES` entry (by import
path; validation runs a check several entries share once). Next to :mod:`.losses`, which
builds them; this module imports neither torch nor Ray.
"""

from __future__ import annotations

from raytune_opt import registry
from raytune_opt.registry import Finding, SpecView

NUM_CLASSES = {n: registry.DATASETS[n].meta["num_classes"] for n in registry.DATASETS
               if "num_classes" in registry.DATASETS[n].meta}


def check(view: SpecView) -> list[Finding]:
    """Label smoothing only with cross_entropy among the losses searched; one class weight per
    class of the data set."""
    from raytune_opt.spec.checker import values_of

    d, out = view.data, []
    loss = d["train"]["loss"]
    names = values_of(d, view.space, "train.loss.name")
    if view.given(("train", "loss", "label_smoothing")) and loss["label_smoothing"] > 0 \
            and "focal" in names and "cross_entropy" not in names:
        out.append(Finding(("train", "loss", "label_smoothing"),
                           f"only cross_entropy smooths labels (got loss {loss['name']})",
                           "remove label_smoothing or use train.loss.name: cross_entropy", reads="train.loss.name"))
    weights = loss["class_weights"]
    n_classes = NUM_CLASSES.get(d["data"]["dataset"])
    if isinstance(weights, list) and n_classes and len(weights) != n_classes:
        out.append(Finding(("train", "loss", "class_weights"),
                           f"needs one weight per class: {n_classes} for {d['data']['dataset']} (got {len(weights)})",
                           f"give {n_classes} weights or 'balanced'", reads="data.dataset"))
    return out
