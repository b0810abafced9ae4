"""DDP start-up: where a 2-worker trial's seconds go, beside Ray's documented pattern and the floor.

One trial of the digits CNN (2 DDP workers over gloo, 4 epochs, checkpoints on) is run
four ways, side by side in one run:
  ours      raytune-opt's sweep (``run_sweep``, one trial, ``resources.warm_workers: false``:
            a Train run of its own);
  warm      raytune-opt's sweep with warm worker groups (``resources.warm_workers: true``):
            WARM_TRIALS such trials one after another in one slot, the first and the later
            ones measured apart;
  ray       Ray's documented Tune-over-Train V2 pattern, written by hand: a Tune function
            trainable that builds a 2-worker ``TorchTrainer`` around the same loop (Ray's
            defaults everywhere);
  floor     two bare processes started with ``torch.multiprocessing`` that import what a
            worker needs, init a gloo process group and run the same loop.
The loop is the same in all of them, so only what starts, feeds and stops it differs.

Overhead = (trial requested -> its resources free again) - training seconds (the loop's
``epoch_s``, summed). The breakdown comes from Ray's own task events (actor creation and
method timestamps, through the state API) and the loop's start-up marks
(:mod:`raytune_opt.timeline`). A warm trial is requested when Tune starts its (new or
reused) trial actor, and its resources are free when every rank of its slot is back for the
next trial (its ``assignment_end`` marks); the slot itself starts when the sweep does.

With ``--sweep`` it also times the 4-trial command of issue 17 through the CLI, per-trial and
warm; with ``--before REV`` the same command at an older commit (a git worktree), in the same
run. With ``--asha16`` it runs the default digits sweep (16 trials, ASHA) with 2-worker trials
both ways: wall seconds and sweep efficiency (training seconds / (wall x cores)).

    python benchmarks/ddp_startup.py                       # ~4 minutes on 2 cores
    python benchmarks/ddp_startup.py --sweep --before REV  # + the 4-trial sweep, ~6 more
    python benchmarks/ddp_startup.py --asha16              # + the 16-trial sweep both ways, ~10 more
    python benchmarks/ddp_startup.py --sweep-only --reps 2 # only the 4-trial command both ways (~4 minutes)

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
WARM_TRIALS = 4  # trials of the warm way, one after another in one slot
# The default digits sweep (16 trials, Optuna TPE + ASHA) with 2-worker trials.
ASHA16 = [f"resources.num_workers={WORKERS}", "promote.enabled=false"]


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


# Actor calls made several times a second (Train's health polls, the relays' and the warm
# pool's waits): tens of thousands over a run, they would push the events we read out of the
# state API's answer (it returns at most `limit` of them, in no order).
NOISY_TASKS = ("RayTrainWorker.poll_status", "_QueueActor.get", "_QueueActor.put", "_QueueActor.get_nowait",
               "Pool.take", "Pool.ping", "Pool.next", "Pool.decision", "Pool.report")


def _tasks(since: float, until: float) -> list[dict]:
    """Ray's task events (actor creations and calls) created in [since, until], in seconds."""
    from ray.util.state import list_tasks

    out, seen = [], set()
    found = [t for filters in ([("type", "=", "ACTOR_CREATION_TASK")], [("name", "=", "run_trial.reset")],
                               [("name", "!=", n) for n in NOISY_TASKS])
             for t in list_tasks(filters=filters, detail=True, limit=10000, raise_on_missing_output=False)]
    for t in found:
        if (t.task_id, t.attempt_number) in seen:
            continue
        seen.add((t.task_id, t.attempt_number))
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

    spec = load_spec(SPEC, [*OVERRIDES, "resources.warm_workers=false", f"name=ours{rep}"])
    watch = FreeWatch()
    t0 = time.time()
    outcome = run_sweep(spec, storage=storage, verbose=0)
    t1 = time.time()
    row = outcome.rows[0]
    assert row.status == "ok", (row.status, row.error)
    return _measured(watch, marks_file, t0, t1, row.train_seconds,
                     {"results_csv_seconds": round(row.seconds, 3),
                      "results_csv_overhead_s": round(row.seconds - row.train_seconds, 3)})


