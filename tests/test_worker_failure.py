"""A Train worker dies mid-trial: Ray Train restarts the worker group from the last checkpoint.

One 2-worker DDP trial runs through the CLI in a subprocess (its own embedded Ray). Once two
epochs are in the trial's result.json, one ``ray::RayTrainWorker`` process of that Ray is
killed with SIGKILL. Train V2's controller sees the dead actor, tears the group down and
starts a new one (``FailureConfig(max_failures=2)`` in trial.py); the new ranks get the last
registered checkpoint from ``ray.train.get_checkpoint()`` and continue after it.

What the files say, and why no epoch repeats: Train forwards a report to Tune only once the
controller has collected it from every rank (``ReportCallbackHandler``), and only then
registers its checkpoint; every epoch's report carries one. The new group resumes from the
last registered checkpoint, which is the last epoch Tune saw. Epochs the old group trained
after that (seen once: the workers were two epochs ahead of the controller's last poll when
one died) are trained again and reported once; their reports died with the old group. Tune's
raw result.json therefore holds 1..N once each, and so do our history/<trial>.csv and
results.csv; the test asserts both. (Rank 0 had already uploaded those lost epochs'
checkpoints: Train leaves them under train/train-<id>/ as unregistered directories.)
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
EPOCHS = 10  # Tune records results a few epochs behind the workers here: leave room after the kill
KILL_AFTER = 2  # epochs in result.json before the kill

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


def test_killing_one_train_worker_restarts_the_group_from_its_last_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "raytune_opt.cli", "run", str(DIGITS),
           "search={algorithm: random, num_samples: 1}", "scheduler={name: fifo}", "space={}",
           f"train.epochs={EPOCHS}", "model.width=128",  # ~1 s an epoch: the kill lands mid-trial
           "resources.num_workers=2", "resources.cpus_per_worker=1", "resources.max_concurrent_trials=1",
           "promote.enabled=false", "name=wf", "--storage", str(tmp_path)]
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    exp = tmp_path / "wf"
    seen_at: list[tuple[int, float]] = []  # (epoch, when it appeared in result.json)
    victim, before, restarted_at = None, {}, None
    try:
        deadline = time.monotonic() + 420
        while proc.poll() is None and time.monotonic() < deadline:
            results = list(exp.glob("trial_*/result.json"))
            epochs = _epochs(results[0]) if results else []
            seen_at += [(e, time.monotonic()) for e in epochs[len(seen_at):]]
            workers = _train_workers(proc.pid)
            if victim is None and len(epochs) >= KILL_AFTER and len(workers) == 2:
                before = workers
                victim = max(workers)  # either rank will do; one, not the group
                os.kill(victim, signal.SIGKILL)
            elif victim is not None and restarted_at is None and workers and not set(workers) & set(before):
                restarted_at = time.monotonic()
            time.sleep(0.2)
        assert proc.poll() is not None, "the sweep did not finish in 7 minutes"
    finally:
        kill_tree(proc.pid)
        log.close()
    driver_log = (tmp_path / "driver.log").read_text()
    assert victim is not None, f"no 2-worker group seen after {KILL_AFTER} epochs:\n{driver_log[-3000:]}"
    assert proc.returncode == 0, driver_log[-3000:]
    print(f"killed {victim} of {sorted(before)}; result.json epochs (epoch, s after start): "
          f"{[(e, round(t - seen_at[0][1], 1)) for e, t in seen_at]}; new workers at "
          f"{round(restarted_at - seen_at[0][1], 1) if restarted_at else None}")

    # The group really restarted: a whole new set of worker processes appeared after the kill.
    assert restarted_at is not None, f"no new Train workers after killing {victim} ({before}):\n{driver_log[-3000:]}"
    pre = [e for e, t in seen_at if t < restarted_at]
    post = [e for e, t in seen_at if t >= restarted_at]
    assert pre and pre[-1] < EPOCHS, f"the kill landed after the last epoch: {seen_at}"
    # The new group continued after the last checkpointed epoch: no gap, no start from scratch.
    assert post and post[0] == pre[-1] + 1, (pre, post)

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
