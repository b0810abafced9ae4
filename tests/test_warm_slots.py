"""Warm worker groups (``resources.warm_workers: true``): multi-worker trials in slots that
keep their Ray Train worker group across trials (raytune_opt/warm_slots.py).

What a slot may not change: a trial run in a warm slot right after another trial reports
exactly what it reports alone (same seed, CPU, gloo). What it must keep working: a trial of
another shape gets a slot of its own (here the slot before it is retired to make room), and a
driver killed with SIGKILL takes its slots with it; ``resume`` makes new ones and every trial
ends once. The leak, worker-failure, PBT and ZeRO tests run in this mode too (their own files).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import pytest

from raytune_opt.spec import load_spec
from raytune_opt.sweep import resume_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"
TIMING = {"epoch_s", "samples_per_s", "latency_ms", "node_id"}  # what differs run to run by nature
SLOT_ACTORS = {"Pool", "_SlotRunner", "TrainController", "RayTrainWorker"}

pytestmark = pytest.mark.slow


def _actors(classes: set[str], alive_only: bool = False) -> dict[str, str]:
    """{actor id: class} of these classes on the session's Ray (dead ones too unless ``alive_only``)."""
    from ray.util.state import list_actors

    found = list_actors(filters=[("state", "!=", "DEAD")] if alive_only else None, limit=10_000,
                        raise_on_missing_output=False)
    return {a.actor_id: a.class_name for a in found if a.class_name in classes}


def _spec(name: str, *overrides: str, code_dirs: tuple | None = None):
    return load_spec(DIGITS, ["search={algorithm: grid, num_samples: 1}", "scheduler={name: fifo}",
                              "train.epochs=2", "train.limit_batches=8", "resources.num_workers=2",
                              "resources.max_concurrent_trials=1", "promote.enabled=false", f"name={name}",
                              *overrides], code_dirs=code_dirs)


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


# The built-in recipe as a user loop that keeps a value (a frozen base model, say) with ctx.keep:
# each making of it is a line in MADE.
KEEP_LOOP = """
import os
from raytune_opt.recipe.loop import builtin_loop

MADE = {made!r}


def _base():
    with open(MADE, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    return object()


def train(config, ctx):
    ctx.keep("base", _base)
    builtin_loop(config, ctx)
"""


@pytest.fixture
def keep_loop(tmp_path):
    from tests._user_code import user_module

    made = tmp_path / "made.txt"
    for directory, name in user_module(tmp_path, "ukeep", KEEP_LOOP.format(made=str(made))):
        yield f"train.loop={name}:train", (str(directory),), made


def test_a_trial_right_after_another_in_a_warm_slot_reports_exactly_what_it_reports_alone(local_ray, tmp_path,
                                                                                            keep_loop):
    loop, code_dirs, made = keep_loop
    lr = "space={train.optimizer.lr: {grid: [%s]}}"
    before = _actors({"RayTrainWorker"})
    after_another = run_sweep(_spec("warm", lr % "0.01, 0.003", loop, "resources.warm_workers=true",
                                    code_dirs=code_dirs), storage=str(tmp_path), verbose=0)
    workers = set(_actors({"RayTrainWorker"})) - set(before)
    kept = made.read_text().split()
    alone = run_sweep(_spec("alone", lr % "0.003", loop, "resources.warm_workers=false", code_dirs=code_dirs),
                      storage=str(tmp_path), verbose=0)

    assert [r.status for r in after_another.rows] == ["ok", "ok"], [(r.status, r.error) for r in after_another.rows]
    assert len(workers) == 2, f"one 2-worker group should have served both trials, {len(workers)} workers ran"
    # ctx.keep: made once on each rank of the slot for its two trials (alone: once per rank again).
    assert len(kept) == len(set(kept)) == 2, kept
    assert len(made.read_text().split()) == 4
    (second,) = [r for r in after_another.rows if r.config["train.optimizer.lr"] == 0.003]
    (first,) = [r for r in after_another.rows if r is not second]
    # One trial at a time, in the grid's order: trial_0 (lr 0.01) ran, then trial_1 in the same group.
    assert json.loads((after_another.exp_dir / "trial_1" / "params.json").read_text()) == {"train.optimizer.lr": 0.003}
    (ref,) = alone.rows
    assert len(second.history) == len(ref.history) == 2
    assert _comparable(second.history) == _comparable(ref.history)
    # Not trivially equal: the other trial in the slot trained to other figures.
    assert _comparable(first.history) != _comparable(second.history)
    # A trial's seconds are the slot's on it, not its wait for the slot: the first trial waited
    # for the slot's group to start (8-12 s here; its seconds counted them before, 11.6 s for
    # 0.26 s of training), and what is left is its own start in the group (its model, DDP's
    # first wrap in a fresh process: ~3 s).
    assert first.seconds - first.train_seconds < 7.0, (first.seconds, first.train_seconds)


