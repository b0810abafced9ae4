"""Sweep scale: how the orchestrator's own cost grows with the number of trials.

N trials of a fixed, tiny amount of training (~0.5-1 s each: the digits CNN, three epochs of
``LIMIT`` batches) on the embedded local Ray, 2 trials at a time, two ways in the same run:
  ours   ``run_sweep`` (random search, FIFO, checkpoints and every result file on);
  floor  a bare Ray Tune function trainable running the same loop on the same configs,
         with Tune's defaults (the floor Ray itself sets).
Each (way, N) runs in a fresh child process (its own Ray, its own peak RSS).

Measured per (way, N): wall seconds of the sweep itself (Ray already up), the trials'
training seconds (the loop's ``epoch_s``), sweep efficiency = training seconds / (wall x 2),
the driver's CPU seconds per trial (user + system of the driver process: Tune's loop, our
callbacks and result files), its peak RSS, and the experiment directory's bytes per trial.

    python benchmarks/sweep_scale.py                  # N = 100, 300, 1000: about 45 minutes here
    python benchmarks/sweep_scale.py --n 100 300      # a smaller run

Writes benchmarks/out/sweep_scale.json with machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONCURRENT = 2
SPEC = ROOT / "search_spaces" / "digits_cnn.yaml"
LIMIT = 16  # batches of 64 per epoch, 3 epochs: ~0.5-1 s of training per trial on one core here
OVERRIDES = ["search.algorithm=random", "scheduler={name: fifo}", "train.epochs=3", f"train.limit_batches={LIMIT}",
             f"resources.max_concurrent_trials={CONCURRENT}", "promote.enabled=false", "search.seed=0"]


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _driver_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(way: str, n: int, storage: str) -> dict:
    """One (way, N) in this process: Ray up first, then the sweep timed alone."""
    from raytune_opt import ray_runtime
    from raytune_opt.spec import load_spec

    spec = load_spec(SPEC, [*OVERRIDES, f"search.num_samples={n}", f"name={way}{n}"])
    ray_runtime.start(None)
    try:
        cpu0, t0 = _driver_cpu(), time.monotonic()
        if way == "ours":
            from raytune_opt import report
            from raytune_opt.sweep import run_sweep

            # As the CLI runs it: the report refreshed during the sweep and written at its end.
            outcome = run_sweep(spec, storage=storage, verbose=0, callbacks=report.callbacks)
            report.after_sweep(outcome.location)
            wall, cpu = time.monotonic() - t0, _driver_cpu() - cpu0
            ok = [r for r in outcome.rows if r.status == "ok"]
            train_s = sum(r.train_seconds for r in outcome.rows)
            exp = outcome.exp_dir
        else:
            wall, cpu, ok, train_s, exp = _floor(spec, n, storage, t0, cpu0)
    finally:
        ray_runtime.stop(True)
    return {"way": way, "n": n, "ok_trials": len(ok), "wall_s": round(wall, 2), "train_s": round(train_s, 2),
            "sweep_efficiency": round(train_s / (wall * CONCURRENT), 4),
            "driver_cpu_ms_per_trial": round(1000 * cpu / n, 1),
            "wall_overhead_ms_per_trial": round(1000 * (wall * CONCURRENT - train_s) / n, 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "experiment_bytes_per_trial": round(_du(exp) / n)}


def _floor(spec, n: int, storage: str, t0: float, cpu0: float):
    """A bare Tune function trainable: the same loop, configs drawn from the same space."""
    from ray import tune

    from raytune_opt.recipe.loop import train
    from raytune_opt.recipe.session import LocalSession
    from raytune_opt import searchers
    from raytune_opt.space import apply

    base = {k: v for k, v in spec.data.items() if k != "space"}
    base["train"]["checkpoint"] = False  # Tune's own floor: nothing but the training and its reports

    def trainable(config):
        import torch

        torch.set_num_threads(1)
        flat = searchers.flatten_config(config, spec.space)
        train(apply(base, flat), LocalSession(callback=lambda m, _: tune.report(dict(m))))

    grid = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space=spec.space.to_tune(),
        tune_config=tune.TuneConfig(num_samples=n, max_concurrent_trials=CONCURRENT, reuse_actors=True),
        run_config=tune.RunConfig(name=f"floor{n}", storage_path=storage, verbose=0),
    ).fit()
    wall, cpu = time.monotonic() - t0, _driver_cpu() - cpu0
    ok = [r for r in grid if r.error is None]
    train_s = 0.0
    for r in grid:
        with open(Path(r.path) / "result.json") as f:
            train_s += sum(json.loads(line).get("epoch_s", 0.0) for line in f if line.strip())
    return wall, cpu, ok, train_s, Path(storage) / f"floor{n}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--one", nargs=2, metavar=("WAY", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--storage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], int(args.one[1]), args.storage)))
        return

    runs = []
    for n in args.n:
        for way in ("floor", "ours"):
            with tempfile.TemporaryDirectory(prefix="raytune_opt_scale_") as storage:
                proc = subprocess.run([sys.executable, __file__, "--one", way, str(n), "--storage", storage],
                                      capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
                runs.append(json.loads(line[len("RESULT "):]))
                print(runs[-1], flush=True)
    by = {(r["way"], r["n"]): r for r in runs}
    ratios = {str(n): round(by[("ours", n)]["wall_s"] / by[("floor", n)]["wall_s"], 3) for n in args.n}
    result = {
        "benchmark": "sweep_scale", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count()},
        "versions": _versions(), "overrides": OVERRIDES, "concurrent_trials": CONCURRENT, "runs": runs,
        "ours_over_floor_wall": ratios,
        "targets": {"sweep_efficiency_at_1000": ">= 0.90", "ours_over_floor_wall": "<= 1.1",
                    "driver_cpu_ms_per_trial": "flat in N"},
    }
    out = ROOT / "benchmarks" / "out" / "sweep_scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


def _versions() -> dict:
    import ray
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__}


if __name__ == "__main__":
    main()