def run_warm(marks_file: str, storage: str, rep: int) -> dict:
    """WARM_TRIALS one-trial-at-a-time trials in one warm slot: each trial's summary."""
    from raytune_opt.spec import load_spec
    from raytune_opt.sweep import run_sweep

    spec = load_spec(SPEC, [*OVERRIDES, f"search.num_samples={WARM_TRIALS}", "resources.max_concurrent_trials=1",
                            "resources.warm_workers=true", f"name=warm{rep}"])
    watch = FreeWatch()
    t0 = time.time()
    outcome = run_sweep(spec, storage=storage, verbose=0)
    t1 = time.time()
    time.sleep(SETTLE_S)
    watch.stop()
    tasks = _tasks(t0, t1 + SETTLE_S)
    marks = [m for m in timeline.read(marks_file) if t0 <= m["t"] <= t1 + SETTLE_S]
    # Tune asks for a trial by creating its actor, or by resetting a reused one.
    # (a reused actor's calls are named after the trainable: run_trial.reset)
    asks = sorted(t["created"] for t in tasks if t["name"].endswith(("ImplicitFunc.__init__", "run_trial.reset")))
    rows = {r.trial_id: r for r in outcome.rows}
    trials = []
    for start in sorted((m for m in marks if m["event"] == "trial_start"), key=lambda m: m["t"]):
        row = rows[start["trial_id"]]
        assert row.status == "ok", (row.status, row.error)
        aid = next(m["aid"] for m in marks if m["event"] == "warm_submitted" and m["trial_id"] == row.trial_id)
        mine = [m for m in marks if m.get("aid") == aid]
        begun = min(m["t"] for m in mine if m["event"] == "assignment_start")
        freed = max(m["t"] for m in mine if m["event"] == "assignment_end")
        during = [m for m in marks if begun <= m["t"] <= freed and m.get("rank") == 0]
        requested = max((a for a in asks if a <= start["t"]), default=start["t"])
        first_step = _mark(during, "first_step", latest=False)
        last_report = _mark(during, "reported")
        trials.append({**_summary(requested, freed, row.train_seconds, [], during),
                       "start_s": round(first_step - requested, 3), "end_s": round(freed - last_report, 3)})
    slot_start = _mark(marks, "warm_pool_start", latest=False)
    workers = _mark(marks, "slot_worker_start")
    return {"trials": trials, "slot_ready_after_pool_start_s": round(workers - slot_start, 3),
            "sweep_end_release_s": round((watch.freed_after(_mark(marks, "reported", rank=0)) or t1)
                                         - _mark(marks, "reported", rank=0), 3)}


def run_asha16(storage: str, warm: bool) -> dict:
    """The default digits sweep (16 trials, ASHA) with 2-worker trials, per-trial or warm."""
    from raytune_opt.spec import load_spec
    from raytune_opt.sweep import run_sweep

    spec = load_spec(SPEC, [*ASHA16, f"resources.warm_workers={str(warm).lower()}", f"name=asha16{int(warm)}"])
    outcome = run_sweep(spec, storage=storage, verbose=0)
    train_s = sum(r.train_seconds for r in outcome.rows)
    statuses: dict[str, int] = {}
    for r in outcome.rows:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {"wall_s": round(outcome.wall_seconds, 2), "train_s": round(train_s, 2), "statuses": statuses,
            "sweep_efficiency": round(train_s / (outcome.wall_seconds * CORES), 3),
            "best": round(outcome.best.best.get("val_accuracy", 0.0), 4) if outcome.best else None}


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


