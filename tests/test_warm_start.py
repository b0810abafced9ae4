"""search.warm_start and search.enqueue: earlier trials told to the searcher, configs trained first.

The earlier experiments here are written with the package's own writers (spec.yaml,
results.csv, history/), so most tests need no sweep; one real sweep is killed and resumed.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from raytune_opt import objectives, searchers, warm_start
from raytune_opt.errors import UsageError
from raytune_opt.experiment import SPEC
from raytune_opt.results import TrialRow, write_results
from raytune_opt.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"
CONDITIONAL = ROOT / "search_spaces" / "digits_conditional.yaml"
LR = "space={train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}, model.width: {choice: [16, 32, 48]}}"


def _earlier(where: Path, spec, configs: list[dict], value, *, stopped=()) -> Path:
    """An earlier experiment of ``spec`` whose trial i had ``configs[i]`` and, at its last of 3
    epochs, ``value(config)`` (the first objective); trials in ``stopped`` stopped at epoch 1."""
    where.mkdir(parents=True)
    (where / SPEC).write_text(spec.to_yaml())
    (metric, mode), *more = objectives.objectives(spec.data["search"])
    rows = []
    for i, config in enumerate(configs):
        v = value(config)
        epochs = 1 if i in stopped else 3
        history = [{"epoch": e, metric: v - 0.1 * (3 - e), "latency_ms": 1.0 + 0.1 * i} for e in range(1, epochs + 1)]
        rows.append(TrialRow(f"t{i:02d}", "stopped" if i in stopped else "ok", "", config, epochs, 1.0, 0.5,
                             best=history[-1], last=history[-1], history=history))
    write_results(where, rows, [p.key for p in spec.space.params], metric, mode, spec.sha256(), more=tuple(more))
    return where


def _configs(spec, n: int, seed: int = 0) -> list[dict]:
    """``n`` configs of the spec's space: the searcher's own proposals (random search)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        config: dict = {}
        for p in spec.space.params:
            if not spec.space.is_active(p.key, config):
                continue
            kind, a = p.domain.kind, p.domain.args
            if p.domain.categorical:
                config[p.key] = rng.choice(list(a))
            elif kind == "loguniform":
                config[p.key] = math.exp(rng.uniform(math.log(a[0]), math.log(a[1])))
            elif p.domain.integer:
                config[p.key] = rng.randrange(a[0], a[1])
            else:
                config[p.key] = rng.uniform(a[0], a[1])
        out.append(config)
    return out


def _score(config: dict) -> float:
    """Higher near lr = 1e-3 (what the earlier sweep found)."""
    return 1.0 - abs(math.log10(config.get("train.optimizer.lr", 1e-3)) + 3) / 3


def _tune_would(searcher, param_space: dict) -> None:
    """What Tune does with a searcher before its first proposal."""
    searcher.set_search_properties(None, None, param_space)


# Every searcher that learns from results (warm_start.learns), over a Tune space and a conditional one.
LEARNING = {
    "optuna/tpe": (DIGITS, ["search.algorithm=optuna", "search.sampler=tpe", LR]),
    "optuna/gp": (DIGITS, ["search.algorithm=optuna", "search.sampler=gp", LR]),
    "optuna/tpe conditional": (CONDITIONAL, ["search.algorithm=optuna", "search.sampler=tpe"]),
    "hyperopt": (DIGITS, ["search.algorithm=hyperopt", LR]),
    "hyperopt conditional": (CONDITIONAL, ["search.algorithm=hyperopt"]),
    "optuna/nsga2 two objectives": (DIGITS, ["search.algorithm=optuna", "search.sampler=nsga2", LR,
                                            "search.metric=[val_accuracy, latency_ms]", "search.mode=[max, min]",
                                            "scheduler={name: fifo}"]),
}


