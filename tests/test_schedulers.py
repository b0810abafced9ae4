"""Scheduler conformance: every scheduler the schema allows runs a real small sweep.

For each: no trial errors; the scheduler's own decisions show in the results (stopped
trials with their stop reason, MO-ASHA's rungs, or PBT's and PB2's config changes in the history); checkpoints,
best-trial selection and promotion work afterwards. Which searchers each scheduler runs
with here: ``SCHEDULER_SEARCHERS``; tests/test_resume.py kills and resumes a sweep of every
(searcher, scheduler) pair validation accepts.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from raytune_opt import registry, schedulers
from raytune_opt.recipe.checkpoint import load_model
from raytune_opt.spec import load_spec
from raytune_opt.spec.schema import SCHEDULERS
from raytune_opt.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"
# A wide lr range: some trials are hopeless, so a stopping rule has something to stop.
WIDE = ("space={train.optimizer.lr: {loguniform: [1.0e-5, 3.0e-2]}, model.dropout: {uniform: [0.0, 0.4]}, "
        "train.optimizer.weight_decay: {loguniform: [1.0e-6, 1.0e-2]}}")
SCHEDULER_SEARCHERS = {
    "fifo": ["search.algorithm=hyperopt"],
    "asha": ["search.algorithm=optuna", "search.sampler=tpe"],
    "hyperband": ["search.algorithm=random"],
    "median": ["search.algorithm=optuna", "search.sampler=random"],
    "pbt": ["search.algorithm=random"],
    "pb2": ["search.algorithm=random"],
    "moasha": ["search.algorithm=optuna", "search.sampler=tpe"],
    "hyperband_bohb": ["search.algorithm=bohb"],
    "percentile": ["search.algorithm=random"],
}
MULTI = ["search.metric=[val_accuracy, latency_ms]", "search.mode=[max, min]"]
SETTINGS = {
    "fifo": ["scheduler={name: fifo}", "search.num_samples=4", "train.epochs=3"],
    "asha": ["scheduler={name: asha, grace_period: 1, reduction_factor: 2}", "search.num_samples=8",
             "train.epochs=4"],
    "hyperband": ["scheduler={name: hyperband, reduction_factor: 2}", "search.num_samples=8", "train.epochs=4",
                  "resources.max_concurrent_trials=null"],
    "median": ["scheduler={name: median, grace_period: 1, min_samples_required: 2}", "search.num_samples=8",
               "train.epochs=4"],
    # The bar: PBT, 8 trials over 8 epochs, no errored trial.
    "pbt": ["scheduler={name: pbt, perturbation_interval: 2, quantile_fraction: 0.25}", "search.num_samples=8",
            "train.epochs=8"],
    "pb2": ["scheduler={name: pb2, perturbation_interval: 2, quantile_fraction: 0.25}", "search.num_samples=8",
            "train.epochs=8"],
    "moasha": ["scheduler={name: moasha, grace_period: 1, reduction_factor: 2}", *MULTI, "search.num_samples=8",
               "train.epochs=4"],
    "hyperband_bohb": ["scheduler={name: hyperband_bohb, reduction_factor: 2}", "search.num_samples=8",
                       "train.epochs=4"],
    # Small (its rules have a unit test below): the threshold stops the hopeless trials of the wide lr range.
    "percentile": ["scheduler={name: percentile, percentile: 50, threshold: 0.3, grace_period: 1, "
                   "min_samples_required: 1}", "search.num_samples=4", "train.epochs=3"],
}
STOPPERS = {"asha", "hyperband", "median", "moasha", "hyperband_bohb", "percentile"}


def test_the_conformance_test_covers_every_scheduler_of_the_schema():
    assert set(SCHEDULER_SEARCHERS) == set(SETTINGS) == set(SCHEDULERS) == set(registry.SCHEDULERS)


def _rows(exp: Path) -> list[dict]:
    with open(exp / "results.csv") as f:
        return list(csv.DictReader(f))


def _history(exp: Path, trial_id: str) -> list[dict]:
    with open(exp / "history" / f"{trial_id}.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_scheduler_runs_a_real_sweep_then_promotion(local_ray, tmp_path, name):
    from raytune_opt.promote import promote

    overrides = [*SCHEDULER_SEARCHERS[name], WIDE, "train.limit_batches=6", "search.seed=3",
                 "resources.max_concurrent_trials=2", *SETTINGS[name], "promote.targets=[onnx]", f"name={name}"]
    spec = load_spec(DIGITS, overrides)
    outcome = run_sweep(spec, storage=str(tmp_path), verbose=0)
    exp = outcome.exp_dir
    rows = _rows(exp)
    epochs = spec.data["train"]["epochs"]
    assert len(rows) == spec.data["search"]["num_samples"]
    assert [r for r in rows if r["status"] not in ("ok", "stopped")] == [], [(r["status"], r["error"]) for r in rows]
    stopped = [r for r in rows if r["status"] == "stopped"]
    if name in STOPPERS:  # its decisions: trials stopped early, saying by whom and when
        assert stopped, [(r["epochs"], r["best_val_accuracy"]) for r in rows]
        for r in stopped:
            assert int(r["epochs"]) < epochs and r["stop_reason"] == f"stopped by {name} at epoch {r['epochs']}"
    else:
        assert not stopped and all(int(r["epochs"]) == epochs for r in rows), rows
    if name in ("pbt", "pb2"):
        _assert_pbt_perturbed_and_reported_the_best_epochs_config(exp, rows, spec)
    if name == "pb2":  # its GP explores inside the bounds (a loguniform's on the log scale)
        for r in rows:
            for h in _history(exp, r["trial_id"]):
                for p in spec.space.params:
                    low, high = p.domain.args
                    assert low <= float(h[f"config.{p.key}"]) <= high, (r["trial_id"], p.key, h[f"config.{p.key}"])
    if name == "moasha":
        _assert_moasha_ranked_each_rung(exp, rows)
    if name == "hyperband_bohb":  # BOHB was told every trial's result where the scheduler decided on it
        from tests.test_resume import _searcher_state

        state = _searcher_state(exp)
        # The last one too: where a trial was stopped at a milestone, or ended at max_t.
        assert {r["trial_id"]: int(r["epochs"]) for r in rows} == state["_told"], state["_told"]
        assert len(state["bohber"].losses) >= 2, state["bohber"].losses  # at two budgets or more

    # Checkpoints, the best trial and promotion afterwards.
    best = json.loads((exp / "best.json").read_text())
    top = max(rows, key=lambda r: float(r["best_val_accuracy"]))
    assert best["trial_id"] == top["trial_id"] and best["value"] == float(top["best_val_accuracy"])
    model, ckpt = load_model(best["checkpoint"])
    assert ckpt["metrics"]["val_accuracy"] == best["value"]  # best.pt is the best epoch's
    manifest = promote(exp, "onnx", None, log=lambda line: None)
    assert {a["name"]: a["status"] for a in manifest["artifacts"]}["onnx"] == "ok"
    assert manifest["status"] != "failed"


def _assert_pbt_perturbed_and_reported_the_best_epochs_config(exp: Path, rows: list[dict], spec) -> None:
    changed = 0
    for r in rows:
        hist = _history(exp, r["trial_id"])
        configs = [json.dumps({k: h[k] for k in h if k.startswith("config.")}, sort_keys=True) for h in hist]
        changed += len(set(configs)) > 1
        # The config reported for the trial is the one its best epoch trained with.
        best = max(hist, key=lambda h: (float(h["val_accuracy"]), -int(float(h["epoch"]))))
        reported = json.loads(r["config"])
        for key in spec.space.by_key:
            assert float(reported[key]) == pytest.approx(float(best[f"config.{key}"])), (r["trial_id"], key)
    assert changed, "PBT never exploited a trial"  # its decisions: configs changed mid-run
    assert (exp / "pbt_global.txt").stat().st_size > 0  # Ray's own log of every exploit


def _assert_moasha_ranked_each_rung(exp: Path, rows: list[dict]) -> None:
    from raytune_opt import moasha

    state = moasha.Rungs.from_dict(json.loads((exp / schedulers.MOASHA_STATE).read_text()))
    by_id = {r["trial_id"]: r for r in rows}
    assert state.stopped and state.stopped <= {t for t, r in by_id.items() if r["status"] == "stopped"}
    for t in state.stopped:  # stopped right at the highest rung it reached, where it ranked low
        reached = max(m for m, rung in state.recorded.items() if t in rung)
        assert int(by_id[t]["epochs"]) == reached, (t, by_id[t]["epochs"], reached)
        assert moasha.rank(state.recorded[reached])[0] != t


def test_pb2_explores_bounds_on_their_own_scale_and_refuses_other_domains():
    from raytune_opt.errors import SpecError

    with pytest.raises(SpecError) as err:
        load_spec(DIGITS, ["search.algorithm=random", "scheduler={name: pb2}",
                           "space={train.optimizer.lr: {choice: [0.01, 0.1]}, model.width: {choice: [16, 32]}}"])
    # The key, the value and the fix; model.width (PB2 never perturbs it) may be a choice.
    assert "space.train.optimizer.lr: pb2 explores continuous bounds (uniform, loguniform, randint), not a choice " \
           "(got {choice: [0.01, 0.1]}); give it bounds" in str(err.value) and "model.width" not in str(err.value)
    spec = load_spec(DIGITS, ["search.algorithm=random", "scheduler={name: pb2}",
                              "space={train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}, "
                              "train.batch_size: {randint: [16, 129]}, model.width: {choice: [16, 32]}}"])
    pb2 = schedulers.build_scheduler(spec, {"exp_dir": "/tmp/x", "remote": False, "endpoint_url": None})
    assert pb2._hyperparam_bounds_flat == {"train.optimizer.lr": [1e-4, 1e-1], "train.batch_size": [16, 128]}
    assert pb2._scaled_bounds == {"train.optimizer.lr": [-4.0, -1.0], "train.batch_size": [16, 128]}


def test_percentile_stops_below_the_threshold_or_outside_the_percentile_of_the_others(tmp_path):
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from raytune_opt.errors import SpecError

    def stopper(mode: str, **settings):
        text = ", ".join(f"{k}: {v}" for k, v in settings.items())
        spec = load_spec(DIGITS, ["search.algorithm=random", f"scheduler={{name: percentile, {text}}}"])
        sched = schedulers.build_scheduler(spec, {"exp_dir": str(tmp_path), "remote": False, "endpoint_url": None})
        assert sched.set_search_properties("m", mode)
        return lambda trial, epoch, value: sched.on_trial_result(
            None, SimpleNamespace(trial_id=trial), {"epoch": epoch, "m": value}) == TrialScheduler.STOP

    # The threshold, from grace_period on, on the epoch's own value (the mode decides what is worse).
    report = stopper("max", threshold=0.5, grace_period=2, percentile="null")
    assert not report("a", 1, 0.1) and report("a", 2, 0.4) and not report("b", 2, 0.6)
    report = stopper("min", threshold=0.5, grace_period=1, percentile="null")
    assert report("a", 1, 0.6) and not report("b", 1, 0.4)
    # Top quarter kept: judged on the trial's best so far against the others' values at that epoch,
    # once min_samples_required others reported there.
    report = stopper("max", percentile=25, min_samples_required=3)
    assert not report("a", 1, 0.5) and not report("b", 1, 0.6) and not report("c", 1, 0.7)  # too few others
    assert report("d", 1, 0.62)  # the others' (0.5, 0.6, 0.7) 75th percentile: 0.65
    assert not report("e", 1, 0.69) and not report("f", 1, 0.9)  # above 0.64 and 0.665
    assert not any(report(t, 2, v) for t, v in (("a", 0.2), ("b", 0.3), ("c", 0.4)))  # too few at epoch 2
    assert not report("f", 2, 0.1)  # its best so far, 0.9, is what is judged
    assert report("g", 2, 0.1)  # below the others' (0.2, 0.3, 0.4, 0.1) 75th percentile, 0.325
    report = stopper("min", percentile=50, min_samples_required=2)
    assert not report("a", 1, 1.0) and not report("b", 1, 3.0) and report("c", 1, 2.5) and not report("d", 1, 1.5)
    # Validation: a rule on, and its settings only with it.
    with pytest.raises(SpecError, match="percentile and threshold are both null"):
        load_spec(DIGITS, ["search.algorithm=random", "scheduler={name: percentile, percentile: null}"])
    with pytest.raises(SpecError, match=r"scheduler.threshold: not used by scheduler median \(got 0.5\); remove it, "
                       "or use scheduler.name: percentile"):
        load_spec(DIGITS, ["search.algorithm=random", "scheduler={name: median, threshold: 0.5}"])


def test_max_t_is_the_rule_of_the_schedulers_that_read_it():
    from raytune_opt.errors import SpecError

    for name in ("asha", "moasha"):  # max_t's rule, then the scheduler's own (moasha: one objective)
        with pytest.raises(SpecError) as err:
            load_spec(DIGITS, [f"scheduler={{name: {name}, max_t: 100, grace_period: 200}}", "train.epochs=4"])
        assert err.value.problems[0].key == "scheduler.max_t"
        assert err.value.problems[0].message == "exceeds train.epochs (got 100 > 4)"
        assert not any(p.key == "scheduler.grace_period" for p in err.value.problems)  # it reads max_t: skipped
    with pytest.raises(SpecError) as err:  # fifo reads no max_t: that is its one problem
        load_spec(DIGITS, ["scheduler={name: fifo, max_t: 100}", "train.epochs=4"])
    assert [(p.key, p.message, p.fix) for p in err.value.problems] == [
        ("scheduler.max_t", "not used by scheduler fifo (got 100)",
         "remove it, or use scheduler.name: asha / hyperband / moasha / hyperband_bohb")]


@pytest.mark.parametrize("name,state", [("asha", "asha_state.json"), ("percentile", "percentile_state.json"),
                                        ("median", "median_state.json")])
def test_a_stopping_scheduler_keeps_its_records_across_a_resume(tmp_path, name, state):
    """A resumed sweep gets the scheduler pickled before its first trial (tuner.pkl): the
    records come back from the experiment, so a trial is judged against the results from before
    the kill too, and one already judged (ASHA: at that rung) is not stopped by a later value."""
    from types import SimpleNamespace

    from ray import cloudpickle as pickle  # as Tune writes tuner.pkl
    from ray.tune.schedulers import TrialScheduler

    settings = {"asha": "reduction_factor: 2, max_t: 4", "percentile": "percentile: 50, min_samples_required: 3",
                "median": "min_samples_required: 3"}[name]
    spec = load_spec(DIGITS, ["search.algorithm=random", f"scheduler={{name: {name}, grace_period: 1, {settings}}}"])
    where = {"exp_dir": str(tmp_path), "remote": False, "endpoint_url": None}
    killed = schedulers.build_scheduler(spec, where)
    killed.set_search_properties("val_accuracy", "max")
    tuner_pkl = pickle.dumps(killed)

    class Trial:  # as Ray's: hashed by identity, made anew for every trial by a resumed sweep
        def __init__(self, trial_id, status):
            self.trial_id, self.status = trial_id, status

    def trial(tid, status="RUNNING"):
        return Trial(tid, status)

    controller = SimpleNamespace(get_live_trials=lambda: [])  # what the median rule asks of Tune's controller

    def report(sched, tid, epoch, value):
        return sched.on_trial_result(controller, trial(tid), {"epoch": epoch, "val_accuracy": value})

    for tid, value in (("a", 0.7), ("b", 0.8), ("c", 0.9)):  # each at or above the cutoff so far
        killed.on_trial_add(None, trial(tid))
        assert report(killed, tid, 1, value) == TrialScheduler.CONTINUE
    assert (tmp_path / state).is_file()

    resumed = pickle.loads(tuner_pkl)  # the killed driver is gone; resume unpickles tuner.pkl
    for tid in "abc":
        resumed.on_trial_add(None, trial(tid))
    resumed.on_trial_add(None, trial("d"))
    assert report(resumed, "d", 1, 0.5) == TrialScheduler.STOP  # below the median of a, b, c at epoch 1
    assert report(resumed, "c", 1, 0.1) == TrialScheduler.CONTINUE  # judged before the kill (its best: 0.9)
    kept = json.loads((tmp_path / state).read_text())
    recorded = {"asha": lambda: kept["brackets"][0], "percentile": lambda: kept["at"],
                "median": lambda: [[1, kept["results"]]]}[name]()
    assert {tid for _, values in recorded for tid in values} == {"a", "b", "c", "d"}


def test_pbt_perturbs_only_keys_that_keep_the_model_shape():
    assert schedulers.pbt_mutable("train.optimizer.lr") and schedulers.pbt_mutable("model.dropout")
    assert schedulers.pbt_mutable("train.loss.label_smoothing") and schedulers.pbt_mutable("train.batch_size")
    for key in ("model.width", "model.name", "train.epochs", "data.image_size", "train.optimizer.name",
                "train.lr_schedule.name", "model.args.lr"):
        assert not schedulers.pbt_mutable(key), key
    # A trainer's own keys (its LOOPS entry's pbt_mutable): its optimizer's arguments, not its shapes.
    assert schedulers.pbt_mutable("train.args.learning_rate", "hf_trainer")
    assert schedulers.pbt_mutable("train.peft.lora_dropout", "hf_trainer")
    assert not schedulers.pbt_mutable("train.peft.r", "hf_trainer")
    assert not schedulers.pbt_mutable("train.optimizer.lr", "hf_trainer")  # refused for the loop anyway
    assert schedulers.pbt_mutable("model.args.lr", "lightning")  # the module's args are the user's
    assert schedulers.pbt_mutable("train.optimizer.lr", "mypkg.loops:train")  # a user loop reads the recipe's


def test_pbt_explores_from_its_own_seed_and_leaves_the_global_random_alone():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    with schedulers._seeded_global_random(7):
        drawn = random.random()
    assert random.random() == expected  # the driver's global generator is where it was
    with schedulers._seeded_global_random(7):
        assert random.random() == drawn  # the same seed draws the same perturbation
    spec = load_spec(DIGITS, ["search.algorithm=random", "scheduler={name: pbt}"])
    state = random.getstate()
    schedulers.build_scheduler(spec, {"exp_dir": "/tmp/x", "remote": False, "endpoint_url": None})
    assert random.getstate() == state  # building PBT seeds nothing global


def test_hyperband_behind_a_concurrency_limit_or_a_sequential_searcher_is_refused():
    from raytune_opt.errors import SpecError

    with pytest.raises(SpecError) as err:
        load_spec(DIGITS, ["scheduler={name: hyperband}"])  # optuna, max_concurrent_trials: 2
    text = str(err.value)
    assert "a limit of 2 keeps them from filling" in text and "optuna proposes one trial at a time" in text
    load_spec(DIGITS, ["scheduler={name: hyperband}", "search.algorithm=random",
                       "resources.max_concurrent_trials=null"])


def test_hyperband_bohb_leaves_finished_trials_out_of_its_brackets():
    # A resumed sweep adds every trial again, finished ones too. One in a bracket never reports:
    # HyperBandForBOHB's bracket then never completes a milestone (its cur_iter_done), is never
    # processed, and the trials it paused wait forever (the hang ResumableHyperBand fixed for hyperband).
    from ray.tune.experiment import Trial

    class FakeTrial:
        def __init__(self, status):
            self.status = status

    spec = load_spec(DIGITS, ["search.algorithm=bohb", "scheduler={name: hyperband_bohb, reduction_factor: 2}",
                              "train.epochs=4"])
    sched = schedulers.build_scheduler(spec, {"exp_dir": "/tmp/x", "remote": False, "endpoint_url": None})
    sched.set_search_properties("val_accuracy", "max")
    done, errored, waiting = FakeTrial(Trial.TERMINATED), FakeTrial(Trial.ERROR), FakeTrial(Trial.PENDING)
    for trial in (done, errored, waiting):
        sched.on_trial_add(None, trial)
    assert set(sched._trial_info) == {waiting}
    bracket, _ = sched._trial_info[waiting]
    assert bracket._n == 4 and bracket._r == 1  # the largest bracket first: 4 trials from epoch 1 (max_t 4, eta 2)


def test_bohb_and_hyperband_bohb_each_need_the_other_and_the_bohb_extra(monkeypatch):
    from raytune_opt import _imports
    from raytune_opt.errors import SpecError

    with pytest.raises(SpecError) as err:
        load_spec(DIGITS, ["search.algorithm=bohb"])  # the digits spec's scheduler: asha
    assert "scheduler.name: bohb learns from what hyperband_bohb tells it of each trial (got asha); set " \
           "scheduler.name: hyperband_bohb" in str(err.value)
    with pytest.raises(SpecError) as err:
        load_spec(DIGITS, ["search.algorithm=random", "scheduler={name: hyperband_bohb}"])
    assert "scheduler.name: hyperband_bohb schedules trials for BOHB's searcher (got search.algorithm=random); set " \
           "search.algorithm: bohb" in str(err.value)
    both = ["search.algorithm=bohb", "scheduler={name: hyperband_bohb}"]
    load_spec(DIGITS, both)
    real = _imports.is_available
    monkeypatch.setattr(_imports, "is_available", lambda module: module != "hpbandster" and real(module))
    with pytest.raises(SpecError) as err:
        load_spec(DIGITS, both)
    assert "search.algorithm: bohb needs hpbandster, not installed (got bohb); install the bohb extra: pip " \
           "install 'raytune-opt[bohb]'" in str(err.value)


def test_a_pbt_space_with_nothing_pbt_may_perturb_is_refused():
    from raytune_opt.errors import SpecError

    with pytest.raises(SpecError, match="pbt can perturb none of the searched keys"):
        load_spec(DIGITS, ["search.algorithm=random", "scheduler={name: pbt}",
                           "space={model.width: {choice: [16, 32]}}"])


EXAMPLES = DIGITS.parent / "examples"
#: PBT over each loop: its spec, the learning-rate key PBT perturbs, what makes it small.
#: CI: the built-in loop in warm slots; the rest -m exhaustive: Hugging Face's Trainer (its own
#: optimizer, rebuilt from the exploiting trial's train.args, DDP on two workers; ~40-65 s, the
#: slot's restore of every rank is the built-in case's) and Lightning.
PBT_LOOPS = {
    "builtin": (DIGITS, "train.optimizer.lr", (), "lr"),
    "hf_trainer": (EXAMPLES / "sentiment_hf_lora.yaml", "train.args.learning_rate", ("data.args.n=600",),
                   "learning_rate"),
    "lightning": (EXAMPLES / "digits_lightning.yaml", "model.args.lr", (), None),
}


@pytest.mark.slow
@pytest.mark.parametrize("loop,warm", [pytest.param("builtin", False, marks=pytest.mark.exhaustive),
                                       ("builtin", True), pytest.param("hf_trainer", True, marks=pytest.mark.exhaustive),
                                       pytest.param("lightning", True, marks=pytest.mark.exhaustive)],
                         ids=["builtin-per-trial", "builtin-warm", "hf_trainer-warm", "lightning-warm"])
def test_pbt_exploit_of_a_two_worker_trial_restores_every_rank(local_ray, tmp_path, monkeypatch, loop, warm):
    # Synchronous PBT: both trials meet at epoch 2 whenever each got its workers, so exactly one
    # exploit happens there (asynchronous PBT needed 20 epochs to be sure the two overlapped,
    # and restarted a 2-worker trial at many of them: 5 minutes here). Warm: the paused and the
    # exploiting trial go back into warm slots, which restore the donor's checkpoint.
    path, lr, extra, reported = PBT_LOOPS[loop]
    for module in {"hf_trainer": ("transformers", "peft"), "lightning": ("lightning",)}.get(loop, ()):
        pytest.importorskip(module)
    monkeypatch.syspath_prepend(str(EXAMPLES))  # the examples' own packages, for the driver
    spec = load_spec(path, ["search.algorithm=random", "search.num_samples=2", "search.seed=1",
                            "scheduler={name: pbt, perturbation_interval: 2, quantile_fraction: 0.5, synch: true}",
                            f"space={{{lr}: {{loguniform: [1.0e-4, 3.0e-2]}}}}", "train.epochs=3",
                            "train.limit_batches=4", "resources.num_workers=2", "resources.cpus_per_worker=0.5",
                            "resources.max_concurrent_trials=2", f"resources.warm_workers={str(warm).lower()}",
                            "promote.enabled=false", "tracking.tensorboard=false", "name=pbt2", *extra])
    outcome = run_sweep(spec, storage=str(tmp_path), verbose=0)
    rows = _rows(outcome.exp_dir)
    assert [r["status"] for r in rows] == ["ok", "ok"], [(r["status"], r["error"]) for r in rows]
    exploited = []
    for r in rows:
        hist = _history(outcome.exp_dir, r["trial_id"])
        epochs = [int(float(h["epoch"])) for h in hist]
        assert set(epochs) == {1, 2, 3} and epochs[-1] == 3, hist  # nothing lost across the restarts
        if len({h[f"config.{lr}"] for h in hist}) > 1:
            exploited.append(hist)
        else:
            kept = hist
    assert len(exploited) == 1, "PBT should have exploited exactly one trial at epoch 2"
    hist = exploited[0]
    assert hist[0][f"config.{lr}"] != hist[-1][f"config.{lr}"]  # perturbed at epoch 2
    # Every rank loaded the adopted checkpoint: the replicas stayed equal.
    assert float(hist[-1]["rank_param_max_diff"]) == 0.0, hist[-1]
    if reported:  # the perturbed rate took effect: at epoch 3 both trials are at the same point of
        # their schedule (the same steps), so each runs at the same fraction of its own base rate.
        def fraction(h):
            return float(h[reported]) / float(h[f"config.{lr}"])

        assert fraction(hist[-1]) == pytest.approx(fraction(kept[-1]), rel=1e-6), (hist[-1], kept[-1])


# --- every searcher with every scheduler that can take it: tests/test_resume.py ---------------
def _overrides(searcher: str, scheduler: str) -> list[str]:
    """The resume test's settings of a searcher and a scheduler (one space every searcher takes)."""
    from tests import test_resume

    limit = ["resources.max_concurrent_trials=null"] if scheduler == "hyperband" else []  # see validate
    return [*test_resume.SEARCHERS[searcher], *test_resume.SCHEDULERS[scheduler], *limit]


