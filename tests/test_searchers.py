"""Every searcher adapter proposes configs from the shared space translation; conditional
parameters appear exactly when active; the same seed proposes the same configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_opt import registry, searchers
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


# ---------------------------------------------------------------- conformance over the registry

CANDIDATE_SPACES = {
    "numeric": "space={train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}, model.dropout: {uniform: [0.0, 0.5]}, "
               "model.width: {randint: [8, 64]}}",
    "mixed": "space={train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}, model.width: {choice: [16, 32]}}",
    "grid": "space={train.optimizer.lr: {grid: [0.001, 0.01]}, model.dropout: {grid: [0.0, 0.2]}}",
    "conditional": None,  # digits_conditional.yaml's own space
    # Every kind of domain, plain and under a choice: each searcher that validation lets take
    # one must propose it (conditional random search once accepted a qloguniform it could not).
    # (No normal: no built-in setting is unbounded; a user model's args may be.)
    "every-kind": "space={train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}, model.dropout: {uniform: [0.0, 0.5]}, "
                  "train.optimizer.weight_decay: {qloguniform: [1.0e-4, 1.0e-2, 1.0e-4]}, "
                  "train.loss.label_smoothing: {quniform: [0.0, 0.2, 0.05]}, model.width: {randint: [8, 64]}, "
                  "train.batch_size: {qrandint: [16, 64, 16]}, model.depth: {lograndint: [1, 4]}, "
                  "train.epochs: {choice: [2, 3]}}",
    "every-kind-conditional": "space={train.optimizer.name: {choice: {sgd: {train.optimizer.momentum: "
                              "{uniform: [0.8, 0.99]}, train.optimizer.weight_decay: {loguniform: [1.0e-4, 1.0e-2]}}, "
                              "adam: {train.optimizer.beta1: {quniform: [0.8, 0.95, 0.05]}, model.width: "
                              "{qrandint: [16, 64, 16]}}, adamw: {model.depth: {lograndint: [1, 4]}, "
                              "train.batch_size: {randint: [16, 64]}}}}}",
    "qloguniform-conditional": "space={train.optimizer.name: {choice: {sgd: {train.optimizer.weight_decay: "
                               "{qloguniform: [1.0e-4, 1.0e-2, 1.0e-4]}}, adam: {}}}}",
}


def _inside(domain, value) -> bool:
    if domain.categorical:
        return value in domain.args
    if domain.kind == "normal":
        return isinstance(value, float)
    return domain.args[0] <= value <= domain.args[1] and (not domain.integer or float(value).is_integer())


def _cases() -> list:
    """Every registered searcher (and Optuna sampler) with every candidate space validation lets it take."""
    from raytune_opt.errors import SpecError

    out = []
    for algorithm, sampler in searchers.searcher_keys():
        for name, override in CANDIDATE_SPACES.items():
            overrides = [f"search.algorithm={algorithm}", f"search.sampler={sampler}", "search.num_samples=64"]
            needs = registry.SEARCHERS[algorithm].meta.get("scheduler")  # bohb: hyperband_bohb
            overrides += [f"scheduler={{name: {needs}}}"] if needs else []
            try:
                spec = load_spec(CONDITIONAL if override is None else DIGITS, overrides + ([override] if override else []))
            except SpecError:
                continue  # refused at validation (tests/spec covers the refusals)
            out.append(pytest.param(spec, id=f"{searchers.searcher_key(algorithm, sampler)}-{name}"))
    return out


CASES = _cases()


def test_the_conformance_test_runs_every_registered_searcher():
    ran = {c.id.split("-", 1)[0] for c in CASES}
    assert ran == {searchers.searcher_key(a, s) for a, s in searchers.searcher_keys()}


def _proposer(spec):
    """Build the spec's searcher as a sweep does; ``next_config() -> (trial_id, config)`` and
    the object to report to (a Searcher, or Ray's variant generator, which learns nothing)."""
    from ray.tune.experiment import Experiment
    from ray.tune.search import Searcher

    alg, param_space = searchers.build_searcher(spec)
    if isinstance(alg, Searcher):
        if param_space:
            alg.set_search_properties(spec.data["search"]["metric"], spec.data["search"]["mode"], param_space)
        ids = iter(range(10**6))

        def next_config():
            trial_id = f"t{next(ids)}"
            return trial_id, alg.suggest(trial_id)

        return next_config, alg

    alg.add_configurations([Experiment("conformance", lambda config: None, config=param_space, num_samples=64)])

    def next_variant():
        trial = alg.next_trial()
        return trial.trial_id, trial.config

    return next_variant, alg


@pytest.mark.parametrize("spec", CASES)
def test_every_searcher_proposes_configs_inside_the_space_learns_and_resumes(tmp_path, spec):
    from ray.tune.search import Searcher

    next_config, alg = _proposer(spec)
    metric = spec.data["search"]["metric"]
    for i in range(6):
        trial_id, raw = next_config()
        config = searchers.flatten_config(raw, spec.space)
        active = {p.key for p in spec.space.params if spec.space.is_active(p.key, config)}
        assert set(config) == active, (config, active)
        for key, value in config.items():
            assert _inside(spec.space.by_key[key].domain, value), (key, value)
        alg.on_trial_complete(trial_id, {metric: 0.1 * i, "epoch": 1})
    if not isinstance(alg, Searcher):
        return  # the variant generator's own state is Tune's experiment state (tests/test_resume.py)
    # What a resume relies on: the saved state proposes what the live searcher proposes next.
    alg.save(str(tmp_path / "state.pkl"))
    _, expected = next_config()
    again, param_space = searchers.build_searcher(spec)
    if param_space:
        again.set_search_properties(metric, spec.data["search"]["mode"], param_space)
    again.restore(str(tmp_path / "state.pkl"))
    got = again.suggest("t-next")
    assert searchers.flatten_config(got, spec.space) == searchers.flatten_config(expected, spec.space)


def test_optunas_own_log_lines_stay_out_of_the_terminal(capfd):
    # Issue 30: the live view started with "[I ...] A new study created in memory with name: optuna".
    spec = load_spec(ROOT / "search_spaces" / "digits_cnn.yaml")
    searcher, param_space = searchers.build_searcher(spec)
    searcher.set_search_properties(None, None, param_space)  # as Tune does: the study is created here
    assert searcher.suggest("t1")
    captured = capfd.readouterr()
    assert "A new study created" not in captured.err + captured.out


# ---------------------------------------------------------------- BOHB

BOHB = ["search.algorithm=bohb", "scheduler={name: hyperband_bohb}"]


def _bohb(overrides: list[str]):
    spec = load_spec(DIGITS, [*BOHB, *overrides])
    alg, param_space = searchers.build_searcher(spec)
    alg.set_search_properties(spec.data["search"]["metric"], spec.data["search"]["mode"], param_space)
    return alg


def test_bohb_learns_from_each_budget_and_draws_from_its_own_seed():
    import math

    import numpy as np

    space = "space={train.optimizer.lr: {loguniform: [1.0e-5, 1.0e-1]}, model.width: {choice: [16, 32, 48]}}"

    def sweep():
        bohb = _bohb([space, "search.seed=5", "resources.max_concurrent_trials=null"])
        configs = []
        for i in range(24):  # the best lr is 1e-3; HyperBandForBOHB tells each result with its budget
            config = bohb.suggest(f"t{i}")
            configs.append(config)
            score = 1 - abs(math.log10(config["train.optimizer.lr"]) + 3) / 4
            bohb.on_trial_result(f"t{i}", {"val_accuracy": score, "epoch": 1, "hyperband_info": {"budget": 1}})
            bohb.on_trial_complete(f"t{i}", {"val_accuracy": score, "epoch": 1})
        return bohb, configs

    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    bohb, first = sweep()
    _, second = sweep()
    # hpbandster draws its random share and its model's samples from numpy's global generator:
    # here from the searcher's own seed, so the model-based picks repeat too, and the global one is untouched.
    assert first == second and (np.random.get_state()[1] == before).all()
    assert list(bohb.bohber.kde_models) == [1]  # a model of the budget-1 results
    distance = [abs(math.log10(c["train.optimizer.lr"]) + 3) for c in first]
    assert np.median(distance[-8:]) < np.median(distance[:8]) / 2, distance  # it proposes near what scored best
    assert all(type(c["model.width"]) is int and type(c["train.optimizer.lr"]) is float for c in first)  # not numpy's


def test_bohb_is_told_each_decided_result_once_at_its_epoch_and_only_of_its_own_trials():
    bohb = _bohb(["resources.max_concurrent_trials=null"])
    bohb.suggest("a")
    bohb.suggest("b")
    # A resumed trial continues past its new bracket's milestone: its value is the epoch-3 one.
    bohb.on_trial_result("a", {"val_accuracy": 0.5, "epoch": 3, "hyperband_info": {"budget": 1}})
    bohb.on_trial_result("a", {"val_accuracy": 0.5, "epoch": 3, "hyperband_info": {"budget": 1}})  # Tune's duplicate
    bohb.on_trial_result("b", {"val_accuracy": 0.2, "epoch": 1})  # between milestones: nothing decided
    assert bohb.bohber.losses == {3: [-0.5]}
    # The scheduler stopped b at this result: Tune tells the searcher only its completion.
    bohb.on_trial_complete("b", {"val_accuracy": 0.1, "epoch": 2})
    bohb.on_trial_result("x", {"val_accuracy": 0.5, "epoch": 1, "hyperband_info": {"budget": 1}})  # not its trial
    bohb.on_trial_complete("a", {"val_accuracy": 0.55, "epoch": 4}, error=True)
    assert bohb.bohber.losses == {3: [-0.5], 2: [-0.1]}
    # An errored trial resumed under the same id (resume_sweep resumes errored trials) is still told.
    bohb.on_trial_result("a", {"val_accuracy": 0.6, "epoch": 4, "hyperband_info": {"budget": 4}})
    bohb.on_trial_complete("a", {"val_accuracy": 0.6, "epoch": 4})  # the same result again: told once
    assert bohb.bohber.losses == {3: [-0.5], 2: [-0.1], 4: [-0.6]}


def test_bohbs_concurrency_limit_counts_running_trials_not_paused_ones(tmp_path):
    alg = _bohb(["resources.max_concurrent_trials=2"])
    assert alg.suggest("a") and alg.suggest("b") and alg.suggest("c") is None  # two at a time
    alg.on_pause("a")  # HyperBandForBOHB paused it at a milestone: its place goes to the next trial
    assert alg.suggest("c") and alg.suggest("d") is None
    alg.save(str(tmp_path / "state.pkl"))
    again = _bohb(["resources.max_concurrent_trials=2"])
    again.restore(str(tmp_path / "state.pkl"))
    assert again.searcher.running == {"b", "c"} and again.searcher.paused == {"a"}
    again.on_unpause("a")
    assert again.suggest("d") is None


def test_bohb_is_told_earlier_trials_at_the_milestones_of_this_sweep(capsys):
    import math

    import numpy as np

    from raytune_opt.warm_start import Told

    lr = "space={train.optimizer.lr: {loguniform: [1.0e-5, 1.0e-1]}}"
    overrides = [lr, "scheduler={name: hyperband_bohb, reduction_factor: 2}", "train.epochs=4", "search.seed=2",
                 "resources.max_concurrent_trials=null"]
    spec = load_spec(DIGITS, [*BOHB, *overrides])

    def score(x, epoch):  # the best lr is 1e-3; more epochs, higher scores
        return 1 - abs(math.log10(x) + 3) / 4 - 0.1 * (4 - epoch)

    told = [Told("earlier", f"e{i}", {"train.optimizer.lr": x}, (score(x, 4),), "complete",
                 tuple((e, score(x, e)) for e in (1, 2, 3, 4))) for i, x in enumerate(np.geomspace(1e-5, 1e-1, 8))]
    told.append(Told("earlier", "stopped", {"train.optimizer.lr": 0.05}, (), "pruned", ((1, 0.1),)))
    searcher, param_space = searchers.build_searcher(spec, told=told)
    searcher.set_search_properties("val_accuracy", "max", param_space)  # as Tune does: hpbandster starts here
    # At this sweep's milestones (max_t 4, eta 2: epochs 1, 2 and 4), not at epoch 3.
    assert {b: len(v) for b, v in searcher.bohber.losses.items()} == {1: 9, 2: 8, 4: 8}
    assert 4 in searcher.bohber.kde_models and capsys.readouterr().err == ""
    cold, _ = searchers.build_searcher(spec)
    cold.set_search_properties("val_accuracy", "max", param_space)

    def distance(alg):
        return np.median([abs(math.log10(alg.suggest(f"t{i}")["train.optimizer.lr"]) + 3) for i in range(16)])

    assert distance(searcher) < distance(cold) / 2  # it proposes near what the earlier sweep found