def test_the_conformance_test_covers_every_searcher_that_learns():
    from raytune_opt import registry

    covered = {name.split()[0] for name in LEARNING}
    learning = set()
    for algo in registry.SEARCHERS:
        if registry.SEARCHERS[algo].meta["caps"] == "sampler":
            learning |= {f"{algo}/{s}" for s in registry.OPTUNA_SAMPLERS
                         if warm_start.learns({"algorithm": algo, "sampler": s})}
        elif warm_start.learns({"algorithm": algo, "sampler": "tpe"}) and not registry.SEARCHERS[algo].meta.get(
                "scheduler"):  # bohb pairs with its own scheduler, tested with it
            learning.add(algo)
    # Samplers differ only in what they take (the same OptunaSearchForTrials tells the study).
    assert {k for k in learning if not k.startswith("optuna/")} <= covered, learning - covered
    assert any(k.startswith("optuna/") for k in covered)


@pytest.mark.parametrize("name", sorted(LEARNING))
def test_every_searcher_that_learns_is_told_the_earlier_trials_and_proposes_the_enqueued_config_first(
        tmp_path, name):
    path, overrides = LEARNING[name]
    spec = load_spec(path, overrides + ["name=before"])
    configs = _configs(spec, 8)
    earlier = _earlier(tmp_path / "before", spec, configs, _score, stopped={1, 5})
    first = {k: v for k, v in _configs(spec, 1, seed=99)[0].items()}
    spec = load_spec(path, overrides + [f"search.warm_start=[{earlier}]", f"search.enqueue=[{json.dumps(first)}]"])
    warm = warm_start.load(spec)
    assert warm.lines == [f"warm start: 8 of 8 trial(s) of {earlier} kept"]
    assert [t.state for t in warm.told].count("pruned") == 2
    searcher, param_space = searchers.build_searcher(spec, told=warm.told)
    _tune_would(searcher, param_space)
    inner = getattr(searcher, "searcher", searcher)  # behind the concurrency limiter
    if name.startswith("optuna"):
        from optuna.trial import TrialState

        trials = inner._ot_study.trials
        told = [t for t in trials if t.state != TrialState.WAITING]
        assert [t.state for t in told].count(TrialState.PRUNED) == 2 and len(told) == 8, trials
        assert all(t.params == w.config for t, w in zip(told, warm.told)), (told, warm.told)
        if "two objectives" not in name:  # Optuna keeps no intermediate values of several objectives
            assert told[1].intermediate_values == {1: pytest.approx(_score(configs[1]) - 0.2)}
    else:
        done = [t for t in inner._hpopt_trials.trials if t["result"].get("status") == "ok"]
        assert len(done) == 8
        assert sorted(t["result"]["loss"] for t in done) == pytest.approx(
            sorted(-(_score(c) - (0.2 if i in (1, 5) else 0.0)) for i, c in enumerate(configs)))
    proposed = searchers.flatten_config(searcher.suggest("first"), spec.space)
    assert proposed == first
    second = searchers.flatten_config(searcher.suggest("second"), spec.space)
    assert second != first and second not in configs


N_PROPOSALS = 16


@pytest.mark.parametrize("algorithm", ["optuna", "hyperopt"])
def test_told_trials_move_the_proposals_toward_what_the_earlier_sweep_found(tmp_path, algorithm):
    """30 earlier trials say lr near 1e-3 is best: the warm searcher's next 16 proposals lie
    nearer it than a cold one's (same seed), whose first proposals are random."""
    overrides = [f"search.algorithm={algorithm}", "space={train.optimizer.lr: {loguniform: [1.0e-5, 1.0e-1]}}"]
    spec = load_spec(DIGITS, overrides + ["name=before"])
    earlier = _earlier(tmp_path / "before", spec, _configs(spec, 30, seed=1), _score)
    distances = {}
    for kind in ("cold", "warm"):
        extra = [f"search.warm_start=[{earlier}]"] if kind == "warm" else []
        spec = load_spec(DIGITS, overrides + extra)
        warm = warm_start.load(spec)
        searcher, param_space = searchers.build_searcher(spec, told=warm.told if warm else None)
        _tune_would(searcher, param_space)
        lrs = []
        for i in range(N_PROPOSALS):
            config = searcher.suggest(f"t{i}")
            lrs.append(searchers.flatten_config(config, spec.space)["train.optimizer.lr"])
            searcher.on_trial_complete(f"t{i}", {"val_accuracy": _score({"train.optimizer.lr": lrs[-1]}),
                                                 "epoch": 3, "stop_reason": "completed"})
        distances[kind] = statistics.median(abs(math.log10(lr) + 3) for lr in lrs)
    # Seeded: the same proposals every run. Measured: optuna 0.19 vs 0.72 decades, hyperopt
    # (whose TPE spreads its proposals more) 0.63 vs 0.90.
    assert distances["warm"] < {"optuna": 0.5, "hyperopt": 0.8}[algorithm] * distances["cold"], distances


