"""DDP start-up: where a 2-worker trial's seconds go, beside Ray's documented pattern and the floor.

One trial of the digits CNN (2 DDP workers over gloo, 4 epochs, checkpoints on) is run
three ways, side by side in one run:
  ours      raytune-opt's sweep (``run_sweep``, one trial);
  ray       Ray's documented Tune-over-Train V2 pattern, written by hand: a Tune function
            trainable that builds a 2-worker ``TorchTrainer`` around the same loop (Ray's
            defaults everywhere);
  floor     two bare processes started with ``torch.multiprocessing`` that import what a
            worker needs, init a gloo process group and run the same loop.
The loop is the same in all three, so only what starts, feeds and stops it differs.

Overhead = (trial requested -> its resources free again) - training seconds (the loop's
``epoch_s``, summed). The breakdown comes from Ray's own task events (actor creation and
method timestamps, through the state API) and the loop's start-up marks
(:mod:`raytune_opt.timeline`).

With ``--sweep`` it also times the 4-trial command of issue 17 through the CLI, and with
``--before REV`` the same command at an older commit (a git worktree), in the same run.

    python benchmarks/ddp_startup.py                       # ~3 minutes on 2 cores
    python benchmarks/ddp_startup.py --sweep --before REV  # + the 4-trial sweep, ~6 more

Writes benchmarks/out/ddp_startup.json with machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raytune_opt import ray_runtime, timeline  # noqa: E402

CORES = os.cpu_count() or 1
WORKERS = 2
SETTLE_S = 2.5  # after a run: Ray's task events flush, the trial's resources are seen freed
SPEC = ROOT / "search_spaces" / "digits_cnn.yaml"
OVERRIDES = ["search.num_samples=1", f"resources.num_workers={WORKERS}", "scheduler={name: fifo}",
             "train.epochs=4", "promote.enabled=false", "search.seed=0"]
# Issue 17's command: 4 trials of 2 workers, FIFO, 4 epochs.
SWEEP = ["search.num_samples=4", f"resources.num_workers={WORKERS}", "scheduler={name: fifo}", "train.epochs=4",
         "promote.enabled=false"]


class FreeWatch:
    """Polls the cluster's free CPUs; :meth:`freed_after` is when they were all free again."""

    def __init__(self, period: float = 0.05):
        import ray

        self.total = ray.cluster_resources()["CPU"]
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._period = period
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import ray

        while not self._stop.is_set():
            self.samples.append((time.time(), ray.available_resources().get("CPU", 0.0)))
            time.sleep(self._period)

    def freed_after(self, t: float) -> float | None:
        return next((ts for ts, free in self.samples if ts >= t and free >= self.total), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _tasks(since: float, until: float) -> list[dict]:
    """Ray's task events (actor creations and calls) created in [since, until], in seconds."""
    from ray.util.state import list_tasks

    out = []
    for t in list_tasks(detail=True, limit=10000, raise_on_missing_output=False):
        created = (t.creation_time_ms or 0) / 1000
        if since <= created <= until:
            out.append({"name": t.name, "type": t.type, "created": created, "pid": t.worker_pid,
                        "start": (t.start_time_ms or 0) / 1000 or None, "end": (t.end_time_ms or 0) / 1000 or None})
    return out


def _first(tasks: list[dict], name: str, key: str) -> float | None:
    vals = [t[key] for t in tasks if name in t["name"] and t[key]]
    return min(vals) if vals else None


def _last(tasks: list[dict], name: str, key: str) -> float | None:
    vals = [t[key] for t in tasks if name in t["name"] and t[key]]
    return max(vals) if vals else None


def _mark(marks: list[dict], event: str, latest: bool = True, **match) -> float | None:
    ts = [m["t"] for m in marks if m["event"] == event and all(m.get(k) == v for k, v in match.items())]
    return (max(ts) if latest else min(ts)) if ts else None


def breakdown(tasks: list[dict], marks: list[dict], requested: float, freed: float | None) -> dict:
    """Seconds from the trial's request to each step; the ``span_*`` keys are the steps' own lengths."""
    points = {
        "trial_actor_ready": _first(tasks, "ImplicitFunc.__init__", "end") or _mark(marks, "trial_start"),
        "trainer_fit": _mark(marks, "trainer_fit"),
        "controller_ready": _first(tasks, "TrainController.__init__", "end"),
        "workers_ready": _last(tasks, "RayTrainWorker.__init__", "end"),
        "train_context_ready": _last(tasks, "init_train_context", "end"),
        "process_group_ready": _last(tasks, "_setup_torch_process_group", "end") or _last(tasks, "_setup_process_group", "end"),
        "worker_fn_started": _mark(marks, "worker_start"),
        "data_loaded": _mark(marks, "data_loaded"),
        "model_built": _mark(marks, "model_built"),
        "ddp_wrapped": _mark(marks, "setup_done"),
        "first_step": _mark(marks, "first_step"),
        "first_report_done": _mark(marks, "reported", latest=False, rank=0, epoch=1),
        "last_report_done": _mark(marks, "reported", rank=0),
        "trainer_done": _mark(marks, "trainer_done"),
        "resources_free": freed,
    }
    out = {k: round(v - requested, 3) for k, v in points.items() if v is not None}
    # Where the worker group's start-up went: process start (queue) vs __init__ (imports).
    for name in ("ImplicitFunc", "TrainController", "RayTrainWorker"):
        inits = [t for t in tasks if t["name"].endswith(f"{name}.__init__") and t["start"] and t["end"]]
        if inits:
            out[f"{name}_process_start_s"] = round(max(t["start"] - t["created"] for t in inits), 3)
            out[f"{name}_init_s"] = round(max(t["end"] - t["start"] for t in inits), 3)
    out["actors_per_trial"] = sum(1 for t in tasks if t["type"] == "ACTOR_CREATION_TASK")
    out["actor_classes"] = sorted({t["name"].split(".")[0].split(":")[-1] for t in tasks
                                   if t["type"] == "ACTOR_CREATION_TASK"})
    return out


def _summary(requested: float, freed: float | None, train_s: float, tasks, marks, extra=None) -> dict:
    total = (freed - requested) if freed else None
    return {"total_s": round(total, 3) if total else None, "train_s": round(train_s, 3),
            "overhead_s": round(total - train_s, 3) if total else None,
            "breakdown": breakdown(tasks, marks, requested, freed), **(extra or {})}


def _measured(watch: FreeWatch, marks_file: str, t0: float, t1: float, train_s: float, extra=None) -> dict:
    """A Ray trial run between ``t0`` and ``t1``: its summary from Ray's task events and the marks."""
    time.sleep(SETTLE_S)  # resources freed after the driver returned are still seen; task events flush
    watch.stop()
    tasks = _tasks(t0, t1 + SETTLE_S)
    marks = [m for m in timeline.read(marks_file) if t0 <= m["t"] <= t1 + SETTLE_S]
    requested = _first(tasks, "ImplicitFunc.__init__", "created") or t0
    last = _mark(marks, "reported", rank=0) or t1
    return _summary(requested, watch.freed_after(last), train_s, tasks, marks, extra)


def run_ours(marks_file: str, storage: str, rep: int) -> dict:
    from raytune_opt.spec import load_spec
    from raytune_opt.sweep import run_sweep

    spec = load_spec(SPEC, [*OVERRIDES, f"name=ours{rep}"])
    watch = FreeWatch()
    t0 = time.time()
    outcome = run_sweep(spec, storage=storage, verbose=0)
    t1 = time.time()
    row = outcome.rows[0]
    assert row.status == "ok", (row.status, row.error)
    return _measured(watch, marks_file, t0, t1, row.train_seconds,
                     {"results_csv_seconds": round(row.seconds, 3),
                      "results_csv_overhead_s": round(row.seconds - row.train_seconds, 3)})


def run_ray_pattern(marks_file: str, storage: str, rep: int) -> dict:
    """Ray's documented pattern (docs: 'Hyperparameter Tuning with Ray Tune', Train V2)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from raytune_opt.spec import load_spec
    from raytune_opt.trial import TrainSession

    cfg = {k: v for k, v in load_spec(SPEC, OVERRIDES).data.items() if k != "space"}

    def worker(config):
        from raytune_opt.recipe.loop import train

        session = TrainSession(num_threads=1)
        try:
            train(config, session)
        finally:
            session.close()

    def trainable(config):
        TorchTrainer(
            worker, train_loop_config=cfg,
            scaling_config=ray.train.ScalingConfig(num_workers=WORKERS, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name=f"train-{tune.get_context().get_trial_id()}", storage_path=storage,
                                           callbacks=[TuneReportCallback()]),
        ).fit()

    watch = FreeWatch()
    t0 = time.time()
    grid = tune.Tuner(tune.with_resources(trainable, {"cpu": 0, "memory": 1}), param_space={},
                      run_config=tune.RunConfig(name=f"ray{rep}", storage_path=storage, verbose=0)).fit()
    t1 = time.time()
    assert grid[0].error is None, grid[0].error
    with open(Path(grid[0].path) / "result.json") as f:
        train_s = sum(json.loads(line)["epoch_s"] for line in f if line.strip())
    return _measured(watch, marks_file, t0, t1, train_s)


def _floor_worker(rank: int, port: int, cfg: dict, out_dir: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    from raytune_opt.recipe.loop import train
    from raytune_opt.recipe.session import Session

    class FloorSession(Session):
        """What a Ray Train worker's session does, with nothing around it."""

        def __init__(self):
            self.rank, self.world_size, self.num_threads = rank, WORKERS, 1
            self.device = torch.device("cpu")
            self.reports: list[dict] = []
            self._root = tempfile.mkdtemp(prefix=f"floor_rank{rank}_")

        def prepare_model(self, model):
            return torch.nn.parallel.DistributedDataParallel(model)

        def prepare_loader(self, loader):
            sampler = DistributedSampler(loader.dataset, shuffle=isinstance(loader.sampler,
                                                                             torch.utils.data.RandomSampler))
            return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                              collate_fn=loader.collate_fn, num_workers=loader.num_workers)

        def report(self, metrics, checkpoint_dir, shards=()):
            self.reports.append(dict(metrics))

        def checkpoint_root(self):
            return self._root

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORKERS)
    timeline.mark("worker_start", rank=rank)
    session = FloorSession()
    train(cfg, session)
    dist.destroy_process_group()
    shutil.rmtree(session._root, ignore_errors=True)
    if rank == 0:
        Path(out_dir, "train_s").write_text(str(sum(r["epoch_s"] for r in session.reports)))


