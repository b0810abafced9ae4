"""The rules across sections that no single registry entry owns.

Task agreement (the data set, data.task, a task's metric and the loss must agree; a
regression takes no label mixing) and resources (fp16 needs a GPU; whole GPUs above one; what
one trial needs of this machine). Each rule is skipped when a setting it reads was already
reported invalid (:meth:`~raytune_opt.spec.checker.Checker.rule`). Imports neither torch nor
Ray (the local GPU count asks torch only when a trial would need a GPU here).
"""

from __future__ import annotations

import os

from raytune_opt import objectives, registry
from raytune_opt.space import Space
from raytune_opt.spec import schema
from raytune_opt.spec.checker import Checker, fmt, values_of


def task_rules(ck: Checker, d: dict, space: Space) -> None:
    """data.task, a task-specific search.metric and the loss must agree on the task; a
    regression trains with a regression loss and no Mixup/CutMix (its promotion gates INT8 on
    the relative change of its metric, promote.int8.max_relative_change)."""
    said: list[tuple[str, tuple, str]] = []  # (task, key path, how it says so)
    entry = registry.DATASETS.get(d["data"]["dataset"]) if ck.ok("data.dataset") else None
    if entry is not None and entry.meta.get("task") and "data.dataset" not in space.by_key:
        said.append((entry.meta["task"], ("data", "dataset"), f"data.dataset {entry.name}"))
    if d["data"]["task"] is not None and ck.ok("data.task"):
        said.append((d["data"]["task"], ("data", "task"), f"data.task {d['data']['task']}"))
    for metric, _ in (objectives.objectives(d["search"]) if ck.ok("search.metric", "search.mode") else ()):
        if metric in schema.METRIC_TASK:
            said.append((schema.METRIC_TASK[metric], ("search", "metric"), f"search.metric {metric}"))
    losses = values_of(d, space, "train.loss.name")
    loss_given = ck.given(("train", "loss", "name")) or "train.loss.name" in space.by_key
    if loss_given and ck.ok("train.loss.name"):
        at = ("space", "train.loss.name") if "train.loss.name" in space.by_key else ("train", "loss", "name")
        said += [(schema.LOSS_TASK[name], at, f"train.loss.name {name}") for name in sorted(losses)]
    tasks = {t for t, _, _ in said}
    if len(tasks) > 1:
        first = said[0]
        for task, path, how in said[1:]:
            if task != first[0]:
                ck.add(path, f"{how.split()[-1]} is for {task}, but {first[2]} is for {first[0]} "
                       f"(got {fmt(how.split()[-1])})",
                       f"make them agree: regression takes mse/l1/huber and val_rmse/val_mae/val_r2 (or val_loss)",
                       at=ck.param_at.get(path[1]) if path[0] == "space" else None)
        return
    if tasks != {"regression"}:
        return
    if not loss_given:
        ck.add(("train", "loss", "name"), f"cross_entropy is a classification loss, and {said[0][2]} makes this a "
               f"regression (got the default cross_entropy)", "set train.loss.name: mse (or l1, huber)")
    for key in ("mixup_alpha", "cutmix_alpha"):
        dotted = f"train.augment.{key}"
        if (dotted in space.by_key or d["train"]["augment"][key]) and ck.ok(dotted):
            ck.add(("train", "augment", key), f"mixes labels of a classification; {said[0][2]} makes this a "
                   f"regression (got {fmt(d['train']['augment'][key])})", "set it to 0")


def precision_rules(ck: Checker, d: dict, space: Space) -> None:
    if "fp16" in values_of(d, space, "train.precision") and d["resources"]["gpus_per_worker"] == 0:
        ck.rule("resources.gpus_per_worker", ("train", "precision"),
                "fp16 needs a GPU (got resources.gpus_per_worker=0)",
                "use bf16 on CPU, or give resources.gpus_per_worker > 0")


def resource_rules(ck: Checker, d: dict, space: Space) -> None:
    gpus = d["resources"]["gpus_per_worker"]
    if gpus > 1 and not float(gpus).is_integer():
        ck.rule("", ("resources", "gpus_per_worker"), f"above 1 must be a whole number (got {gpus:g})",
                "give a fraction below 1 or an integer")


def check_local_resources(d: dict, cpus: int | None = None, gpus: int | None = None) -> list[tuple[tuple, str, str]]:
    """Problems running one trial of ``d`` on this machine alone (embedded local Ray)."""
    res = d["resources"]
    cpus = os.cpu_count() or 1 if cpus is None else cpus
    out = []
    need_cpu = res["num_workers"] * res["cpus_per_worker"]
    if need_cpu > cpus:
        out.append((("resources", "cpus_per_worker"),
                    f"one trial needs {need_cpu:g} CPUs ({res['num_workers']} workers x {res['cpus_per_worker']:g}) "
                    f"but this machine has {cpus}",
                    "lower resources.num_workers / cpus_per_worker, or run on a cluster with --address"))
    need_gpu = res["num_workers"] * res["gpus_per_worker"]
    if need_gpu > 0:
        if gpus is None:
            gpus = _local_gpus()
        if need_gpu > gpus:
            out.append((("resources", "gpus_per_worker"),
                        f"one trial needs {need_gpu:g} GPUs but this machine has {gpus}",
                        "set resources.gpus_per_worker=0 for a local run, or submit to a GPU cluster"))
    return out


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # torch without CUDA support
        return 0
