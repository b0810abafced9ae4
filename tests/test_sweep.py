"""Real sweeps on a real embedded local Ray (marked slow: seconds to tens of seconds each)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest

from raytune_opt import report
from raytune_opt.cli import main
from raytune_opt.spec import load_spec
from raytune_opt.sweep import run_sweep
from tests._chromium import BROWSER
from tests.test_report import assert_page_draws
from tests.test_tracking import check_sweep_tracking
from tests.test_wandb import check_sweep_wandb, offline_wandb_in_a_sweep  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"
CONDITIONAL = ROOT / "search_spaces" / "digits_conditional.yaml"
SMALL = ["train.epochs=4", "train.limit_batches=6", "scheduler.grace_period=1", "scheduler.reduction_factor=2",
         "promote.enabled=false", "name=s"]

pytestmark = pytest.mark.slow


def _rows(exp_dir: Path) -> list[dict]:
    with open(exp_dir / "results.csv") as f:
        return list(csv.DictReader(f))


SEARCHERS_UNDER_ASHA = [
    ["search.algorithm=random", "search.num_samples=6"],
    ["search.algorithm=optuna", "search.sampler=tpe", "search.num_samples=6"],
    ["search.algorithm=hyperopt", "search.num_samples=6"],
    ["search.algorithm=grid", "search.num_samples=1",
     "space={train.optimizer.lr: {grid: [0.001, 0.003, 0.01]}, model.width: {grid: [16, 32]}}"],
]


@pytest.mark.parametrize("algorithm", SEARCHERS_UNDER_ASHA, ids=lambda a: a[0].split("=")[1])
def test_every_searcher_runs_a_small_sweep_with_asha(local_ray, tmp_path, algorithm):
    spec = load_spec(DIGITS, SMALL + algorithm)
    quieted = ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "RAY_AIR_NEW_OUTPUT")
    before = {k: os.environ.get(k) for k in quieted}
    outcome = run_sweep(spec, storage=str(tmp_path), verbose=0, live=True)
    rows = _rows(outcome.exp_dir)
    assert outcome.exit_code == 0
    assert len(rows) == 6
    # Tune's loggers and console quieted during the fit only: a Python user's next Tune run
    # gets Tune's defaults.
    assert {k: os.environ.get(k) for k in quieted} == before == dict.fromkeys(quieted)
    assert all(r["status"] in ("ok", "stopped") for r in rows), rows
    best = json.loads((outcome.exp_dir / "best.json").read_text())
    assert Path(best["checkpoint"]).is_file()
    assert best["value"] == max(float(r["best_val_accuracy"]) for r in rows)
    assert (outcome.exp_dir / "history" / f"{best['trial_id']}.csv").is_file()
    if "grid" in algorithm[0]:
        points = {(float(r["config.train.optimizer.lr"]), int(r["config.model.width"])) for r in rows}
        assert len(points) == 6  # the full product, each point once


def test_asha_stops_some_trials_early(local_ray, tmp_path):
    spec = load_spec(DIGITS, SMALL + ["search.algorithm=random", "search.num_samples=8", "train.epochs=6",
                                      "space.train.optimizer.lr={loguniform: [1.0e-5, 3.0e-2]}"])
    outcome = run_sweep(spec, storage=str(tmp_path), verbose=0)
    rows = _rows(outcome.exp_dir)
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert stopped, rows
    assert all(int(r["epochs"]) < 6 and r["stop_reason"].startswith("stopped by asha") for r in stopped)
    assert any(int(r["epochs"]) == 6 for r in rows)


def test_conditional_parameters_never_reach_results(local_ray, tmp_path, offline_wandb_in_a_sweep, monkeypatch):
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"  # the same sweep checks its trackers and its report
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps the artifacts after_promotion logs in ./mlruns
    spec = load_spec(CONDITIONAL, ["train.epochs=2", "train.limit_batches=4", "search.num_samples=6",
                                   "scheduler.grace_period=1", "promote.enabled=false",
                                   f"tracking.mlflow.tracking_uri={mlflow_uri}", "tracking.mlflow.experiment=cond",
                                   "tracking.wandb.project=cond", "tracking.wandb.mode=offline"])
    outcome = run_sweep(spec, storage=str(tmp_path), verbose=0, callbacks=report.callbacks)
    report.after_sweep(outcome.location)  # as the CLI and the API do
    report.after_promotion(outcome)  # ...and this: W&B's best tag and sweep-level run
    rows = _rows(outcome.exp_dir)
    assert len(rows) == 6
    check_sweep_tracking(outcome.exp_dir, mlflow_uri, "cond", [r["trial_id"] for r in rows])
    check_sweep_wandb(outcome.exp_dir, rows)  # offline: the fixture checks that W&B's server got no connection
    for r in rows:
        config = json.loads(r["config"])
        opt = config["train.optimizer.name"]
        assert ("train.optimizer.momentum" in config) == (opt == "sgd")
        assert ("train.optimizer.beta1" in config) == (opt in ("adam", "adamw"))
        assert ("model.dropout" in config) == (config["model.name"] == "mlp")
        assert (r["config.train.optimizer.momentum"] != "") == (opt == "sgd")
    best = json.loads((outcome.exp_dir / "best.json").read_text())
    assert ("train.optimizer.momentum" in best["config"]) == (best["config"]["train.optimizer.name"] == "sgd")
    # The report written after the sweep; a real sweep's page draws every section (promotion is off here).
    assert (outcome.exp_dir / "optuna.journal.log").is_file()
    if BROWSER:
        few = sum(r["status"] == "ok" for r in rows) < 2  # importance needs 2 finished (not stopped) trials
        check = assert_page_draws(outcome.exp_dir / "report.html",
                                  expect_none=("promotion", "importance") if few else ("promotion",))
        assert check["sections"]["best"]["charts"] == 3  # lr, grad_norm, the confusion matrix from best.pt


def test_a_diverging_trial_is_recorded_and_the_sweep_exits_0(local_ray, tmp_path, capsys):
    rc = main(["run", str(DIGITS), *SMALL[:2], "promote.enabled=false", "name=s", "search.algorithm=grid",
               "search.num_samples=1", "train.epochs=2", "scheduler={name: fifo}", "train.optimizer.name=sgd",
               "train.lr_schedule.name=constant", "train.lr_schedule.warmup_epochs=0",
               "space={train.optimizer.lr: {grid: [0.01, 1.0e+12]}}", "--storage", str(tmp_path)])
    assert rc == 0
    rows = {float(r["config.train.optimizer.lr"]): r for r in _rows(tmp_path / "s")}
    assert rows[1e12]["status"] == "diverged" and rows[1e12]["stop_reason"].startswith("diverged: non-finite loss")
    assert rows[0.01]["status"] == "ok"
    assert "diverged" in capsys.readouterr().out


def test_same_seed_samples_the_same_configs(local_ray, tmp_path):
    def configs(name: str, seed: int) -> list[str]:
        spec = load_spec(DIGITS, SMALL[:2] + ["promote.enabled=false", "search.num_samples=4", "train.epochs=1",
                                              "scheduler={name: fifo}", f"search.seed={seed}", f"name={name}"])
        outcome = run_sweep(spec, storage=str(tmp_path), verbose=0)
        return sorted(r["config"] for r in _rows(outcome.exp_dir))

    first, second, other = configs("a", 3), configs("b", 3), configs("c", 4)
    assert first == second
    assert first != other


@pytest.mark.parametrize("path", [DIGITS, CONDITIONAL], ids=lambda p: p.name)
def test_shipped_digits_specs_pass_a_dry_run(local_ray, tmp_path, path, capsys):
    rc = main(["run", str(path), "--dry-run", "--storage", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = _rows(next(tmp_path.iterdir()))
    spec = load_spec(path)
    assert len(rows) == spec.data["search"]["num_samples"]
    assert all(r["status"] == "ok" and int(r["epochs"]) == 1 for r in rows)


def test_a_trial_whose_code_raises_is_errored_and_the_sweep_goes_on(local_ray, tmp_path):
    # SGD refuses Nesterov with momentum 0 when the optimizer is built, inside the trial.
    spec = load_spec(DIGITS, SMALL[:2] + ["promote.enabled=false", "name=s", "search={algorithm: grid, num_samples: 1}",
                                          "scheduler={name: fifo}", "train.epochs=2",
                                          "train.optimizer={name: sgd, lr: 0.05, nesterov: true}",
                                          "space={train.optimizer.momentum: {grid: [0.0, 0.9]}}"])
    outcome = run_sweep(spec, storage=str(tmp_path), verbose=0)
    rows = {float(r["config.train.optimizer.momentum"]): r for r in _rows(outcome.exp_dir)}
    assert rows[0.0]["status"] == "error" and "nesterov needs momentum" in rows[0.0]["error"]
    assert rows[0.9]["status"] == "ok"
    assert outcome.exit_code == 0
    errored = [p for p in outcome.exp_dir.glob("trial_*/error.txt")]
    text = errored[0].read_text()
    assert len(errored) == 1 and "nesterov needs momentum" in text and "File \"" in text  # the traceback is kept


@pytest.mark.parametrize("reports,kept", [
    # the resumed trial re-reports the epoch it had finished: the original stays
    ([(1, 0), (2, 0), (2, 1), (3, 0)], [1, 2, 3]),
    # the crash lost the last epoch's report; the replay and the finished run's report both
    # re-report it: the first replay stands in for it (seen in the kill-and-resume test)
    ([(1, 0), (2, 0), (3, 1), (3, 1)], [1, 2, 3]),
    ([(1, 0), (2, 0), (3, 0), (3, 1)], [1, 2, 3]),
])
def test_the_history_keeps_one_report_per_epoch_across_a_resume(reports, kept):
    from raytune_opt.sweep import _without_replays

    history = [{"epoch": e, "replayed": r, "val_loss": 1.0 / (e + r + 1)} for e, r in reports]
    out = _without_replays(history)
    assert [h["epoch"] for h in out] == kept and all("replayed" not in h for h in out)
    assert out[-1]["val_loss"] == next(h["val_loss"] for h in history if h["epoch"] == kept[-1])


def _reports_once(config):
    from ray import tune

    tune.report({"val_accuracy": 0.5, "epoch": 1})


def test_a_trial_that_never_reported_keeps_its_config_when_the_sweep_is_read_back(local_ray, tmp_path):
    """A trial stopped before it reported: its row keeps the config Tune gave it, also when the
    experiment is read back without running (a resumed sweep whose budget is spent): Ray's
    Result.config comes from the last result, which such a trial lacks once its actor is gone
    (CI once saw its config columns emptied by that second write)."""
    from ray import tune
    from ray.tune import Stopper

    from raytune_opt import searchers
    from raytune_opt.sweep import collect_rows

    class StopAll(Stopper):  # the experiment ends at the first result: the second trial never starts
        def __init__(self):
            self.seen = False

        def __call__(self, trial_id, result):
            self.seen = True
            return False

        def stop_all(self):
            return self.seen

    spec = load_spec(DIGITS, ["search.algorithm=random", "search.num_samples=2", "scheduler={name: fifo}"])
    _, space = searchers.build_searcher(spec)
    trainable = tune.with_resources(_reports_once, {"cpu": 2})  # one trial at a time on the 2-CPU Ray
    grid = tune.Tuner(trainable, param_space=space,
                      tune_config=tune.TuneConfig(num_samples=2, metric="val_accuracy", mode="max"),
                      run_config=tune.RunConfig(name="never", storage_path=str(tmp_path), stop=StopAll())).fit()
    again = tune.Tuner.restore(str(tmp_path / "never"), trainable=trainable).get_results()
    for g in (grid, again):
        rows = collect_rows(g, spec)
        assert len(rows) == 2 and sum(bool(r.history) for r in rows) == 1, rows
        assert all(set(r.config) == {p.key for p in spec.space.params} for r in rows), [r.config for r in rows]
    assert [r.config for r in collect_rows(grid, spec)] == [r.config for r in collect_rows(again, spec)]