def test_trials_outside_todays_space_are_left_out_with_one_line_saying_why(tmp_path):
    wide = ["space={train.optimizer.lr: {loguniform: [1.0e-5, 1.0e-1]}, model.dropout: {uniform: [0.0, 0.5]}, "
            "model.width: {choice: [16, 32, 48]}}", "search.algorithm=optuna"]
    spec = load_spec(DIGITS, wide + ["name=before"])
    configs = [{"train.optimizer.lr": lr, "model.dropout": d, "model.width": w}
               for lr, d, w in [(1e-3, 0.1, 32), (2e-5, 0.1, 32), (1e-3, 0.3, 16), (3e-3, 0.1, 48), (1e-3, 0.1, 64)]]
    earlier = _earlier(tmp_path / "before", spec, configs, _score)
    # Today: a narrower lr, dropout fixed at 0.1 (the model's spec value), depth searched anew
    # (the earlier sweep held it at the spec's 2), width 64 gone from the choice.
    today = load_spec(DIGITS, ["search.algorithm=optuna", "model.dropout=0.1", f"search.warm_start=[{earlier}]",
                               "space={train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}, model.depth: {choice: "
                               "[1, 2, 3]}, model.width: {choice: [16, 32, 48]}}"])
    warm = warm_start.load(today)
    assert [t.config for t in warm.told] == [{"train.optimizer.lr": 1e-3, "model.depth": 2, "model.width": 32},
                                             {"train.optimizer.lr": 3e-3, "model.depth": 2, "model.width": 48}]
    assert warm.lines == [f"warm start: 2 of 5 trial(s) of {earlier} kept (left out: 1 outside today's domain "
                          "(train.optimizer.lr); 1 with a key no longer searched at another value (model.dropout); "
                          "1 outside today's domain (model.width))"]


def test_random_search_says_it_ignores_the_earlier_trials_and_is_not_told(tmp_path, monkeypatch):
    spec = load_spec(DIGITS, [LR, "name=before"])
    earlier = _earlier(tmp_path / "before", spec, _configs(spec, 3), _score)
    today = load_spec(DIGITS, [LR, "search.algorithm=random", f"search.warm_start=[{earlier}]"])
    warm = warm_start.load(today)
    assert warm.lines[-1] == ("warm start: random does not learn from results; the 3 earlier trial(s) are not used "
                              "(search.algorithm: optuna or hyperopt would use them)")
    searcher, _ = searchers.build_searcher(today, told=warm.told)
    assert not hasattr(searcher, "warm_start")


