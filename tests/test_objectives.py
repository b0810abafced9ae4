"""Several objectives: parsing, Pareto dominance, constraints (raytune_opt/objectives.py), and
what Optuna's samplers are told of them (searchers' OptunaSearchForTrials)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from raytune_opt import objectives, results, searchers
from raytune_opt.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
PARETO = ROOT / "search_spaces" / "digits_pareto.yaml"
OBJS = [("val_accuracy", "max"), ("latency_ms", "min")]


def test_objectives_of_one_metric_or_a_list():
    assert objectives.objectives({"metric": "val_loss", "mode": "min"}) == [("val_loss", "min")]
    two = {"metric": ["val_accuracy", "params"], "mode": ["max", "min"]}
    assert objectives.objectives(two) == [("val_accuracy", "max"), ("params", "min")]
    assert objectives.primary(two) == ("val_accuracy", "max") and objectives.is_multi(two)


def test_the_front_holds_exactly_the_points_no_other_dominates():
    points = {"a": {"val_accuracy": 0.99, "latency_ms": 2.0}, "b": {"val_accuracy": 0.95, "latency_ms": 0.5},
              "c": {"val_accuracy": 0.94, "latency_ms": 0.6},  # worse than b in both
              "d": {"val_accuracy": 0.99, "latency_ms": 3.0},  # worse than a in one, equal in the other
              "e": {"val_accuracy": 0.97, "latency_ms": 1.0}, "f": {"val_accuracy": math.nan, "latency_ms": 0.1}}
    assert objectives.dominates(points["b"], points["c"], OBJS) and not objectives.dominates(points["a"], points["b"], OBJS)
    assert not objectives.dominates(points["a"], points["a"], OBJS)  # not better in any
    assert sorted(objectives.pareto_front(points.items(), OBJS)) == ["a", "b", "e"]


def test_violations_and_optunas_constraint_values():
    bounds = {"params": {"max": 1000}, "val_accuracy": {"min": 0.9}, "latency_ms": {"min": 0.1, "max": 2.0}}
    values = {"params": 1500, "val_accuracy": 0.95, "latency_ms": 2.5}
    assert objectives.violations(values, bounds) == ["params 1500 > max 1000", "latency_ms 2.5 > max 2"]
    assert objectives.violations(values, bounds, only=("params",)) == ["params 1500 > max 1000"]
    got = objectives.constraint_values(values, bounds)
    assert got == pytest.approx({"params.max": 0.5, "val_accuracy.min": (0.9 - 0.95) / 0.9,
                                 "latency_ms.max": 0.25, "latency_ms.min": (0.1 - 2.5) / 0.1})  # <= 0: holds
    assert objectives.constraint_values({}, {"params": {"max": 10}}) == {"params.max": 0.0}  # unknown: not held


def _row(tid, acc, lat, status="ok"):
    return results.TrialRow(tid, status, "completed", {"x": tid}, 2, 1.0, 1.0,
                            best={"val_accuracy": acc, "latency_ms": lat}, checkpoint=f"/x/{tid}/checkpoint_000002")


def test_results_write_the_front_and_the_best_of_every_objective(tmp_path):
    import csv
    import json

    rows = [_row("t1", 0.99, 2.0), _row("t2", 0.95, 0.5), _row("t3", 0.94, 0.6),
            _row("t4", 0.999, 0.1, status="infeasible")]  # the best of both, but it broke a bound
    best = results.write_results(tmp_path, rows, ["x"], "val_accuracy", "max", "sha", more=(("latency_ms", "min"),))
    assert best.trial_id == "t1"
    with open(tmp_path / "pareto.csv") as f:
        front = list(csv.DictReader(f))
    assert [r["trial_id"] for r in front] == ["t1", "t2"]  # best first by the first objective
    assert front[0]["checkpoint"] == "/x/t1/checkpoint_000002/best.pt"
    record = json.loads((tmp_path / "best.json").read_text())
    assert record["pareto"] == ["t1", "t2"]
    assert record["objectives"] == [{"metric": "val_accuracy", "mode": "max", "trial_id": "t1", "value": 0.99},
                                    {"metric": "latency_ms", "mode": "min", "trial_id": "t2", "value": 0.5}]


def test_optuna_is_told_the_constraints_and_an_untrained_infeasible_trial_ranks_by_them():
    from optuna.trial import TrialState

    spec = load_spec(PARETO)
    alg, param_space = searchers.build_searcher(spec)
    alg.set_search_properties(None, None, param_space)  # what Tune does with the Tuner's param_space
    inner = alg.searcher  # behind the concurrency limiter
    assert inner.metric == spec.data["search"]["metric"]  # both objectives, not the first alone
    assert alg.suggest("a") and alg.suggest("b")
    alg.on_trial_complete("a", {"val_accuracy": 0.9, "latency_ms": 0.3, "params": 5000.0, "epoch": 2})
    nan = math.nan
    alg.on_trial_complete("b", {"val_accuracy": nan, "latency_ms": nan, "params": 3.0e5, "epoch": 0,
                                "stop_reason": "infeasible: params 3e+05 > max 1e+05"})
    first, second = inner._ot_study.trials
    assert first.state == TrialState.COMPLETE and first.values == [0.9, 0.3]
    assert first.constraints == {"params.max": pytest.approx(-0.95)}  # held
    # Never trained: Optuna ranks it by how far it broke the bound (the values are placeholders).
    assert second.state == TrialState.COMPLETE and second.constraints == {"params.max": pytest.approx(2.0)}
    from optuna.study._constrained_optimization import _get_feasible_trials

    assert _get_feasible_trials(inner._ot_study.trials) == [first]
    assert alg.suggest("c")  # and it goes on proposing


def test_a_trial_the_scheduler_stopped_is_pruned_for_optuna_with_its_epochs_as_steps():
    """As Optuna's own pruners leave it: TPE then ranks it by its last epoch among pruned
    trials, not as a finished trial whose final accuracy was an early epoch's."""
    from optuna.trial import TrialState

    spec = load_spec(ROOT / "search_spaces" / "digits_cnn.yaml")  # Optuna TPE + ASHA
    alg, param_space = searchers.build_searcher(spec)
    alg.set_search_properties(None, None, param_space)
    for tid in ("stopped", "finished"):
        assert alg.suggest(tid)
    for epoch in (1, 2):
        alg.on_trial_result("stopped", {"val_accuracy": 0.5 + 0.1 * epoch, "epoch": epoch, "stop_reason": None,
                                        "training_iteration": epoch + 5})
    alg.on_trial_complete("stopped", {"val_accuracy": 0.7, "epoch": 2, "stop_reason": None})
    alg.on_trial_result("finished", {"val_accuracy": 0.9, "epoch": 1, "stop_reason": "completed"})
    alg.on_trial_complete("finished", {"val_accuracy": 0.9, "epoch": 1, "stop_reason": "completed"})
    stopped, finished = alg.searcher._ot_study.trials
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {1: 0.6, 2: 0.7}
    assert finished.state == TrialState.COMPLETE and finished.value == 0.9


def test_a_trial_moasha_stopped_is_pruned_for_optuna_with_several_objectives():
    from optuna.trial import TrialState

    spec = load_spec(ROOT / "search_spaces" / "digits_cnn.yaml", ["scheduler={name: moasha}",
                     "search.metric=[val_accuracy, latency_ms]", "search.mode=[max, min]"])
    alg, param_space = searchers.build_searcher(spec)
    alg.set_search_properties(None, None, param_space)
    for tid in ("stopped", "finished"):
        assert alg.suggest(tid)
    alg.on_trial_complete("stopped", {"val_accuracy": 0.6, "latency_ms": 1.0, "epoch": 1, "stop_reason": None})
    alg.on_trial_complete("finished", {"val_accuracy": 0.9, "latency_ms": 1.0, "epoch": 4, "stop_reason": "completed"})
    stopped, finished = alg.searcher._ot_study.trials
    assert stopped.state == TrialState.PRUNED  # not an early epoch's values ranked with finished trials'
    assert finished.state == TrialState.COMPLETE and finished.values == [0.9, 1.0]