@pytest.mark.exhaustive
def test_a_trial_of_another_shape_gets_a_slot_of_its_own(local_ray, tmp_path):
    # Resources are not searchable; a strategy is: a DDP trial, then a DeepSpeed one. 2 CPUs:
    # the DDP slot (2 x 1 CPU) holds both; once idle it is retired to make room for the other.
    pytest.importorskip("deepspeed")
    before = _actors({"RayTrainWorker"})
    outcome = run_sweep(_spec("shapes", "space={train.strategy: {grid: [ddp, deepspeed]}}", "train.epochs=1",
                              "resources.cpus_per_worker=1", "resources.warm_workers=true"),
                        storage=str(tmp_path), verbose=0)
    assert [r.status for r in outcome.rows] == ["ok", "ok"], [(r.status, r.error) for r in outcome.rows]
    assert len(set(_actors({"RayTrainWorker"})) - set(before)) == 4  # two groups, one per shape
    assert {r.config["train.strategy"] for r in outcome.rows} == {"ddp", "deepspeed"}


@pytest.mark.exhaustive  # CI: tests/test_loop_conformance.py's CI cases kill a warm-slot sweep, see its slots go, resume
def test_a_killed_driver_takes_its_slots_with_it_and_resume_finishes_every_trial_once(local_ray, tmp_path):
    from tests import test_resume

    address = local_ray.get_runtime_context().gcs_address
    before = _actors(SLOT_ACTORS)
    run = [sys.executable, "-m", "raytune_opt", "run", str(DIGITS), *test_resume.SEARCHERS["random"],
           "scheduler={name: fifo}", f"train.epochs={test_resume.EPOCHS}", "train.limit_batches=16", "model.width=96",
           "resources.num_workers=2", "resources.cpus_per_worker=1", "resources.max_concurrent_trials=1",
           "resources.warm_workers=true", "promote.enabled=false", "--storage", str(tmp_path),
           "--address", address]
    exp, (held,) = test_resume.kill_at(run, tmp_path, ("mid",), tmp_path / "driver.log", name="wk")
    seen = json.loads(held)
    # The slots (pool, runners, controllers, workers) were the dead driver's: they go with it.
    deadline = time.monotonic() + 60
    while (left := set(_actors(SLOT_ACTORS, alive_only=True)) - set(before)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"the killed driver's slots outlived it: {sorted(_actors(SLOT_ACTORS, alive_only=True).values())}"

    outcome = resume_sweep(exp, address=address)
    with open(exp / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert outcome.exit_code == 0 and len(rows) == test_resume.N, rows
    assert all(r["status"] == "ok" and int(r["epochs"]) == test_resume.EPOCHS for r in rows), rows
    for r in rows:  # every epoch once, across the kill
        with open(exp / "history" / f"{r['trial_id']}.csv") as f:
            epochs = [int(float(h["epoch"])) for h in csv.DictReader(f)]
        assert epochs == list(range(1, test_resume.EPOCHS + 1)), (r["trial_id"], epochs)
    # A trial caught mid-way went on from its own checkpoint in a new slot, not from epoch 1.
    continued = 0
    for name, k in seen.items():
        lines = [json.loads(x) for x in (exp / name / "result.json").read_text().splitlines() if x.strip()]
        assert [x["epoch"] for x in lines if not x.get("replayed")].count(1) == 1, (name, lines)
        continued += 0 < k < test_resume.EPOCHS
    assert continued, seen
    assert not set(_actors(SLOT_ACTORS, alive_only=True)) - set(before), "the resumed sweep left slots behind"
