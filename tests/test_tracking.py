"""Trackers: TensorBoard event files (read back with TensorBoard's EventAccumulator) and MLflow
runs in a real sqlite:/// store (read back with MlflowClient).

The callbacks are driven here with the calls Tune makes; a real sweep's TensorBoard and MLflow
output is checked by ``check_sweep_tracking`` from tests/test_sweep.py's conditional sweep.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raytune_opt.cli import main
from raytune_opt.errors import UsageError
from raytune_opt.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
CONDITIONAL = ROOT / "search_spaces" / "digits_conditional.yaml"

mlflow = pytest.importorskip("mlflow", reason="needs the mlflow extra (pip install -e '.[test]')")


@dataclass
class FakeTrial:  # the attributes of ray.tune.experiment.Trial the callbacks read
    trial_id: str
    config: dict
    status: str = "RUNNING"
    last_result: dict = field(default_factory=dict)


def _epochs(n: int, stop: str | None = "completed") -> list[dict]:
    return [{"epoch": e, "val_accuracy": 0.5 + 0.1 * e, "val_loss": 1.0 / e, "train_loss": 1.2 / e, "lr": 0.01,
             "grad_norm": 2.0 / e, "time_total_s": e * 1.0, "stop_reason": stop if e == n else None}
            for e in range(1, n + 1)]


TRIALS = [(FakeTrial("aaa01", {"train.optimizer.lr": 0.01, "train.optimizer.name": "sgd",
                               "train.optimizer.momentum": 0.9, "train.optimizer.nesterov": True,
                               "model.name": "mlp", "model.dropout": 0.2}), _epochs(3)),
          (FakeTrial("bbb02", {"train.optimizer.lr": 0.003, "train.optimizer.name": "adam",
                               "train.optimizer.beta1": 0.9, "model.name": "small_cnn"}), _epochs(1, None))]


def _drive(cb) -> None:
    """What Tune calls on a callback during a two-trial sweep (the second stopped after epoch 1)."""
    cb.setup()
    for t, epochs in TRIALS:
        cb.on_trial_start(0, [], t)
        for r in epochs:
            t.last_result = r
            cb.on_trial_result(0, [], t, r)
        cb.on_trial_complete(0, [], t)
    cb.on_experiment_end([t for t, _ in TRIALS])


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _hparams(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    return {k: (v.number_value if v.HasField("number_value") else v.string_value if v.HasField("string_value")
                else v.bool_value) for k, v in info.hparams.items()}


def test_tensorboard_has_every_epoch_and_the_hparams_of_each_trial(tmp_path):
    from raytune_opt.tracking.tensorboard import TensorBoardCallback

    spec = load_spec(CONDITIONAL)
    _drive(TensorBoardCallback(tmp_path / "tensorboard", spec))
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["aaa01", "bbb02"]
    first = scalars(tmp_path / "tensorboard" / "aaa01")
    assert [s for s, _ in first["val_accuracy"]] == [1, 2, 3]
    assert first["val_accuracy"][-1][1] == pytest.approx(0.8)
    assert "time_total_s" not in first  # Ray's bookkeeping stays out
    assert [s for s, _ in scalars(tmp_path / "tensorboard" / "bbb02")["val_loss"]] == [1]
    hp = _hparams(tmp_path / "tensorboard" / "aaa01")
    assert hp["train.optimizer.momentum"] == pytest.approx(0.9) and hp["model.name"] == "mlp"
    assert "train.optimizer.beta1" not in hp  # inactive there
    assert "train.optimizer.momentum" not in _hparams(tmp_path / "tensorboard" / "bbb02")


def _mlflow_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_mlflow_gets_a_parent_run_and_one_nested_run_per_trial(tmp_path):
    from raytune_opt.tracking.mlflow import MLflowCallback

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = load_spec(CONDITIONAL)
    _drive(MLflowCallback(uri, "cond", spec, tmp_path))
    client, parents, children = _mlflow_runs(uri, "cond")
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert parents[0].info.status == "FINISHED"
    by_trial = {c.data.tags["raytune_opt.trial_id"]: c for c in children}
    hist = client.get_metric_history(by_trial["aaa01"].info.run_id, "val_accuracy")
    assert sorted(m.step for m in hist) == [1, 2, 3]  # one value per epoch
    assert by_trial["aaa01"].data.params["train.optimizer.momentum"] == "0.9"
    assert "train.optimizer.momentum" not in by_trial["bbb02"].data.params
    assert by_trial["bbb02"].data.tags["raytune_opt.stop_reason"] == "stopped by the scheduler"
    assert (tmp_path / "mlflow_run.json").is_file()


def test_the_sweeps_artifacts_go_to_the_parent_run(tmp_path, monkeypatch):
    from raytune_opt.tracking import log_sweep_artifacts

    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns
    from raytune_opt.tracking.mlflow import MLflowCallback
    from tests._experiments import make_experiment

    exp = make_experiment(tmp_path, 6, name="art")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cb = MLflowCallback(uri, "art", load_spec(CONDITIONAL), exp)
    cb.setup()
    log_sweep_artifacts(exp)
    client, parents, _ = _mlflow_runs(uri, "art")
    names = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"best", "promotion", "results.csv"} <= names
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id, "best")} == {"best/best.pt",
                                                                                        "best/best.json"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracker_is_one_line_and_exit_2_before_ray_starts(tmp_path, capsys, monkeypatch):
    from raytune_opt import ray_runtime

    started = []  # whether Ray was asked to start (another test may already have one running here)
    monkeypatch.setattr(ray_runtime, "start", lambda *a, **k: started.append(a) or pytest.fail("Ray started"))
    uri = f"http://127.0.0.1:{_closed_port()}"
    code = main(["run", str(CONDITIONAL), f"tracking.mlflow.tracking_uri={uri}", "name=t", "--storage", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"tracking.mlflow.tracking_uri {uri}: cannot reach MLflow")
    assert not started and not (tmp_path / "t").exists()


def test_a_tracker_that_fails_mid_sweep_warns_once_and_the_trials_go_on(tmp_path, capsys):
    from raytune_opt.tracking.mlflow import MLflowCallback

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cb = MLflowCallback(uri, "mid", load_spec(CONDITIONAL), tmp_path)
    cb.setup()
    (tmp_path / "mlflow.db").unlink()  # the store goes away under the sweep
    (tmp_path / "mlflow.db").mkdir()  # ...and cannot come back
    for t, epochs in TRIALS:
        cb.on_trial_start(0, [], t)
        for r in epochs:
            cb.on_trial_result(0, [], t, r)
        cb.on_trial_complete(0, [], t)
    cb.on_experiment_end([])
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("raytune-opt:")]
    assert len(ours) == 1 and ours[0].startswith(f"raytune-opt: warning: MLflow logging to {uri} failed"), err
    assert err.count("Traceback") <= 2  # MLflow's own log of that first failure; no retries after it
    # The one line names where the traceback went: a bug in a tracker stays findable.
    assert ours[0].endswith(f"(traceback in {tmp_path / 'warnings.log'})"), ours
    assert "Traceback (most recent call last)" in (tmp_path / "warnings.log").read_text()


def check_sweep_tracking(exp_dir: Path, uri: str, experiment: str, trial_ids: list[str]) -> None:
    """A real sweep's TensorBoard and MLflow output: every trial, one value per epoch."""
    import csv

    for tid in trial_ids:
        with open(exp_dir / "history" / f"{tid}.csv") as f:
            epochs = sorted(int(float(h["epoch"])) for h in csv.DictReader(f))
        tb = scalars(exp_dir / "tensorboard" / tid)
        assert [s for s, _ in tb["val_accuracy"]] == epochs, (tid, tb.get("val_accuracy"))
    client, parents, children = _mlflow_runs(uri, experiment)
    assert len(parents) == 1 and len(children) == len(trial_ids)
    for c in children:
        tid = c.data.tags["raytune_opt.trial_id"]
        with open(exp_dir / "history" / f"{tid}.csv") as f:
            n = len(list(csv.DictReader(f)))
        assert len(client.get_metric_history(c.info.run_id, "val_accuracy")) == n
        assert c.info.status == "FINISHED"


