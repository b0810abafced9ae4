"""Sweep budgets (raytune_opt/budget.py): the rules on synthetic inputs, the ledger kept in the
experiment and read back by a resumed sweep's stopper, and one real sweep killed with SIGKILL
and resumed, whose clock survives the kill and which ends on its budget with the reason recorded.

The spec's bad values are in the bad-spec corpus (tests/spec/bad/11*_budget_*.yaml).
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

import pytest

from raytune_opt import budget
from raytune_opt.budget import Ledger, Limits, parse_time, plateau_reached
from raytune_opt.spec import load_spec
from tests._procs import kill_tree

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5h", 5400), (45, 45),
                                          ("45", 45), (2.5, 2.5), (" 10 m ", 600)])
def test_time_takes_seconds_or_a_duration(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("bad", ["2x", "2 hours", "", "h", "-1", "0s", 0, -5, True, float("inf"), None, [1]])
def test_time_refuses_anything_else(bad):
    with pytest.raises(ValueError):
        parse_time(bad)
    if bad is not None:  # null is the spec's "no time limit"
        assert budget.time_problem(bad).startswith("must be seconds above 0 or a duration")


@pytest.mark.parametrize("values,trials,min_delta,mode,reached", [
    ([0.5, 0.6], 2, 0.0, "max", False),  # not more finished trials than the window: not judged yet
    ([0.5, 0.6, 0.6, 0.6], 2, 0.0, "max", True),  # the last 2 did not improve on 0.6
    ([0.5, 0.6, 0.61, 0.6], 2, 0.001, "max", False),  # +0.01 within the window
    ([0.5, 0.6, 0.61, 0.6], 2, 0.05, "max", True),  # +0.01 is less than min_delta
    ([0.5, 0.6, 0.62, 0.64], 2, 0.03, "max", False),  # two small steps add up to min_delta within the window
    ([1.0, 0.9, 0.95, 0.92], 2, 0.05, "min", True),  # min: nothing below 0.9 - 0.05
    ([1.0, 0.9, 0.95, 0.80], 2, 0.05, "min", False),
    ([0.5, None, None], 2, 0.0, "max", True),  # errored trials count as trials that did not improve
    ([None, 0.5, None], 2, 0.0, "max", False),  # the first value is an improvement
    ([None, None, None], 2, 0.0, "max", True),  # nothing has a value: nothing improved
    ([0.5, float("nan"), 0.5], 2, 0.0, "max", True),
])
def test_the_plateau_rule(values, trials, min_delta, mode, reached):
    assert plateau_reached(values, trials, min_delta, mode) is reached


def _limits(*overrides: str) -> Limits:
    return Limits.from_spec(load_spec(DIGITS, list(overrides)).data)


def test_resource_hours_are_gpu_hours_when_trials_use_gpus_else_cpu_hours():
    cpu = _limits("resources.num_workers=3", "resources.cpus_per_worker=2", "search.budget.resource_hours=1")
    assert (cpu.resource, cpu.per_trial) == ("CPU", 6.0)
    gpu = _limits("resources.num_workers=2", "resources.gpus_per_worker=0.5", "search.budget.resource_hours=1")
    assert (gpu.resource, gpu.per_trial) == ("GPU", 1.0)
    ledger = Ledger(cpu)
    ledger.tick(1800.0, running=2)  # half an hour, two trials of 6 CPUs each
    ledger.tick(600.0, running=0)  # time passes, nothing holds resources
    ledger.tick(600.0, running=1)
    assert ledger.resource_hours == pytest.approx(0.5 * 2 * 6 + 600 / 3600 * 6)
    assert ledger.time_spent_s == 3000.0
    # Multi-worker trials are RUNNING in Tune while they wait for workers (a warm slot): 16 of
    # them on a 6-CPU cluster hold 6 CPUs, not 96.
    waiting = Ledger(cpu)
    waiting.tick(3600.0, running=16, capacity=6.0)
    assert waiting.resource_hours == pytest.approx(6.0)


def test_each_limit_ends_the_sweep_with_its_reason():
    ledger = Ledger(_limits("search.budget.time=30m"))
    ledger.tick(1799.0, running=1)
    assert ledger.check() is None
    ledger.tick(1.0, running=1)
    assert ledger.check()["rule"] == "time" and "time 30m reached" in ledger.reached["text"]
    ledger.tick(60.0, running=1)
    assert ledger.check()["time_spent_s"] == 1800.0  # recorded once, when reached

    ledger = Ledger(_limits("search.budget.resource_hours=2", "resources.cpus_per_worker=2"))
    ledger.tick(1800.0, running=1)
    assert ledger.check() is None  # 1 CPU-hour
    ledger.tick(1800.0, running=1)
    assert ledger.check()["rule"] == "resource_hours"
    assert ledger.reached["text"] == "resource_hours 2 reached (2 CPU-hours spent)"

    ledger = Ledger(_limits("search.budget.plateau={trials: 2, min_delta: 0.01}"))
    # After d, c (in the last 2) beat the best before (0.905) by 0.015; after e, the last 2 (d, e) beat the
    # best before them (0.92) by only 0.001.
    for trial_id, values in [("a", [0.5, 0.9]), ("b", [0.905]), ("c", [0.2, 0.92]), ("d", [0.4]), ("e", [0.921])]:
        for v in values:
            ledger.result(trial_id, v)
        ledger.finish(trial_id, usable=True)
        if trial_id != "e":
            assert ledger.check() is None, trial_id
    assert ledger.finished == [["a", 0.9], ["b", 0.905], ["c", 0.92], ["d", 0.4], ["e", 0.921]]
    assert ledger.check()["rule"] == "plateau"
    assert ledger.reached["text"] == ("plateau: val_accuracy did not improve by 0.01 or more in the last 2 finished "
                                      "trials (best 0.921)")


def test_a_trial_that_diverged_or_errored_has_no_value_and_is_counted_once():
    ledger = Ledger(_limits("search.budget.plateau.trials=3"))
    ledger.result("a", 0.99)
    assert ledger.finish("a", usable=False) and ledger.finished == [["a", None]]
    assert not ledger.finish("a", usable=True)  # told again after a resume: counted once
    ledger.result("b", float("nan"))
    ledger.result("b", True)
    ledger.finish("b", usable=True)
    assert ledger.finished == [["a", None], ["b", None]]


def test_the_ledger_reads_back_what_was_written():
    limits = _limits("search.budget={time: 2h, plateau: {trials: 5}}")
    ledger = Ledger(limits, sessions=2, time_spent_s=12.5, resource_s=30.0)
    ledger.result("a", 0.9)
    ledger.finish("a", usable=True)
    ledger.result("b", 0.7)
    back = budget.load(json.dumps(ledger.to_dict()), limits)
    assert back.to_dict() == ledger.to_dict() and back.running_best == {"b": 0.7}
    assert budget.load(None, limits).to_dict() == Ledger(limits).to_dict()
    with pytest.raises(ValueError):
        budget.load(json.dumps({"format": "other"}), limits)


def test_a_resumed_sweeps_callback_reads_the_ledger_kept_and_its_stopper_finds_it(tmp_path):
    """Tune pickles the callback into tuner.pkl before the first trial, and its stopper into its
    experiment state at every save; a resumed sweep unpickles each copy on its own. The
    callback must read what the budget spent from the experiment, not start again, and the
    stopper (another copy, not that callback's) must end the sweep when that callback says so."""
    import ray.cloudpickle as cloudpickle

    from raytune_opt import storage

    spec = load_spec(DIGITS, ["search.budget.time=1h", "resources.cpus_per_worker=2"])
    loc = storage.from_uri(str(tmp_path))
    callback, stopper = budget.tune_parts(spec, loc)
    tuner_pkl = cloudpickle.dumps({"stop": stopper, "callbacks": [object(), callback]})

    class Trial:
        status, trial_id, last_result = "RUNNING", "t1", {}

    assert stopper.stop_all() is False  # before the fit starts, nothing runs the budget
    callback.setup()
    callback.on_step_begin(0, [Trial()])
    callback._last -= 100.0  # 100 s pass with one trial running
    assert stopper.stop_all() is False
    callback.on_trial_result(0, [], Trial(), {"val_accuracy": 0.9})
    runner_data = cloudpickle.dumps(stopper)  # Tune's experiment state, saved during the fit
    callback.on_experiment_end([])  # the driver is killed, or the fit ends
    assert stopper.stop_all() is False  # this callback no longer runs the experiment
    kept = json.loads((tmp_path / "budget.json").read_text())
    assert kept["sessions"] == 1 and kept["time_spent_s"] >= 100.0 and kept["resource_s"] >= 200.0

    resumed = cloudpickle.loads(tuner_pkl)["callbacks"][1]
    resumed_stopper = cloudpickle.loads(runner_data)
    assert resumed.ledger is None and resumed_stopper is not stopper
    resumed.setup()
    assert resumed.ledger.sessions == 2 and resumed.ledger.time_spent_s >= 100.0
    assert resumed.ledger.running_best == {"t1": 0.9}
    assert resumed_stopper.stop_all() is False
    resumed.ledger.time_spent_s = 3600.0  # the rest of the hour spent
    assert resumed_stopper.stop_all() is True
    resumed.on_experiment_end([])
    assert json.loads((tmp_path / "budget.json").read_text())["reached"]["rule"] == "time"
    assert budget.tune_parts(load_spec(DIGITS), loc) is None  # no budget: nothing to add


# ---------------------------------------------------------------- a real sweep, killed and resumed

LIMIT_S = 24.0
KILL_AT_S = 10.0  # the kill comes once the budget's file says this much was spent (and a trial reported)


def _ledger(exp: Path) -> dict | None:
    try:
        return json.loads((exp / "budget.json").read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_a_budget_survives_a_kill_and_ends_the_resumed_sweep(local_ray, tmp_path, capsys):
    """An unbounded sweep (num_samples: null) under a 24-s budget is killed with SIGKILL once it
    has spent 10 s and a trial has reported; the resumed sweep runs only what is left, ends on the budget (the trials
    it stopped and the budget's reason in results.csv, best.json and the report), and a
    resume of the spent sweep does nothing but write its results again."""
    from raytune_opt.report import after_sweep
    from raytune_opt.sweep import resume_sweep

    address = local_ray.get_runtime_context().gcs_address
    exp = tmp_path / "b"
    run = [sys.executable, "-m", "raytune_opt", "run", str(DIGITS), "name=b", "search.algorithm=random",
           "search.num_samples=null", f"search.budget.time={LIMIT_S:g}s", "scheduler={name: fifo}",
           "train.epochs=40", "resources.max_concurrent_trials=2", "promote.enabled=false",
           "--storage", str(tmp_path), "--address", address]
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(run, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0.2"})
    try:
        deadline = time.monotonic() + 120
        # Mid-sweep: some of the budget spent, and a trial has reported (a slow machine starts
        # its first trials late): the resumed sweep then has a trial with results to record.
        while (_ledger(exp) or {}).get("time_spent_s", 0.0) < KILL_AT_S or not any(
                f.stat().st_size for f in exp.glob("trial_*/result.json")):
            assert proc.poll() is None, f"the driver ended before the kill: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(0.3)  # let Tune save its state once more
    finally:
        kill_tree(proc.pid, signal.SIGKILL)  # a crash, not a shutdown
    killed = _ledger(exp)
    assert killed["sessions"] == 1 and killed["reached"] is None and not (exp / "results.csv").exists()
    spent = killed["time_spent_s"]

    outcome = resume_sweep(exp, address=address)
    after_sweep(outcome.location)  # what 'raytune-opt resume' does next
    said = capsys.readouterr().out
    assert f"budget: {spent:.0f} s spent over 1 session(s); time " in said and f"of {LIMIT_S:g}s left" in said, said
    ledger = _ledger(exp)
    assert ledger["sessions"] == 2 and ledger["reached"]["rule"] == "time" and ledger["reached"]["session"] == 2
    assert LIMIT_S <= ledger["reached"]["time_spent_s"] < LIMIT_S + 3  # the stop came at once
    # The resumed sweep ran what was left, not the whole budget again. (Its clock runs on while
    # Tune stops the trials and saves its state, which takes longer for a trial still starting.)
    stopping = ledger["time_spent_s"] - ledger["reached"]["time_spent_s"]
    assert outcome.wall_seconds - stopping < LIMIT_S - spent + 6, (outcome.wall_seconds, stopping, spent)
    assert 0 < ledger["resource_s"] <= 2 * ledger["time_spent_s"]  # at most 2 trials of 1 CPU ran at once
    with open(exp / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert outcome.exit_code == 0 and all(r["status"] in ("ok", "stopped") for r in rows), rows
    by_budget = [r for r in rows if r["stop_reason"].startswith(f"budget: time {LIMIT_S:g}s reached")]
    assert by_budget and all(r["status"] == "stopped" for r in by_budget), rows
    assert outcome.budget["reached"] == "time"
    assert json.loads((exp / "best.json").read_text())["budget"]["reason"] == ledger["reached"]["text"]
    assert f"budget</th><td>time {LIMIT_S:g}s reached" in (exp / "report.html").read_text()

    again = resume_sweep(exp, address=address)  # nothing left: no trial runs again
    assert f"budget: nothing left (time {LIMIT_S:g}s reached" in capsys.readouterr().out
    with open(exp / "results.csv") as f:
        assert list(csv.DictReader(f)) == rows
    assert _ledger(exp)["sessions"] == 2 and again.wall_seconds < 5
