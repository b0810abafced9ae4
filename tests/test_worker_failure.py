"""A Train worker dies mid-trial: Ray Train restarts the worker group from the last checkpoint.

One 2-worker DDP trial runs through the CLI in a subprocess (its own embedded Ray). Once Train
has registered the checkpoint of epoch 2 (its ``checkpoint_manager_snapshot.json``, rewritten
as each report is registered; the trial's result.json reaches the experiment directory only
in batches), one ``ray::RayTrainWorker`` process of that Ray is killed with SIGKILL. Train
V2's controller sees the dead actor, tears the group down and starts a new one
(``FailureConfig(max_failures=2)`` in trial.py); the new ranks get the last registered
checkpoint from ``ray.train.get_checkpoint()`` and continue after it.

What the files say, and why no epoch repeats: the controller forwards a report to Tune, and
registers its checkpoint, only once it has collected that report from every rank
(``ReportCallbackHandler``); every epoch's report carries a checkpoint. So the new group
resumes right after the last epoch Tune got. Epochs the old group trained beyond it (workers
run ahead of the controller's polls; one's report was lost with the dead rank) are trained
again and reported once. Tune's raw result.json therefore holds 1..N once each, and so do our
history/<trial>.csv and results.csv; the test asserts all three. (Rank 0 had already uploaded
its checkpoints of those lost epochs: Train leaves them under train/train-<id>/, unregistered.)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests._procs import kill_tree

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"
EPOCHS = 8
KILL_AFTER = 2  # the kill comes once this epoch's checkpoint is registered

pytestmark = pytest.mark.slow


def _train_workers(root_pid: int) -> dict[int, str]:
    """{pid: title} of the Ray Train workers under ``root_pid`` (our driver: its embedded
    raylet starts every worker), so another Ray on this machine is never touched."""
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    found = {}
    for p in procs:
        try:
            title = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if title.startswith("ray::RayTrainWorker"):
            found[p.pid] = title
    return found


def _registered_epoch(exp: Path) -> int | None:
    """The epoch of the last checkpoint Train registered (every rank reported it), if any."""
    for snapshot in exp.glob("train/*/checkpoint_manager_snapshot.json"):  # train-<trial> or a warm slot-<...>
        try:
            return int(json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["epoch"])
        except (ValueError, KeyError, TypeError, OSError):
            return None  # being written
    return None


def _epochs(result_json: Path) -> list[int]:
    if not result_json.exists():
        return []
    out = []
    for line in result_json.read_text().splitlines():
        try:
            out.append(int(json.loads(line)["epoch"]))
        except (ValueError, KeyError):
            pass  # a line being written
    return out


@pytest.mark.parametrize("warm", [pytest.param(False, marks=pytest.mark.exhaustive), True], ids=["per-trial", "warm"])
def test_killing_one_train_worker_restarts_the_group_from_its_last_checkpoint(tmp_path, warm):
    # warm: the trial runs in a warm slot (resources.warm_workers); Train restarts the slot's
    # group and the slot's pool hands the new ranks the same trial and its registered checkpoint.
    cmd = [sys.executable, "-m", "raytune_opt.cli", "run", str(DIGITS),
           "search={algorithm: random, num_samples: 1}", "scheduler={name: fifo}", "space={}",
           f"train.epochs={EPOCHS}", "model.width=128",  # ~1 s an epoch: the kill lands mid-trial
           "resources.num_workers=2", "resources.cpus_per_worker=1", "resources.max_concurrent_trials=1",
           f"resources.warm_workers={str(warm).lower()}", "promote.enabled=false", "name=wf", "--storage",
           str(tmp_path)]
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    exp = tmp_path / "wf"
    registered: list[tuple[int, float]] = []  # (epoch, when Train registered its checkpoint)
    victim, before, restarted_at, resumed_after = None, {}, None, None
    try:
        deadline = time.monotonic() + 420
        while proc.poll() is None and time.monotonic() < deadline:
            epoch = _registered_epoch(exp)
            if epoch is not None and (not registered or registered[-1][0] != epoch):
                registered.append((epoch, time.monotonic()))
            workers = _train_workers(proc.pid)
            if victim is None and epoch is not None and epoch >= KILL_AFTER and len(workers) == 2:
                before = workers
                victim = max(workers)  # either rank will do; one, not the group
                os.kill(victim, signal.SIGKILL)
            elif victim is not None and restarted_at is None and workers and not set(workers) & set(before):
                # The old group is gone: its last registered checkpoint is what the new one gets.
                restarted_at, resumed_after = time.monotonic(), registered[-1][0]
            time.sleep(0.1)
        assert proc.poll() is not None, "the sweep did not finish in 7 minutes"
    finally:
        kill_tree(proc.pid)
        log.close()
    driver_log = (tmp_path / "driver.log").read_text()
    assert victim is not None, f"no 2-worker group seen after epoch {KILL_AFTER}:\n{driver_log[-3000:]}"
    assert proc.returncode == 0, driver_log[-3000:]
    t0 = registered[0][1]
    print(f"killed {victim} of {sorted(before)}; checkpoints registered (epoch, s after the first): "
          f"{[(e, round(t - t0, 1)) for e, t in registered]}; new workers at "
          f"{round(restarted_at - t0, 1) if restarted_at else None} s")

    # The group really restarted: a whole new set of worker processes appeared after the kill.
    assert restarted_at is not None, f"no new Train workers after killing {victim} ({before}):\n{driver_log[-3000:]}"
    assert resumed_after < EPOCHS, f"the kill landed after the last epoch: {registered}"
    # The new group continued right after the last checkpoint: no gap, no start from scratch.
    after = [e for e, t in registered if t > restarted_at]
    assert after and after[0] == resumed_after + 1, (resumed_after, registered)

    # Tune's raw results and ours: every epoch once, in order.
    (result_json,) = exp.glob("trial_*/result.json")
    assert _epochs(result_json) == list(range(1, EPOCHS + 1))
    with open(exp / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "ok" and row["stop_reason"] == "completed" and int(row["epochs"]) == EPOCHS, row
    with open(exp / "history" / f"{row['trial_id']}.csv") as f:
        history = list(csv.DictReader(f))
    assert [int(float(h["epoch"])) for h in history] == list(range(1, EPOCHS + 1))
    # The restarted ranks still trained one model: DDP kept them identical to the end.
    assert float(history[-1]["rank_param_max_diff"]) == 0.0