@pytest.mark.slow
def test_a_real_mlflow_server_gets_the_runs_and_its_death_mid_sweep_only_warns(tmp_path, capsys):
    """``mlflow server`` on loopback, started and stopped by PID (tens of seconds: marked slow)."""
    import os
    import shutil
    import subprocess
    import sys

    from raytune_opt.tracking import check_mlflow
    from raytune_opt.tracking.mlflow import MLflowCallback
    from tests._procs import free_port, kill_tree, wait_for_http

    exe = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    uri = f"http://alice:s3cr3t-PW@127.0.0.1:{port}"  # a server without auth ignores it; nothing may write it
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                               "--default-artifact-root", str(tmp_path / "artifacts")],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log.flush()
        wait_for_http(f"{base}/health", server, str(tmp_path / "server.log"), timeout=120)
        check_mlflow(uri, "srv")
        spec = load_spec(CONDITIONAL)
        cb = MLflowCallback(uri, "srv", spec, tmp_path)
        cb.setup()
        first, epochs = TRIALS[0]
        cb.on_trial_start(0, [], first)
        for r in epochs:
            cb.on_trial_result(0, [], first, r)
        cb.on_trial_complete(0, [], first)
        client, parents, children = _mlflow_runs(uri, "srv")
        assert len(parents) == 1 and len(children) == 1
        assert len(client.get_metric_history(children[0].info.run_id, "val_accuracy")) == 3
        record = json.loads((tmp_path / "mlflow_run.json").read_text())
        assert record["tracking_uri"] == f"http://alice:***@127.0.0.1:{port}"  # redacted (issue 25)
    finally:
        kill_tree(server.pid)
        server.wait(timeout=30)
        log.close()
    capsys.readouterr()
    second, epochs = TRIALS[1]  # the server is gone: the trial goes on, one warning
    cb.on_trial_start(0, [], second)
    for r in epochs:
        cb.on_trial_result(0, [], second, r)
    cb.on_trial_complete(0, [], second)
    cb.on_experiment_end([])
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("raytune-opt:")]
    assert len(ours) == 1 and "MLflow logging to" in ours[0], ours
    assert "s3cr3t-PW" not in ours[0] and "s3cr3t-PW" not in (tmp_path / "warnings.log").read_text()
    with pytest.raises(UsageError, match="cannot reach MLflow"):
        check_mlflow(uri, "srv")