@pytest.mark.parametrize("case,fragment", [
    ("missing", "not a raytune-opt experiment (no spec.yaml at"),
    ("itself", "that is this sweep's own experiment; name an earlier one"),
    ("metric", "that sweep optimized val_loss (min), this one val_accuracy (max); warm-start only from sweeps"),
])
def test_an_earlier_experiment_that_cannot_be_used_is_refused_in_one_line(tmp_path, case, fragment):
    spec = load_spec(DIGITS, [LR, "name=before"] + (["search.metric=val_loss", "search.mode=min"]
                                                     if case == "metric" else []))
    earlier = _earlier(tmp_path / "before", spec, _configs(spec, 2), _score)
    target = tmp_path / "nowhere" if case == "missing" else earlier
    today = load_spec(DIGITS, [LR, f"search.warm_start=[{target}]"])
    with pytest.raises(UsageError) as err:
        warm_start.load(today, this_uri=str(earlier) if case == "itself" else None)
    assert f"search.warm_start {target}: " in str(err.value) and fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_the_report_marks_the_warm_start_trials_and_starts_the_history_from_their_best(tmp_path):
    from raytune_opt.report import data, page

    spec = load_spec(DIGITS, [LR, "name=before"])
    earlier = _earlier(tmp_path / "before", spec, _configs(spec, 4), _score)
    today = load_spec(DIGITS, [LR, "name=now", f"search.warm_start=[{earlier}]",
                               "search.enqueue=[{train.optimizer.lr: 0.002, model.width: 16}]"])
    exp_dir = _earlier(tmp_path / "now", today, [{"train.optimizer.lr": 0.002, "model.width": 16}],
                       lambda c: 0.5)
    warm_start.write(exp_dir, warm_start.load(today))
    exp = data.load(exp_dir)
    assert [t.status for t in exp.warm] == ["warm start"] * 4
    html = page.render(exp, {}, None)
    best = max(_score(c) for c in _configs(spec, 4))
    assert "4 earlier trial(s) of before told to the searcher, not trained" in html
    assert f"warm start: the best of 4 earlier trial(s): val_accuracy {page.svg.fmt(best)}" in html
    assert html.count('class="st-warm-start"') == 4
    assert "enqueued (search.enqueue); " in html


@pytest.mark.slow
def test_a_warm_started_sweep_killed_mid_way_resumes_with_its_told_trials_told_once(local_ray, tmp_path):
    from tests.test_resume import EPOCHS, N, _searcher_state, kill_at

    from raytune_opt.sweep import resume_sweep

    base = [LR, "search.algorithm=optuna", f"train.epochs={EPOCHS}", "train.limit_batches=16",
            "scheduler={name: fifo}", "resources.max_concurrent_trials=2", "promote.enabled=false",
            "tracking.tensorboard=false"]
    spec = load_spec(DIGITS, base + ["name=before"])
    configs = _configs(spec, 6)
    earlier = _earlier(tmp_path / "before", spec, configs, _score, stopped={2})
    address = local_ray.get_runtime_context().gcs_address
    run = [sys.executable, "-m", "raytune_opt", "run", str(DIGITS), *base, f"search.num_samples={N}",
           f"search.warm_start=[{earlier}]", "search.enqueue=[{train.optimizer.lr: 0.002, model.width: 16}]",
           "--storage", str(tmp_path), "--address", address]
    exp, _ = kill_at(run, tmp_path, ("mid",), tmp_path / "driver.log", name="now")
    assert "warm start: 6 of 6 trial(s)" in (tmp_path / "driver.log").read_text()
    outcome = resume_sweep(exp, address=address)
    assert outcome.exit_code == 0
    with open(exp / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N  # the told trials were not trained: N new ones, the enqueued one among them
    trained = [json.loads(r["config"]) for r in rows]
    assert {"train.optimizer.lr": 0.002, "model.width": 16} in trained
    assert not any(c in configs for c in trained)
    from optuna.trial import TrialState

    study = _searcher_state(exp)["_ot_study"]
    told = [t for t in study.trials if t.params in configs]
    assert len(told) == 6 and [t.state for t in told].count(TrialState.PRUNED) == 1, study.trials  # once each
    assert len(study.trials) == 6 + N
    assert json.loads((exp / warm_start.WARM_START).read_text())["sources"] == [str(earlier)]


def test_bohb_trains_a_complete_enqueued_config_first():
    overrides = ["search.algorithm=bohb", "scheduler={name: hyperband_bohb}", LR]
    first = {"train.optimizer.lr": 0.002, "model.width": 16}
    spec = load_spec(DIGITS, overrides + [f"search.enqueue=[{json.dumps(first)}]"])
    searcher, param_space = searchers.build_searcher(spec)
    _tune_would(searcher, param_space)
    assert searchers.flatten_config(searcher.suggest("first"), spec.space) == first
    assert searchers.flatten_config(searcher.suggest("second"), spec.space) != first