def _allowed_pairs() -> set[tuple[str, str]]:
    """The (searcher, scheduler) pairs validation accepts on the digits spec."""
    from raytune_opt.errors import SpecError

    from tests import test_resume

    allowed = set()
    for searcher in test_resume.SEARCHERS:
        for scheduler in test_resume.SCHEDULERS:
            try:
                load_spec(DIGITS, _overrides(searcher, scheduler))
            except SpecError:
                continue
            allowed.add((searcher, scheduler))
    return allowed


def test_the_kill_and_resume_test_runs_every_pair_validation_accepts():
    from tests import test_resume

    allowed = _allowed_pairs()
    assert ("optuna/tpe", "hyperband") not in allowed  # refused at validation (see validate's scheduler rules)
    resumed = [(searcher, scheduler) for searcher, scheduler, _ in test_resume.PAIRS]
    assert len(resumed) == len(set(resumed)) and set(resumed) == allowed, sorted(allowed ^ set(resumed))
    # What CI runs of it still covers every searcher, every scheduler and every kill moment.
    ci = [pair for pair in test_resume.PAIRS if pair[:2] in test_resume.CI_PAIRS]
    assert len(ci) == len(test_resume.CI_PAIRS)
    assert {s for s, _, _ in ci} == set(test_resume.SEARCHERS) and {s for _, s, _ in ci} == set(test_resume.SCHEDULERS)
    assert {k for _, _, kills in ci for k in kills} == {k for _, _, kills in test_resume.PAIRS for k in kills}
    assert any(len(kills) > 1 for _, _, kills in ci)


