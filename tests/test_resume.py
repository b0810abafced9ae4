"""Resume after a crash: the driver is killed with SIGKILL mid-sweep, then resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raytune_opt.errors import UsageError
from raytune_opt.sweep import resume_sweep
from tests._chromium import BROWSER
from tests._procs import kill_tree
from tests.test_report import assert_page_draws

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"


@pytest.mark.slow
def test_sigkill_of_the_driver_then_resume_loses_and_duplicates_nothing(local_ray, tmp_path):
    n = 6
    cmd = [sys.executable, "-m", "raytune_opt", "run", str(DIGITS), f"search={{algorithm: random, num_samples: {n}}}",
           "scheduler={name: fifo}", "train.epochs=10", "promote.enabled=false", "name=k",
           "--storage", str(tmp_path)]
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    exp = tmp_path / "k"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            checkpoints = list(exp.glob("trial_*/checkpoint_*"))
            if len({c.parent for c in checkpoints}) >= 2 and list(exp.glob("experiment_state-*.json")):
                break
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the sweep never checkpointed two trials")
        time.sleep(1)  # let Tune save its experiment state once more
    finally:
        kill_tree(proc.pid, signal.SIGKILL)  # a crash, not a shutdown
        log.close()
    # Trials with checkpoints but not finished when the driver died: {trial dir: epochs done}.
    interrupted = {}
    for d in exp.glob("trial_*"):
        done = max((int(c.name.split("_")[-1]) + 1 for c in d.glob("checkpoint_*")), default=0)
        if 0 < done < 10:
            interrupted[d] = done
    assert not (exp / "results.csv").exists()  # the driver died before the end

    outcome = resume_sweep(exp)
    with open(exp / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n, rows  # none lost
    assert len({r["trial_id"] for r in rows}) == n  # none duplicated
    assert len({r["config"] for r in rows}) == n  # no config proposed twice
    assert all(r["status"] == "ok" and int(r["epochs"]) == 10 for r in rows), rows
    assert outcome.exit_code == 0
    for r in rows:  # epoch counts are continuous: 1..8 once each, across the kill
        with open(exp / "history" / f"{r['trial_id']}.csv") as f:
            epochs = [int(float(h["epoch"])) for h in csv.DictReader(f)]
        assert epochs[-1] == 10 and epochs == sorted(set(epochs)), (r["trial_id"], epochs)
    # Trials interrupted mid-way continued from their checkpoint instead of starting over.
    # Tune restarts them under a new id in a new directory (trial_<n>_<suffix>); their first
    # epoch after the resume follows the last one checkpointed before the kill.
    # (A trial that finished between Tune's last state save and the kill is restarted too
    # and resumes from its last checkpoint with nothing left to train.)
    continued = 0
    for d, done in interrupted.items():
        for again in exp.glob(d.name + "_*"):
            lines = (again / "result.json").read_text().splitlines() if (again / "result.json").exists() else []
            if lines:
                assert json.loads(lines[0])["epoch"] > done, (d.name, done, lines[0])
                continued += 1
    assert continued, f"no trial was caught mid-way and continued: {interrupted}"
    json.loads((exp / "best.json").read_text())
    # The resumed sweep's report lists each trial once (restarted ones under their new id).
    page = (exp / "report.html").read_text()
    leaderboard = page[page.index('id="leaderboard"'):page.index('id="history"')]
    assert leaderboard.count("<tr class=") == n
    if BROWSER:
        assert_page_draws(exp / "report.html", expect_none=("promotion",))


def test_resume_refuses_a_directory_that_is_not_an_experiment(tmp_path):
    with pytest.raises(UsageError, match="not a raytune-opt experiment"):
        resume_sweep(tmp_path)
    with pytest.raises(UsageError, match="not a directory"):
        resume_sweep(tmp_path / "missing")


def test_resume_refuses_a_truncated_run_record(tmp_path):
    (tmp_path / "raytune_opt_run.json").write_text('{"format": "raytune-opt/exp')
    (tmp_path / "spec.input.yaml").write_text(DIGITS.read_text())
    with pytest.raises(UsageError, match="unreadable or truncated"):
        resume_sweep(tmp_path)
