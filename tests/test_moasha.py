"""MO-ASHA's rung decision on hand-made results (no Ray), and its Ray scheduler's state across
a pickle (what a resumed sweep gets back) and save/restore. The real sweeps are in
tests/test_schedulers.py (conformance) and tests/test_resume.py (kill -9)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from raytune_opt import moasha as mo

OBJS = [("val_accuracy", "max"), ("latency_ms", "min")]


def _p(acc: float, lat: float, feasible: bool = True) -> mo.Point:
    return mo.point_of({"val_accuracy": acc, "latency_ms": lat}, OBJS, None) if feasible \
        else mo.Point([-acc, lat], False)


def test_rungs_are_asha_s():
    assert mo.milestones(1, 4, 2) == [1, 2, 4]
    assert mo.milestones(1, 8, 3) == [1, 3]  # as Ray's ASHA: 1, 3 (9 > 8)
    assert mo.milestones(2, 8, 2) == [2, 4, 8]


def test_a_dominated_trial_is_stopped_and_a_front_trial_promoted():
    rungs = mo.Rungs([1, 2, 4], 2)
    assert rungs.on_result("a", 1, _p(0.90, 1.0)) == mo.CONTINUE  # alone at the rung
    assert rungs.on_result("b", 1, _p(0.80, 2.0)) == mo.STOP  # dominated by a: 2nd of 2, keep 1
    # c is on the front with a (more accurate, slower) and first in it (best first objective).
    assert rungs.on_result("c", 1, _p(0.95, 3.0)) == mo.CONTINUE  # 1st of 3, keep 2
    assert "b" in rungs.stopped and "c" not in rungs.stopped
    # A later rung ranks only the trials that reached it.
    assert rungs.on_result("a", 2, _p(0.92, 1.0)) == mo.CONTINUE
    assert rungs.on_result("c", 2, _p(0.91, 3.0)) == mo.STOP  # now dominated by a
    assert rungs.on_result("b", 3, _p(0.99, 0.1)) == mo.STOP  # stopped stays stopped (a resumed trial)


def test_an_infeasible_trial_ranks_after_every_feasible_one():
    rungs = mo.Rungs([1, 2], 2)
    assert rungs.on_result("a", 1, _p(0.50, 5.0)) == mo.CONTINUE
    # Better in both objectives than a, but it breaks a constraint: last.
    assert rungs.on_result("x", 1, _p(0.99, 0.1, feasible=False)) == mo.STOP
    assert mo.rank(rungs.recorded[1]) == ["a", "x"]
    # Missing objectives (a diverged trial's NaN) rank after the infeasible ones.
    rung = {"nan": mo.point_of({"val_accuracy": math.nan, "latency_ms": 1.0}, OBJS, None),
            "inf": _p(0.9, 1.0, feasible=False), "ok": _p(0.1, 9.0)}
    assert mo.rank(rung) == ["ok", "inf", "nan"]


def test_constraints_and_the_trial_s_own_word_make_a_point_infeasible():
    constraints = {"latency_ms": {"max": 2.0}}
    assert mo.point_of({"val_accuracy": 0.9, "latency_ms": 1.0}, OBJS, constraints) == mo.Point([-0.9, 1.0], True)
    assert not mo.point_of({"val_accuracy": 0.9, "latency_ms": 3.0}, OBJS, constraints).feasible
    assert not mo.point_of({"val_accuracy": 0.9, "latency_ms": 1.0, "stop_reason": "infeasible: params 2e6 > max 1e6"},
                           OBJS, None).feasible


def test_ties_within_a_front_are_broken_by_the_epsilon_net():
    # One front (lower better in both): the best first objective first, then farthest-first.
    points = [(0.45, 0.55), (0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    assert mo.nondominated_order(points) == [1, 3, 2, 0]
    # Identical points: the one recorded first ranks first, so a newcomer loses the tie.
    rungs = mo.Rungs([1], 2)
    assert rungs.on_result("first", 1, _p(0.9, 1.0)) == mo.CONTINUE
    assert rungs.on_result("twin", 1, _p(0.9, 1.0)) == mo.STOP
    # Fronts before epsilon-net order: a dominated point never jumps a front.
    assert mo.nondominated_order([(1.0, 1.0), (0.0, 2.0), (2.0, 0.0), (0.5, 0.5)]) == [1, 2, 3, 0]


def test_the_state_survives_a_round_trip():
    rungs = mo.Rungs([1, 3], 3)
    rungs.on_result("a", 1, _p(0.9, 1.0))
    rungs.on_result("b", 1, _p(0.1, 9.0))
    back = mo.Rungs.from_dict(pickle.loads(pickle.dumps(rungs.to_dict())))
    assert back == rungs and back.on_result("b", 2, _p(1.0, 0.0)) == mo.STOP


DIGITS = Path(__file__).resolve().parents[1] / "search_spaces" / "digits_cnn.yaml"


def _scheduler(tmp_path):
    from raytune_opt import schedulers
    from raytune_opt.spec import load_spec

    spec = load_spec(DIGITS, ["scheduler={name: moasha, grace_period: 1, reduction_factor: 2}",
                              "search.metric=[val_accuracy, latency_ms]", "search.mode=[max, min]",
                              "train.epochs=4"])
    return schedulers.build_scheduler(spec, {"exp_dir": str(tmp_path), "remote": False, "endpoint_url": None})


def test_the_ray_scheduler_keeps_its_rungs_for_a_resumed_sweep(tmp_path):
    from ray import cloudpickle
    from ray.tune.schedulers import TrialScheduler

    live = _scheduler(tmp_path)
    copy = cloudpickle.dumps(live)  # what tuner.pkl holds: the scheduler before any trial
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    assert live.on_trial_result(None, a, {"epoch": 1, "val_accuracy": 0.9, "latency_ms": 1.0}) == TrialScheduler.CONTINUE
    assert live.on_trial_result(None, b, {"epoch": 1, "val_accuracy": 0.5, "latency_ms": 2.0}) == TrialScheduler.STOP
    assert live.on_trial_result(None, a, {"epoch": 4, "val_accuracy": 0.9, "latency_ms": 1.0}) == TrialScheduler.STOP
    # The resumed sweep's scheduler (from tuner.pkl) reads the rungs the killed one wrote.
    resumed = pickle.loads(copy)
    resumed.on_trial_add(None, a)
    assert resumed._rungs == live._rungs
    assert resumed.on_trial_result(None, b, {"epoch": 2, "val_accuracy": 0.99, "latency_ms": 0.1}) \
        == TrialScheduler.STOP  # stopped before the kill: stays stopped
    # Tune's save/restore interface.
    other = _scheduler(tmp_path / "other")
    live.save(str(tmp_path / "ckpt.json"))
    other.restore(str(tmp_path / "ckpt.json"))
    assert other._rungs == live._rungs


def test_a_new_sweep_does_not_read_an_old_state_file(tmp_path):
    from raytune_opt import schedulers

    (tmp_path / schedulers.MOASHA_STATE).write_text('{"milestones": [1], "reduction_factor": 2, '
                                                     '"recorded": {"1": {}}, "stopped": ["a"]}')
    fresh = _scheduler(tmp_path)
    fresh.on_trial_add(None, SimpleNamespace(trial_id="a"))
    assert not fresh._rungs.stopped


def test_moasha_is_refused_with_one_objective_and_accepted_with_several():
    from raytune_opt.errors import SpecError
    from raytune_opt.spec import load_spec

    with pytest.raises(SpecError) as err:
        load_spec(DIGITS, ["scheduler={name: moasha}"])
    assert "scheduler.name: moasha ranks trials by several objectives, and search.metric names one (got " \
           "val_accuracy); use scheduler.name: asha" in str(err.value)
    load_spec(DIGITS, ["scheduler={name: moasha}", "search.metric=[val_accuracy, latency_ms]", "search.mode=[max, min]"])
