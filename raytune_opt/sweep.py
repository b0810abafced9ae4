"""The sweep: a validated spec becomes a Ray Tune run whose trials run the recipe.

spec -> (searcher, scheduler, trainable) -> ``tune.Tuner.fit()`` -> results rows -> files.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from raytune_opt import _atomic, ray_runtime, results, schedulers, searchers, trial
from raytune_opt.errors import UsageError
from raytune_opt.spec import Spec

# What --dry-run forces on every trial, after the trial's own config: toy scale, one worker.
DRY_RUN_FORCE = {
    "train.epochs": 1,
    "train.limit_batches": 3,
    "resources.num_workers": 1,
    "resources.gpus_per_worker": 0.0,
    "data.loader_workers": 0,
}


@dataclass
class SweepOutcome:
    exp_dir: Path
    rows: list
    best: results.TrialRow | None
    wall_seconds: float

    @property
    def exit_code(self) -> int:
        return 0 if any(r.successful for r in self.rows) else 1


def experiment_dir(spec: Spec, storage: str | None) -> Path:
    root = storage or spec.data["storage"]["path"]
    if root.startswith("s3://"):
        raise UsageError(f"storage.path {root}: S3 storage is not supported yet (it lands with the cluster "
                         "issue); use a local or shared-mount path")
    return Path(root).expanduser().resolve() / spec.name


def dry_run_spec(spec: Spec) -> Spec:
    """The spec as --dry-run runs it: every setting in DRY_RUN_FORCE, FIFO scheduling."""
    from raytune_opt.space import apply

    data = apply(copy.deepcopy(spec.data), DRY_RUN_FORCE)
    if data["train"]["precision"] == "fp16":  # no GPU in a dry run
        data["train"]["precision"] = "fp32"
    data["scheduler"]["name"] = "fifo"
    data["resources"]["max_concurrent_trials"] = None
    return Spec(data, spec.space, spec.source)


def check_data(spec: Spec) -> None:
    """Decode the data set once before Ray starts (fills the node cache; fails fast).

    Raises:
        DataError: the data is missing or unreadable, with the path and the fix.
    """
    from raytune_opt.recipe.data import load_data

    load_data(spec.data["data"], spec.data["seed"])


def _trial_resources(spec: Spec) -> dict:
    res = spec.data["resources"]
    if res["num_workers"] == 1:
        out = {"cpu": res["cpus_per_worker"]}
        if res["gpus_per_worker"]:
            out["gpu"] = res["gpus_per_worker"]
        return out
    # The trial only drives a TorchTrainer whose workers hold the real resources.
    # Ray refuses an empty bundle; a token of memory keeps the trial off the CPU count.
    return {"cpu": 0, "memory": 1}


def run_sweep(spec: Spec, *, address: str | None = None, storage: str | None = None,
              dry_run: bool = False, verbose: int = 1) -> SweepOutcome:
    """Run the sweep the spec describes and write its results.

    Raises:
        UsageError: results for this name exist already, or the cluster is unreachable.
        DataError: the data set is missing or unreadable.
    """
    from ray import tune

    if dry_run:
        spec = dry_run_spec(spec)
    exp_dir = experiment_dir(spec, storage)
    if (exp_dir / "results.csv").exists() or (exp_dir / "spec.yaml").exists():
        raise UsageError(f"{exp_dir}: a sweep named '{spec.name}' already has results there; pass name=NEW_NAME "
                         "or --storage OTHER_DIR (or 'raytune-opt resume' it)")
    address = ray_runtime.resolve_address(address)
    if address is None:
        check_data(spec)
    exp_dir.mkdir(parents=True, exist_ok=True)
    _atomic.write_text(exp_dir / "spec.yaml", spec.to_yaml())

    search, sched = spec.data["search"], spec.data["scheduler"]
    search_alg, param_space = searchers.build_searcher(spec)
    trainable = trial.make_trainable(spec.data, spec.space, spec.sha256(), str(exp_dir.parent),
                                     force=DRY_RUN_FORCE if dry_run else None)
    embedded = ray_runtime.start(address)
    started = time.monotonic()
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, _trial_resources(spec)),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=search["metric"], mode=search["mode"], search_alg=search_alg,
                scheduler=schedulers.build_scheduler(spec), num_samples=search["num_samples"],
                max_concurrent_trials=spec.data["resources"]["max_concurrent_trials"],
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
                # A fresh actor per trial re-imports torch and Ray (~3 s here); ASHA lives on cheap trials.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=str(exp_dir.parent), verbose=verbose,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        grid = tuner.fit()
        wall = time.monotonic() - started
        rows = collect_rows(grid, spec)
    finally:
        ray_runtime.stop(embedded)
    best = results.write_results(exp_dir, rows, [p.key for p in spec.space.params], search["metric"],
                                 search["mode"], spec.sha256())
    return SweepOutcome(exp_dir, rows, best, wall)


def collect_rows(grid, spec: Spec) -> list[results.TrialRow]:
    """One row per trial of a Tune ResultGrid, in our terms."""
    metric, mode = spec.data["search"]["metric"], spec.data["search"]["mode"]
    planned = spec.data["train"]["epochs"]
    rows = []
    for res in grid:
        m = res.metrics or {}
        trial_id = m.get("trial_id") or Path(res.path).name.removeprefix("trial_")
        history = []
        df = res.metrics_dataframe
        if df is not None and len(df):
            keep = [c for c in df.columns if c in _HISTORY_KEYS]
            history = [{k: _plain(v) for k, v in rec.items()} for rec in df[keep].to_dict("records")]
        best = results.best_epoch(history, metric, mode)
        last = history[-1] if history else {}
        reason = m.get("stop_reason") or ""
        epochs = int(last.get("epoch", 0) or 0)
        trial_planned = int(_config_value(res.config, spec, "train.epochs", planned))
        if res.error is not None:
            status, reason = "error", f"error: {type(res.error).__name__}"
        elif reason.startswith("diverged"):
            status = "diverged"
        elif reason in ("completed", "early_stopping"):
            status = "ok"
        elif epochs < trial_planned:
            status, reason = "stopped", f"stopped by {spec.data['scheduler']['name']} at epoch {epochs}"
        else:
            status, reason = "ok", reason or "completed"
        ckpt = m.get("checkpoint_path") or (res.checkpoint.path if res.checkpoint else None)
        rows.append(results.TrialRow(
            trial_id=trial_id, status=status, stop_reason=reason,
            config=searchers.flatten_config(res.config or {}, spec.space), epochs=epochs,
            seconds=float(m.get("time_total_s", 0.0) or 0.0),
            train_seconds=float(sum(h.get("epoch_s", 0.0) or 0.0 for h in history)),
            best=best, last=last, checkpoint=ckpt, error=str(res.error) if res.error else None, history=history,
        ))
    return sorted(rows, key=lambda r: r.trial_id)


_HISTORY_KEYS = {"epoch", "train_loss", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
                 "grad_norm", "lr", "samples_per_s", "epoch_s", "stop_reason", "rank_param_max_diff"}


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _config_value(config: dict | None, spec: Spec, key: str, default):
    flat = searchers.flatten_config(config or {}, spec.space)
    return flat.get(key, default)
