"""No placement groups or actors left behind by a sweep of 2-worker trials that ASHA stops.

ray-project/ray#54305: when a Tune scheduler stops a trial that drives a Train V2 run, the
Train run's placement group and actors can outlive the trial. Here N 2-worker DDP trials run
under ASHA on the session's local Ray (in this process, so the sweep's driver is still
connected when we count: a driver that exits takes its job's actors and placement groups with
it and would hide a leak). The learning rates alternate good and hopeless, so ASHA stops
trials at its first rung, one trial at a time.

What counts as ours: every placement group not REMOVED and every actor not DEAD that was not
there before the sweep, except the cluster-wide singletons Ray Train creates once and shares
between all runs (the detached ``AutoscalingCoordinator``). Per trial the sweep creates the
Tune trial actor (``ImplicitFunc``) and its placement group, Tune's ``_QueueActor``, and Train's
``TrainController``, ``RayTrainWorker`` x2, ``SynchronizationActor``, ``DatasetManager``,
``PreemptionWatcher``, the detached ``PlacementGroupCleaner`` and the workers' placement group.
With warm worker groups the Train actors are made once per slot (with the slot's ``_SlotRunner``)
and the sweep adds its slot ``Pool``; the trial actors are reused.

The trials that finish also show that DDP kept their replicas identical (``rank_param_max_diff``)
and that best.pt was written.

N is RAYTUNE_OPT_LEAK_TRIALS (default 3: one finishes, ASHA stops two; ~1.5 minutes here); the
issue's figure is 100:
    RAYTUNE_OPT_LEAK_TRIALS=100 pytest -m slow tests/test_leaks.py -s
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

import pytest

from raytune_opt.spec import load_spec
from raytune_opt.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"
N = int(os.environ.get("RAYTUNE_OPT_LEAK_TRIALS", "3"))
# Ray Train's per-cluster singletons, shared by every run: (class name, actor name).
RAY_SHARED = {("_AutoscalingCoordinatorActor", "AutoscalingCoordinator")}
SETTLE_S = 60  # Train's PlacementGroupCleaner polls every second; actors take a few to exit


def _live() -> tuple[dict, dict]:
    """({pg id: state} not REMOVED, {actor id: (class, name, state)} not DEAD) on the cluster."""
    from ray.util.state import list_actors, list_placement_groups

    pgs = list_placement_groups(filters=[("state", "!=", "REMOVED")], limit=10_000, raise_on_missing_output=False)
    actors = list_actors(filters=[("state", "!=", "DEAD")], limit=10_000, raise_on_missing_output=False)
    return ({p.placement_group_id: p.state for p in pgs},
            {a.actor_id: (a.class_name, a.name, a.state) for a in actors if (a.class_name, a.name) not in RAY_SHARED})


def _lrs(n: int) -> list[float]:
    """Every third learning rate trains, the others barely move (ASHA stops them at rung 1)."""
    return [3.0e-3 * (1 + i / (10 * n)) if i % 3 == 0 else 1.0e-5 * (1 + i / n) for i in range(n)]


@pytest.mark.slow
@pytest.mark.timeout(max(300, 45 * N))  # a hang fails fast; ~30 s a trial here
@pytest.mark.parametrize("warm", [pytest.param(False, marks=pytest.mark.exhaustive), True], ids=["per-trial", "warm"])
def test_asha_stopped_two_worker_trials_leave_no_placement_groups_or_actors(local_ray, tmp_path, warm):
    """Per trial: a Train run each; warm (resources.warm_workers): one slot serves every trial,
    ASHA's stops end assignments in it, and the sweep's end retires the slot and its pool."""
    assert N >= 2, f"RAYTUNE_OPT_LEAK_TRIALS must be at least 2, but got {N=}"
    grid = ", ".join(f"{lr:.6e}" for lr in _lrs(N))
    spec = load_spec(DIGITS, [
        "search={algorithm: grid, num_samples: 1}", f"space={{train.optimizer.lr: {{grid: [{grid}]}}}}",
        "scheduler={name: asha, grace_period: 1, reduction_factor: 3}",  # stops below the 67th percentile
        "train.epochs=3", "train.limit_batches=4", "train.lr_schedule.warmup_epochs=0",
        # One trial at a time: every stopped trial then has a successor waiting for its actor (with
        # reuse, Tune handed it over and the successor failed after 120 s: see sweep.run_sweep).
        "resources.num_workers=2", "resources.cpus_per_worker=1", "resources.max_concurrent_trials=1",
        f"resources.warm_workers={str(warm).lower()}", "promote.enabled=false", "name=leaks"])
    pgs_before, actors_before = _live()

    peak = {"pgs": 0, "actors": 0}
    done = threading.Event()

    def sample() -> None:  # how many were alive at once: a leak grows with every trial
        while not done.wait(5):
            try:
                pgs, actors = _live()
            except Exception:  # the state API may time out under load; the next sample counts
                continue
            peak["pgs"] = max(peak["pgs"], len(pgs.keys() - pgs_before.keys()))
            peak["actors"] = max(peak["actors"], len(actors.keys() - actors_before.keys()))

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    try:
        outcome = run_sweep(spec, storage=str(tmp_path), verbose=0)
    finally:
        done.set()
        sampler.join()
    wall = time.monotonic() - started

    statuses = collections.Counter(r.status for r in outcome.rows)
    assert outcome.exit_code == 0 and len(outcome.rows) == N, outcome.rows
    assert statuses["ok"] + statuses["stopped"] == N, [(r.trial_id, r.status, r.stop_reason) for r in outcome.rows]
    assert statuses["stopped"] >= 1, f"ASHA stopped no trial, so the test proved nothing: {statuses}"
    assert statuses["ok"] >= 1, statuses
    for r in outcome.rows:
        assert r.checkpoint and (Path(r.checkpoint) / "best.pt").is_file(), r
        if r.status == "ok":  # its last report says whether the DDP replicas stayed identical
            assert r.history[-1].get("rank_param_max_diff") == 0.0, r.history[-1]

    deadline = time.monotonic() + SETTLE_S
    while True:
        pgs, actors = _live()
        left_pgs = {k: v for k, v in pgs.items() if k not in pgs_before}
        left_actors = {k: v for k, v in actors.items() if k not in actors_before}
        if not (left_pgs or left_actors) or time.monotonic() > deadline:
            break
        time.sleep(2)
    settle = time.monotonic() - started - wall
    print(f"\nleak test: {N} trials ({dict(statuses)}) in {wall:.0f} s; peak alive at once: {peak['pgs']} placement "
          f"groups, {peak['actors']} actors; left after {settle:.0f} s: {len(left_pgs)} placement groups, "
          f"{len(left_actors)} actors {collections.Counter(c for c, _, _ in left_actors.values())}")
    assert not left_pgs, f"placement groups left {SETTLE_S} s after the sweep: {left_pgs}"
    assert not left_actors, f"actors left {SETTLE_S} s after the sweep: {sorted(left_actors.values())}"