def test_pbt_keeps_an_unreferenced_snapshot_for_a_grace_period_then_deletes_it(tmp_path, monkeypatch):
    # A killed driver resumes from Tune's last saved state, which may still hand a trial a
    # snapshot the live scheduler no longer refers to: snapshots outlive their last reference.
    spec = load_spec(DIGITS, ["search.algorithm=random", "scheduler={name: pbt}"])
    pbt = schedulers.build_scheduler(spec, {"exp_dir": str(tmp_path), "remote": False, "endpoint_url": None})
    snap = tmp_path / schedulers.PBT_SNAPSHOTS / "t1-epoch2-1"
    snap.mkdir(parents=True)
    pbt._made.add(str(snap))
    pbt._collect_garbage()
    assert snap.is_dir()  # unreferenced just now: kept
    monkeypatch.setattr(schedulers, "SNAPSHOT_GRACE_S", 0.0)
    pbt._collect_garbage()
    assert not snap.exists() and not pbt._made


def test_pbt_explores_a_grid_key_among_the_grid_values():
    from ray.tune.schedulers.pbt import _explore

    spec = load_spec(DIGITS, ["search.algorithm=grid", "search.num_samples=1", "scheduler={name: pbt}",
                              "space={train.optimizer.lr: {grid: [0.003, 0.01]}, model.dropout: {grid: [0.0, 0.2]}}"])
    pbt = schedulers.build_scheduler(spec, {"exp_dir": "/tmp/x", "remote": False, "endpoint_url": None})
    config = {"train.optimizer.lr": 0.01, "model.dropout": 0.0}
    for _ in range(20):  # resample and shift both stay on the grid
        new, _ = _explore(config, pbt._hyperparam_mutations, 0.25, (1.2, 0.8), None)
        assert new["train.optimizer.lr"] in (0.003, 0.01) and new["model.dropout"] in (0.0, 0.2), new


def test_pbt_persists_the_logs_of_a_trial_whose_directory_storage_has_not_seen_yet(tmp_path):
    # A trial restarted by a resume under a new directory can be exploited before Tune's
    # first sync made that directory on storage (seen in the kill-and-resume test, grid + PBT).
    from types import SimpleNamespace

    from pyarrow import fs

    staging = tmp_path / "staging" / "trial_3_3f10"
    staging.mkdir(parents=True)
    (staging / "result.json").write_text('{"epoch": 1}\n')
    dest = tmp_path / "exp" / "trial_3_3f10"
    trial = SimpleNamespace(local_path=str(staging), path=str(dest),
                            storage=SimpleNamespace(storage_filesystem=fs.LocalFileSystem()))
    schedulers._persist_driver_logs(trial)
    assert (dest / "result.json").read_text() == '{"epoch": 1}\n' and not (dest / "progress.csv").exists()
