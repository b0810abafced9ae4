"""What a multi-worker trial hands Ray Train (raytune_opt.trial)."""

from __future__ import annotations

import pytest
import ray.train
from ray.train.v2._internal.callbacks import DatasetsCallback

from raytune_opt import trial


def _noop(config):
    pass


def test_a_trainer_without_datasets_starts_no_ray_data_actor():
    # Train V2 adds a DatasetsCallback (a DatasetManager actor per run) whatever the datasets;
    # ours drops it when there are none, and keeps it when a user passes some.
    trainer = trial._trainer_class()(_noop, scaling_config=ray.train.ScalingConfig(num_workers=2))
    names = [type(c).__name__ for c in trainer._create_default_callbacks()]
    assert "BackendSetupCallback" in names and "DatasetsCallback" not in names, names
    with_data = trial._trainer_class()(_noop, scaling_config=ray.train.ScalingConfig(num_workers=2),
                                       datasets={"train": [1, 2, 3]})
    assert any(isinstance(c, DatasetsCallback) for c in with_data._create_default_callbacks())


@pytest.mark.slow
@pytest.mark.timeout(180)  # the deadlock this guards against is a trial that never ends
def test_the_relay_hands_tune_every_report_when_the_run_ends_right_after_its_last(local_ray, tmp_path):
    # What Train's controller does with the relay's callback: report, report, report, return
    # at once. With Ray's TuneReportCallback in its place the trial's end could overtake its
    # last report, and Tune's actor then blocked for ever (trial._ReportRelay). Many trials,
    # so that a race had its chances.
    from ray import tune

    def trainable(config):
        relay = trial._ReportRelay()

        class Controller:  # stands for Train's: calls after_report, then fit() returns
            def fit(self):
                for epoch in (1, 2, 3):
                    relay.callback.after_report(None, [{"epoch": epoch, "lr": config["lr"]}], None)

        relay.fit(Controller())

    tuner = tune.Tuner(trainable, param_space={"lr": tune.grid_search([0.1 * i for i in range(1, 7)])},
                       tune_config=tune.TuneConfig(max_concurrent_trials=2),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="relay", verbose=0))
    results = tuner.fit()
    assert not results.errors, results.errors
    for r in results:
        assert r.metrics_dataframe["epoch"].tolist() == [1, 2, 3], r.metrics_dataframe


def test_a_failing_run_fails_the_trial_through_the_relay():
    class Controller:
        def fit(self):
            raise RuntimeError("a worker died")

    relay = trial._ReportRelay.__new__(trial._ReportRelay)  # no queue actor: nothing is reported

    class Nothing:
        def get(self, timeout=None):
            import queue

            raise queue.Empty

        get_nowait = get

    relay._queue = Nothing()
    with pytest.raises(RuntimeError, match="a worker died"):
        relay.fit(Controller())


def _run(code: str) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_the_trial_actor_and_the_train_controller_never_import_torch(tmp_path):
    # A multi-worker trial's actor builds the trainer; Train's controller unpickles the run's
    # context (the loop config, the backend config) and callbacks. Neither trains: torch's
    # import (~2 s of CPU each) stays in the workers (benchmarks/ddp_startup.py).
    blob = tmp_path / "controller.pkl"
    built = _run(f"""
import sys, ray.cloudpickle as cp, ray.train
from raytune_opt import trial
from raytune_opt.train_backend import TorchBackendConfig
t = trial._trainer_class()(trial._train_worker,
    train_loop_config={{"cfg": {{}}, "store": trial.OwnStore("/x/trial_0/ckpt"), "extra": {{}}}},
    backend_config=TorchBackendConfig(), scaling_config=ray.train.ScalingConfig(num_workers=2))
open({str(blob)!r}, "wb").write(cp.dumps((t.train_run_context, t._create_default_callbacks())))
print("torch" in sys.modules)
""")
    assert built == "False"
    assert _run(f"import sys, pickle; pickle.loads(open({str(blob)!r}, 'rb').read()); "
                "print('torch' in sys.modules)") == "False"


def test_the_backend_config_describes_itself_as_torch():
    from ray.train.v2._internal.util import TrainingFramework

    from raytune_opt.train_backend import TorchBackendConfig

    cfg = TorchBackendConfig(backend="nccl", timeout_s=60)
    assert cfg.framework == TrainingFramework.TORCH
    assert cfg.to_dict() == {"backend": "nccl", "init_method": "env", "timeout_s": 60}
    assert cfg.backend_cls.share_cuda_visible_devices  # GPUs of a node visible to its ranks, as TorchConfig does