def run_cli_sweep(python: str, cwd: str, storage: str, extra: tuple[str, ...] = (), marks_file: str = "") -> dict:
    """Issue 17's 4-trial command, timed as a user runs it (a fresh CLI process); with
    ``marks_file``, when its phases began (seconds after the command started)."""
    t0, started = time.monotonic(), time.time()
    proc = subprocess.run([python, "-m", "raytune_opt", "run", str(SPEC), *SWEEP, *extra, "name=ddp4", "--storage",
                           storage], cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": cwd})
    wall = time.monotonic() - t0
    marks = [m for m in timeline.read(marks_file) if started <= m["t"] <= started + wall] if marks_file else []
    phases = {name: round(t - started, 2) for name, t in (
        ("first_trial_start", _mark(marks, "trial_start", latest=False)),
        ("warm_pool_start", _mark(marks, "warm_pool_start", latest=False)),
        ("first_slot_worker_start", _mark(marks, "slot_worker_start", latest=False)),
        ("first_step", _mark(marks, "first_step", latest=False)),
        ("last_report", _mark(marks, "reported")),
        ("warm_pool_stopped", _mark(marks, "warm_pool_stopped")),
    ) if t is not None}
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    import csv

    with open(Path(storage, "ddp4", "results.csv")) as f:
        rows = list(csv.DictReader(f))
    over = [float(r["seconds"]) - float(r["train_seconds"]) for r in rows]
    return {"wall_s": round(wall, 2), "trials": len(rows),
            "trial_overhead_s": {"median": round(statistics.median(over), 2), "max": round(max(over), 2)},
            **({"phases_s": phases} if phases else {})}


def _median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2, help="runs of each way (medians are reported)")
    ap.add_argument("--sweep", action="store_true", help="also time issue 17's 4-trial command")
    ap.add_argument("--before", metavar="REV", help="with --sweep: the same command at this git commit too")
    ap.add_argument("--asha16", action="store_true", help="also the 16-trial ASHA sweep, per-trial and warm")
    ap.add_argument("--keep", action="store_true",
                    help="keep the --sweep / --asha16 sections of the last JSON (with their date) when not run again")
    ap.add_argument("--sweep-only", action="store_true",
                    help="only issue 17's 4-trial command, per-trial and warm interleaved --reps times; every other "
                         "section of the last JSON is kept as it was (with its date)")
    args = ap.parse_args()
    if args.sweep_only:
        return sweep_only(args.reps)

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
            ours, ray_way, warm = [], [], []
            for rep in range(args.reps):  # interleaved: a slow spell of the machine hits every way
                ours.append(run_ours(marks_file, str(work / "st"), rep))
                warm.append(run_warm(marks_file, str(work / "st"), rep))
                ray_way.append(run_ray_pattern(marks_file, str(work / "st"), rep))
            if args.asha16:
                result["asha16"] = {"command": ["raytune-opt", "run", str(SPEC.relative_to(ROOT)), *ASHA16],
                                    "per_trial": run_asha16(str(work / "a16"), warm=False),
                                    "warm": run_asha16(str(work / "a16"), warm=True)}
                a = result["asha16"]
                a["warm_over_per_trial_wall"] = round(a["warm"]["wall_s"] / a["per_trial"]["wall_s"], 3)
        finally:
            ray_runtime.stop(True)
        for name, runs in (("ours", ours), ("ray_documented_pattern", ray_way), ("floor", floor)):
            result[name] = {"overhead_s": _median(runs, "overhead_s"), "total_s": _median(runs, "total_s"),
                            "train_s": _median(runs, "train_s"), "runs": runs}
        firsts = [run["trials"][0] for run in warm]
        later = [t for run in warm for t in run["trials"][1:]]
        result["warm"] = {
            "first_trial": {"overhead_s": _median(firsts, "overhead_s"), "total_s": _median(firsts, "total_s"),
                            "start_s": _median(firsts, "start_s"), "end_s": _median(firsts, "end_s")},
            "later_trials": {"overhead_s": _median(later, "overhead_s"),
                             "overhead_max_s": round(max(t["overhead_s"] for t in later), 3),
                             "start_s": _median(later, "start_s"), "end_s": _median(later, "end_s"),
                             "total_s": _median(later, "total_s"), "train_s": _median(later, "train_s")},
            "runs": warm}
        o, f, r = result["ours"]["overhead_s"], result["floor"]["overhead_s"], result["ray_documented_pattern"]["overhead_s"]
        result["ratios"] = {"ours_overhead_over_floor": round(o / f, 3), "ours_overhead_over_ray_pattern": round(o / r, 3),
                            "warm_first_total_over_ours_total": round(result["warm"]["first_trial"]["total_s"]
                                                                      / result["ours"]["total_s"], 3)}
        result["targets"] = {"ours_overhead_s": "<= 8", "ours_overhead_over_floor": "<= 2",
                             "warm_later_overhead_s": "<= 1", "warm_first_total_over_ours_total": "<= 1"}
        result["warm"]["later_trials"]["met"] = result["warm"]["later_trials"]["overhead_max_s"] <= 1
        if args.sweep:
            result["sweep_4_trials"] = {
                "command": ["raytune-opt", "run", str(SPEC.relative_to(ROOT)), *SWEEP],
                "per_trial": run_cli_sweep(sys.executable, str(ROOT), str(work / "sweep_now"),
                                     ("resources.warm_workers=false",), marks_file),
                "warm": run_cli_sweep(sys.executable, str(ROOT), str(work / "sweep_warm"),
                                      ("resources.warm_workers=true",), marks_file)}
            sw = result["sweep_4_trials"]
            sw["warm_over_per_trial_wall"] = round(sw["warm"]["wall_s"] / sw["per_trial"]["wall_s"], 3)
            result["targets"]["warm_over_per_trial_wall"] = "<= 0.4"
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
                result["sweep_4_trials"]["warm_over_before_wall"] = round(
                    result["sweep_4_trials"]["warm"]["wall_s"] / before["wall_s"], 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "benchmarks" / "out" / "ddp_startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.keep and out.exists():
        last = json.loads(out.read_text())
        for section in ("sweep_4_trials", "asha16"):
            if section not in result and section in last:
                result[section] = {"date": last[section].get("date", last["date"]), **last[section]}
                result["targets"].update({k: v for k, v in last.get("targets", {}).items()
                                          if k not in result["targets"]})
    for section in ("sweep_4_trials", "asha16"):
        result.get(section, {}).setdefault("date", result["date"])
    out.write_text(json.dumps(result, indent=2) + "\n")
    ways = ("ours", "ray_documented_pattern", "floor")
    shown = {k: v for k, v in result.items() if k not in (*ways, "warm")}
    for k in ways:  # medians, and the first run's breakdown
        shown[k] = {**{kk: vv for kk, vv in result[k].items() if kk != "runs"},
                    "breakdown": result[k]["runs"][0]["breakdown"]}
    shown["warm"] = {k: v for k, v in result["warm"].items() if k != "runs"}
    print(json.dumps(shown, indent=2))


def sweep_only(reps: int) -> None:
    """``--sweep-only``: the 4-trial command both ways, interleaved (a slow spell of the machine
    hits both), into the last JSON's ``sweep_4_trials``; the other sections stay as they were."""
    out = ROOT / "benchmarks" / "out" / "ddp_startup.json"
    last = json.loads(out.read_text()) if out.exists() else {"benchmark": "ddp_startup"}
    work = Path(tempfile.mkdtemp(prefix="raytune_opt_ddp_startup_"))
    marks_file = str(work / "timeline.jsonl")
    os.environ[timeline.ENV] = marks_file
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load = [os.getloadavg()[0]]
    runs: dict = {"per_trial": [], "warm": []}
    try:
        for rep in range(reps):
            for way, flag in (("per_trial", "false"), ("warm", "true")):
                runs[way].append(run_cli_sweep(sys.executable, str(ROOT), str(work / f"{way}{rep}"),
                                               (f"resources.warm_workers={flag}",), marks_file))
                load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    walls = {way: round(statistics.median(r["wall_s"] for r in rs), 2) for way, rs in runs.items()}
    last.update(machine={"platform": platform.platform(), "processor": platform.processor(), "cores": CORES},
                versions=_versions())
    last["sweep_4_trials"] = {
        "date": date, "command": ["raytune-opt", "run", str(SPEC.relative_to(ROOT)), *SWEEP], "reps": reps,
        "load_1min": [round(x, 2) for x in load],
        "per_trial": {"wall_s": walls["per_trial"], "runs": runs["per_trial"]},
        "warm": {"wall_s": walls["warm"], "runs": runs["warm"]},
        "warm_over_per_trial_wall": round(walls["warm"] / walls["per_trial"], 3)}
    last.setdefault("targets", {})["warm_over_per_trial_wall"] = "<= 0.4"
    out.write_text(json.dumps(last, indent=2) + "\n")
    print(json.dumps(last["sweep_4_trials"], indent=2))


def _versions() -> dict:
    import ray
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__}


if __name__ == "__main__":
    main()