def run_floor(marks_file: str) -> dict:
    import socket

    import torch.multiprocessing as mp

    from raytune_opt.spec import load_spec

    cfg = {k: v for k, v in load_spec(SPEC, OVERRIDES).data.items() if k != "space"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_dir = tempfile.mkdtemp(prefix="floor_")
    t0 = time.time()
    ctx = mp.spawn(_floor_worker, args=(port, cfg, out_dir), nprocs=WORKERS, join=False)
    while not ctx.join():
        pass
    freed = time.time()
    marks = [m for m in timeline.read(marks_file) if t0 <= m["t"] <= freed]
    train_s = float(Path(out_dir, "train_s").read_text())
    shutil.rmtree(out_dir, ignore_errors=True)
    return _summary(t0, freed, train_s, [], marks)


def run_cli_sweep(python: str, cwd: str, storage: str) -> dict:
    """Issue 17's 4-trial command, timed as a user runs it (a fresh CLI process)."""
    t0 = time.monotonic()
    proc = subprocess.run([python, "-m", "raytune_opt", "run", str(SPEC), *SWEEP, "name=ddp4", "--storage", storage],
                          cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": cwd})
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    import csv

    with open(Path(storage, "ddp4", "results.csv")) as f:
        rows = list(csv.DictReader(f))
    over = [float(r["seconds"]) - float(r["train_seconds"]) for r in rows]
    return {"wall_s": round(wall, 2), "trials": len(rows),
            "trial_overhead_s": {"median": round(statistics.median(over), 2), "max": round(max(over), 2)}}


def _median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2, help="runs of each way (medians are reported)")
    ap.add_argument("--sweep", action="store_true", help="also time issue 17's 4-trial command")
    ap.add_argument("--before", metavar="REV", help="with --sweep: the same command at this git commit too")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="raytune_opt_ddp_startup_"))
    marks_file = str(work / "timeline.jsonl")
    os.environ[timeline.ENV] = marks_file  # inherited by the embedded Ray's workers
    result: dict = {"benchmark": "ddp_startup", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": CORES},
                    "versions": _versions(), "overrides": OVERRIDES, "reps": args.reps}
    try:
        # Warm-up: the node cache holds the decoded data set and its split before any way runs.
        from raytune_opt.recipe.data import load_data
        from raytune_opt.spec import load_spec

        spec = load_spec(SPEC, OVERRIDES)
        load_data(spec.data["data"], spec.data["seed"])
        floor = [run_floor(marks_file) for _ in range(args.reps)]
        ray_runtime.start(None)
        try:
            ours, ray_way = [], []
            for rep in range(args.reps):  # interleaved: a slow spell of the machine hits both
                ours.append(run_ours(marks_file, str(work / "st"), rep))
                ray_way.append(run_ray_pattern(marks_file, str(work / "st"), rep))
        finally:
            ray_runtime.stop(True)
        for name, runs in (("ours", ours), ("ray_documented_pattern", ray_way), ("floor", floor)):
            result[name] = {"overhead_s": _median(runs, "overhead_s"), "total_s": _median(runs, "total_s"),
                            "train_s": _median(runs, "train_s"), "runs": runs}
        o, f, r = result["ours"]["overhead_s"], result["floor"]["overhead_s"], result["ray_documented_pattern"]["overhead_s"]
        result["ratios"] = {"ours_overhead_over_floor": round(o / f, 3), "ours_overhead_over_ray_pattern": round(o / r, 3)}
        result["targets"] = {"ours_overhead_s": "<= 8", "ours_overhead_over_floor": "<= 2"}
        if args.sweep:
            result["sweep_4_trials"] = {"command": ["raytune-opt", "run", str(SPEC.relative_to(ROOT)), *SWEEP],
                                        "now": run_cli_sweep(sys.executable, str(ROOT), str(work / "sweep_now"))}
            if args.before:
                tree = work / "before"
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before],
                               check=True, capture_output=True)
                try:
                    before = run_cli_sweep(sys.executable, str(tree), str(work / "sweep_before"))
                finally:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                                   capture_output=True)
                result["sweep_4_trials"]["before"] = {"rev": args.before, **before}
                result["sweep_4_trials"]["now_over_before_wall"] = round(
                    result["sweep_4_trials"]["now"]["wall_s"] / before["wall_s"], 3)
                result["targets"]["now_over_before_wall"] = "<= 0.5"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "benchmarks" / "out" / "ddp_startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    ways = ("ours", "ray_documented_pattern", "floor")
    shown = {k: v for k, v in result.items() if k not in ways}
    for k in ways:  # medians, and the first run's breakdown
        shown[k] = {**{kk: vv for kk, vv in result[k].items() if kk != "runs"},
                    "breakdown": result[k]["runs"][0]["breakdown"]}
    print(json.dumps(shown, indent=2))


def _versions() -> dict:
    import ray
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__}


if __name__ == "__main__":
    main()
