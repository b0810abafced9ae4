"""Sweep efficiency: raytune-opt vs a hand-written Ray Tune-over-Train script vs in-process Optuna.

All three run the *same trials*: raytune-opt runs the digits sweep first (16 trials, ASHA);
then each of its trials (same config, same number of epochs it actually ran) is replayed
  (b) by a hand-written script in Ray's recommended Train V2 pattern: a Tune function
      trainable that builds a 1-worker ``TorchTrainer`` per trial and calls ``fit()``;
  (c) by Optuna in-process with ``n_jobs`` = cores (enqueued trials, threads).
The training code is the same recipe loop in all three, so only orchestration differs.

Sweep efficiency = sum of trial training seconds / (wall seconds x cores).

    python benchmarks/sweep_efficiency.py            # ~10 minutes on 2 cores
    python benchmarks/sweep_efficiency.py --quick    # 4 trials, a smoke test of the script

Writes benchmarks/out/sweep_efficiency.json with machine and versions.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raytune_opt import ray_runtime  # noqa: E402
from raytune_opt.recipe.loop import train  # noqa: E402
from raytune_opt.recipe.session import LocalSession  # noqa: E402
from raytune_opt.space import apply  # noqa: E402
from raytune_opt.spec import load_spec  # noqa: E402
from raytune_opt import report  # noqa: E402
from raytune_opt.sweep import run_sweep  # noqa: E402

CORES = os.cpu_count() or 1
# Long enough that every trial trains >= 10 s when it runs to the end.
OVERRIDES = ["train.epochs=20", "train.batch_size=16", "space.train.batch_size={choice: [16]}",
             "search.num_samples=16", "scheduler.grace_period=4", "promote.enabled=false", "name=bench"]


def ours(spec, storage: str) -> tuple[float, list]:
    # The report's refresh as the CLI runs it (its cost falls in the fit's wall seconds).
    outcome = run_sweep(spec, storage=storage, verbose=0, callbacks=report.callbacks)
    return outcome.wall_seconds, outcome.rows


def hand_written_ray(base: dict, trials: list[dict], storage: str) -> tuple[float, float]:
    """Ray's documented Train V2 + Tune pattern, written by hand, one TorchTrainer per trial."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from raytune_opt.trial import TrainSession

    def worker(cfg):
        train(cfg, TrainSession(num_threads=1))

    def trainable(config):
        t = trials[config["i"]]
        cfg = apply(base, t["config"])
        cfg["train"]["epochs"] = t["epochs"]
        cfg["train"]["checkpoint"] = False
        TorchTrainer(
            worker, train_loop_config=cfg,
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name=f"train-{tune.get_context().get_trial_id()}",
                                           storage_path=storage, callbacks=[TuneReportCallback()],
                                           failure_config=ray.train.FailureConfig(controller_failure_limit=0)),
        ).fit()

    start = time.monotonic()
    grid = tune.Tuner(tune.with_resources(trainable, {"cpu": 0, "memory": 1}),
                      param_space={"i": tune.grid_search(list(range(len(trials))))},
                      tune_config=tune.TuneConfig(max_concurrent_trials=CORES),
                      run_config=tune.RunConfig(name="hand", storage_path=storage, verbose=0)).fit()
    wall = time.monotonic() - start
    train_s = 0.0
    for r in grid:
        df = r.metrics_dataframe
        train_s += float(df["epoch_s"].sum()) if df is not None and "epoch_s" in df else 0.0
    return wall, train_s


def optuna_in_process(base: dict, trials: list[dict]) -> tuple[float, float]:
    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for i in range(len(trials)):
        study.enqueue_trial({"i": i})
    lock = threading.Lock()
    total = [0.0]

    def objective(trial):
        t = trials[trial.suggest_int("i", 0, len(trials) - 1)]
        cfg = apply(base, t["config"])
        cfg["train"]["epochs"] = t["epochs"]
        cfg["train"]["checkpoint"] = False
        session = LocalSession()
        last = train(cfg, session)
        with lock:
            total[0] += sum(r["epoch_s"] for r in session.reports)
        return last["val_accuracy"]

    start = time.monotonic()
    study.optimize(objective, n_trials=len(trials), n_jobs=CORES)
    return time.monotonic() - start, total[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    overrides = OVERRIDES + (["search.num_samples=4", "train.epochs=4"] if args.quick else [])
    spec = load_spec(ROOT / "search_spaces" / "digits_cnn.yaml", overrides)
    storage = tempfile.mkdtemp(prefix="raytune_opt_bench_")
    base = {k: copy.deepcopy(v) for k, v in spec.data.items() if k != "space"}

    # Warm-up: decode the data set into the node cache and import everything once.
    warm = apply(base, {"train.epochs": 1, "train.limit_batches": 2, "train.checkpoint": False})
    train(warm, LocalSession())

    wall_ours, rows = ours(spec, storage)
    trials = [{"config": r.config, "epochs": r.epochs} for r in rows if r.epochs > 0]
    train_ours = sum(r.train_seconds for r in rows)

    ray_runtime.start(None)
    try:
        wall_hand, train_hand = hand_written_ray(base, trials, storage)
    finally:
        ray_runtime.stop(True)
    wall_optuna, train_optuna = optuna_in_process(base, trials)

    def entry(wall, train_s):
        return {"wall_s": round(wall, 2), "train_s": round(train_s, 2),
                "sweep_efficiency": round(train_s / (wall * CORES), 4)}

    result = {
        "benchmark": "sweep_efficiency", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": CORES},
        "versions": _versions(), "trials": len(trials), "epochs_total": sum(t["epochs"] for t in trials),
        "overrides": overrides,
        "raytune_opt": entry(wall_ours, train_ours),
        "hand_written_ray_tune_over_train": entry(wall_hand, train_hand),
        "optuna_in_process": entry(wall_optuna, train_optuna),
        "ratios": {"ours_over_optuna_wall": round(wall_ours / wall_optuna, 3),
                   "ours_over_hand_written_wall": round(wall_ours / wall_hand, 3)},
        "targets": {"ours_over_optuna_wall": "<= 1.15", "ours_over_hand_written_wall": "<= 0.5"},
    }
    out = ROOT / "benchmarks" / "out" / "sweep_efficiency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _versions() -> dict:
    import optuna
    import ray
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__}


if __name__ == "__main__":
    main()
