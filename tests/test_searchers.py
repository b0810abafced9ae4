"""Every searcher adapter proposes configs from the shared space translation; conditional
parameters appear exactly when active; the same seed proposes the same configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_opt import searchers
from raytune_opt.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
CONDITIONAL = ROOT / "search_spaces" / "digits_conditional.yaml"
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"


def _propose(spec, n: int) -> list[dict]:
    alg, param_space = searchers.build_searcher(spec)
    if param_space:
        alg.set_search_properties(spec.data["search"]["metric"], spec.data["search"]["mode"], param_space)
    alg = getattr(alg, "searcher", alg)  # proposing n at once: past resources.max_concurrent_trials' limiter
    return [searchers.flatten_config(alg.suggest(f"t{i}"), spec.space) for i in range(n)]


def test_the_concurrency_limiter_keeps_its_running_trials_across_save_and_restore(tmp_path):
    from raytune_opt.spec import load_spec

    spec = load_spec(DIGITS, ["resources.max_concurrent_trials=2"])
    alg, param_space = searchers.build_searcher(spec)
    alg.set_search_properties("val_accuracy", "max", param_space)
    assert alg.suggest("a") and alg.suggest("b") and alg.suggest("c") is None  # two at a time
    alg.save(str(tmp_path / "state.pkl"))
    again, _ = searchers.build_searcher(spec)
    again.set_search_properties("val_accuracy", "max", param_space)
    again.restore(str(tmp_path / "state.pkl"))
    assert again.live_trials == {"a", "b"}
    # A trial that was running when the driver died completes after the resume: the searcher
    # hears of it (Ray's own limiter forgot "a" and dropped its completion).
    again.on_trial_result("a", {"val_accuracy": 0.5, "training_iteration": 1, "epoch": 1})
    again.on_trial_complete("a", {"val_accuracy": 0.5, "training_iteration": 1, "epoch": 1})
    assert again.live_trials == {"b"}
    study = again.searcher._ot_study
    assert [t.value for t in study.trials if t.state.name == "COMPLETE"] == [0.5]


CONDITIONAL_SEARCHERS = [["search.algorithm=optuna", "search.sampler=tpe"],
                         ["search.algorithm=optuna", "search.sampler=random"],
                         ["search.algorithm=hyperopt"]]


@pytest.mark.parametrize("overrides", CONDITIONAL_SEARCHERS, ids=lambda o: o[-1])
def test_conditional_parameters_appear_exactly_when_active(overrides):
    spec = load_spec(CONDITIONAL, overrides)
    configs = _propose(spec, 30)
    seen = set()
    for c in configs:
        opt = c["train.optimizer.name"]
        seen.add(opt)
        assert ("train.optimizer.momentum" in c) == (opt == "sgd"), c
        assert ("train.optimizer.nesterov" in c) == (opt == "sgd"), c
        assert ("train.optimizer.beta1" in c) == (opt in ("adam", "adamw")), c
        assert ("model.dropout" in c) == (c["model.name"] == "mlp"), c
        if "train.optimizer.momentum" in c:
            assert 0.8 <= c["train.optimizer.momentum"] <= 0.99
    assert seen == {"sgd", "adam", "adamw"}


@pytest.mark.parametrize("overrides", CONDITIONAL_SEARCHERS, ids=lambda o: o[-1])
def test_same_seed_same_configs(overrides):
    a = _propose(load_spec(CONDITIONAL, overrides + ["search.seed=7"]), 8)
    b = _propose(load_spec(CONDITIONAL, overrides + ["search.seed=7"]), 8)
    c = _propose(load_spec(CONDITIONAL, overrides + ["search.seed=8"]), 8)
    assert a == b and a != c


@pytest.mark.parametrize("overrides", [["search.algorithm=optuna", f"search.sampler={s}"] for s in
                                       ("tpe", "gp", "random")] + [["search.algorithm=hyperopt"]],
                         ids=lambda o: o[-1])
def test_unconditional_space_goes_through_rays_own_conversion(overrides):
    spec = load_spec(DIGITS, overrides)
    for c in _propose(spec, 5):
        assert set(c) == set(spec.space.by_key)
        assert 3e-4 <= c["train.optimizer.lr"] <= 3e-2
        assert c["model.width"] in (16, 32, 48) and isinstance(c["model.width"], int)


def test_cmaes_takes_a_numeric_space():
    spec = load_spec(DIGITS, ["search.algorithm=optuna", "search.sampler=cmaes",
                              "space={train.optimizer.lr: {loguniform: [0.001, 0.1]}, model.dropout: {uniform: [0, 0.3]}}"])
    configs = _propose(spec, 4)
    assert all(0.001 <= c["train.optimizer.lr"] <= 0.1 for c in configs)


def test_hyperopt_refuses_a_parameter_with_two_parents(tmp_path):
    from raytune_opt.errors import SpecError

    path = tmp_path / "s.yaml"
    path.write_text("search: {algorithm: hyperopt}\nspace:\n  model.name: {choice: [mlp, small_cnn]}\n"
                    "  train.optimizer.name: {choice: [sgd, adam]}\n"
                    "  model.dropout: {uniform: [0, 0.5], when: {model.name: mlp, train.optimizer.name: sgd}}\n")
    with pytest.raises(SpecError, match="depend on one choice"):
        load_spec(path)
    path.write_text(path.read_text().replace("hyperopt", "optuna"))
    assert load_spec(path).space.is_conditional
