"""The rules across sections that no single registry entry owns.

Task agreement (the data set, data.task, a task's metric and the loss must agree; a
regression takes no label mixing), the objectives (search.metric and its modes, several
objectives, constraints, promote.select; no metric of the test split; the trials one sweep
plans) and resources (fp16 needs a GPU; whole GPUs above one; what one trial needs of this
machine). Each rule is skipped when a setting it reads was already reported invalid
(:meth:`~raytune_opt.spec.checker.Checker.rule`). Imports neither torch nor Ray (the local
GPU count asks torch only when a trial would need a GPU here).
"""

from __future__ import annotations

import os

from raytune_opt import objectives, registry, searchers
from raytune_opt.space import Space
from raytune_opt.spec import schema, user_code
from raytune_opt.spec.checker import Checker, did_you_mean, fmt, values_of


# Metrics of the test split (measured after the sweep, never by a trial): refused wherever a
# spec selects (search.metric, search.constraints, promote.select).
TEST_PREFIX = "test_"


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


def _direction(name: str) -> str | None:
    """Which way a known metric or measure is better (None: a user loop's own)."""
    return schema.METRICS.get(name) or ("min" if name in objectives.MEASURES else None)


def _metric_problem(d: dict, name: str, what: str) -> tuple[str, str] | None:
    """Why ``name`` cannot be a sweep metric here (what, fix), or None."""
    if isinstance(name, str) and name.startswith(TEST_PREFIX):
        # Selecting on the test split would make it one more validation split: its figures
        # would be biased upward like the validation figures they are meant to check.
        twin = "val_" + name[len(TEST_PREFIX):]
        return (f"{name} is measured on the test split, which the search must never see (got {fmt(name)})",
                f"use {twin} (the validation split); {name} is reported in best.json after the sweep")
    if name in schema.METRICS or name in objectives.MEASURES:
        return None
    if user_code.user_loop(d):
        return None  # a metric the user's loop reports (checked when it reports)
    known = [*schema.METRICS, *objectives.MEASURES]
    hint = did_you_mean(name, known)
    return (f"unknown {what} (got {fmt(name)})", (hint + " " if hint else "") + "valid: " + ", ".join(known)
            + " (or a metric your own train.loop reports)")


def search_rules(ck: Checker, d: dict, space: Space) -> None:
    search = d["search"]
    if not ck.ok("search.metric", "search.mode"):
        return
    metrics = [search["metric"]] if isinstance(search["metric"], str) else search["metric"]
    modes = [search["mode"]] if isinstance(search["mode"], str) else search["mode"]
    if len(modes) != len(metrics):
        ck.add(("search", "mode"), f"needs one mode per search.metric: {len(metrics)} (got {len(modes)})",
               f"give {len(metrics)} modes, e.g. [{', '.join(_direction(m) or 'max' for m in metrics)}]")
        return
    for metric, mode in zip(metrics, modes):
        problem = _metric_problem(d, metric, "metric")
        if problem:
            ck.add(("search", "metric"), *problem)
            continue
        direction = _direction(metric)
        if direction is not None and mode != direction:
            ck.add(("search", "mode"), f"{metric} is better when {'higher' if direction == 'max' else 'lower'} "
                   f"(got mode={mode})", f"set its mode to {direction}")
    if len(metrics) > 1:
        _multi_objective_rules(ck, d, space)
    if ck.ok("search.num_samples", "search.algorithm"):
        _trial_count_rule(ck, search, space)
    for key in (d["search"]["constraints"] or {}):
        problem = _metric_problem(d, key, "constraint key")
        if problem:
            ck.add(("search", "constraints", key), *problem)
    # The default sampler (tpe) left in a spec whose algorithm is switched is harmless;
    # any other sampler outside optuna would silently do nothing.
    takes_sampler = [n for n in registry.SEARCHERS if registry.SEARCHERS[n].meta["caps"] == "sampler"]
    if ck.given(("search", "sampler")) and search["algorithm"] not in takes_sampler and search["sampler"] != "tpe":
        ck.rule("search.algorithm", ("search", "sampler"),
                f"only {' and '.join(takes_sampler)} uses a sampler (got algorithm={search['algorithm']})",
                f"remove search.sampler or set search.algorithm: {takes_sampler[0]}")


def _trial_count_rule(ck: Checker, search: dict, space: Space) -> None:
    n = searchers.planned_trials(search, space)
    if n is None or n <= searchers.MAX_TRIALS:  # None: until search.budget ends (budget.check)
        return
    grid = n // search["num_samples"]
    said = f" ({search['num_samples']:,} x {grid:,} grid points)" if grid > 1 else ""
    ck.add(("search", "num_samples"), f"plans {n:,} trials{said}, more than one sweep takes ({searchers.MAX_TRIALS:,})",
           "lower search.num_samples or the grid's number of points")


def _multi_objective_rules(ck: Checker, d: dict, space: Space) -> None:
    """Several objectives need a searcher that takes a list of them and a scheduler that needs
    no single metric to compare trials by."""
    search = d["search"]
    if ck.ok("search.algorithm", "search.sampler"):
        if not searchers.takes_several_objectives(search["algorithm"], search["sampler"]):
            able = [searchers.searcher_key(a, s) for a, s in searchers.searcher_keys()
                    if searchers.takes_several_objectives(a, s)]
            ck.add(("search", "metric"), f"several objectives, and {searchers.searcher_key(search['algorithm'], search['sampler'])} "
                   f"optimises one (got {fmt(search['metric'])})", f"use one of {', '.join(able)}")
    sched = d["scheduler"]["name"]
    if ck.ok("scheduler.name") and not registry.SCHEDULERS[sched].meta.get("multi_objective"):
        able = [n for n in registry.SCHEDULERS if registry.SCHEDULERS[n].meta.get("multi_objective")]
        ck.add(("scheduler", "name"), f"{sched} compares trials by one metric, and search.metric lists "
               f"{len(search['metric'])} (got {sched})", f"use scheduler.name: {' or '.join(able)} with several "
               "objectives")


def select_rules(ck: Checker, d: dict, space: Space) -> None:
    select = d["promote"]["select"]
    if select is None or not ck.ok("promote.select"):
        return
    problem = _metric_problem(d, select["metric"], "metric")
    if problem:
        ck.add(("promote", "select", "metric"), *problem)
    elif _direction(select["metric"]) is None and select.get("mode") is None \
            and select["metric"] not in dict(objectives.objectives(d["search"])):
        ck.add(("promote", "select", "mode"), f"{select['metric']} is your loop's own metric: say which way is "
               "better (got no mode)", "add mode: max or mode: min")
    for key in (select.get("where") or {}):
        problem = _metric_problem(d, key, "key")
        if problem:
            ck.add(("promote", "select", "where", key), *problem)


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