@pytest.mark.parametrize("metric,mode,reported", [
    ("val_rmse", "min", {"val_rmse": 12.5, "val_mae": 9.0, "val_r2": 0.4}),  # a regression's metrics
    ("val_auc", "max", {"val_auc": 0.91}),  # a user loop's own metric
])
def test_the_trackers_log_a_regression_and_a_user_loops_own_metric(tmp_path, metric, mode, reported):
    from mlflow.tracking import MlflowClient

    from raytune_opt.tracking.mlflow import MLflowCallback
    from raytune_opt.tracking.tensorboard import TensorBoardCallback

    spec = load_spec(CONDITIONAL)
    spec.data["search"].update(metric=metric, mode=mode)  # all the callbacks read of the spec's task
    trial = FakeTrial("ccc03", {"train.optimizer.lr": 0.01, "train.optimizer.name": "adam",
                                "train.optimizer.beta1": 0.9, "model.name": "mlp", "model.dropout": 0.1})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for cb in (TensorBoardCallback(tmp_path / "tb", spec), MLflowCallback(uri, "reg", spec, tmp_path)):
        cb.setup()
        cb.on_trial_start(0, [], trial)
        for e in (1, 2):
            result = {"epoch": e, "val_loss": 1.0 / e, "time_total_s": float(e), **reported,
                      "stop_reason": "completed" if e == 2 else None}
            trial.last_result = result
            cb.on_trial_result(0, [], trial, result)
        cb.on_trial_complete(0, [], trial)
        cb.on_experiment_end([trial])
    logged = scalars(tmp_path / "tb" / "ccc03")
    for key in reported:
        assert [s for s, _ in logged[key]] == [1, 2], (key, sorted(logged))
    client = MlflowClient(tracking_uri=uri)
    run = [r for r in client.search_runs([client.get_experiment_by_name("reg").experiment_id])
           if "mlflow.parentRunId" in r.data.tags][0]
    assert set(reported) <= set(run.data.metrics), run.data.metrics
