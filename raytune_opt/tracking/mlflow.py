"""MLflow: a parent run for the sweep and a nested run per trial (params, per-epoch metrics, status).

Through ``MlflowClient`` with explicit run ids (no ``mlflow.start_run`` global state in the
driver). The parent run's id is kept in ``EXPERIMENT/mlflow_run.json`` so that the best
checkpoint, the promotion and the report are logged to it when the sweep is done.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ray.tune import Callback

from raytune_opt import objectives
from raytune_opt import _atomic
from raytune_opt._warn import WarnOnce
from raytune_opt.redact import redact
from raytune_opt.tracking._common import epoch_metrics, flat_config, mlflow_client


class MLflowCallback(Callback):
    def __init__(self, tracking_uri: str, experiment: str, spec, exp_dir: Path):
        self.tracking_uri, self.experiment, self.spec, self.exp_dir = tracking_uri, experiment, spec, Path(exp_dir)
        self._runs: dict = {}
        self._parent = None
        self._client = None
        self._warn = WarnOnce(f"MLflow logging to {redact(tracking_uri)}", self.exp_dir)

    def setup(self, **info):
        try:
            self._client = mlflow_client(self.tracking_uri)
            exp = self._client.get_experiment_by_name(self.experiment)
            self._exp_id = exp.experiment_id if exp else self._client.create_experiment(self.experiment)
            s = self.spec.settings
            parent = self._client.create_run(self._exp_id, run_name=self.spec.name, tags={
                "raytune_opt.experiment_dir": str(self.exp_dir), "raytune_opt.spec_sha256": self.spec.sha256()})
            self._parent = parent.info.run_id
            self._client.log_batch(self._parent, params=_params({
                "search.algorithm": s.search.algorithm, "search.metric": s.search.metric,
                "search.mode": s.search.mode, "search.num_samples": s.search.num_samples,
                "scheduler.name": s.scheduler.name, "train.epochs": s.train.epochs}))
            _atomic.write_json(self.exp_dir / "mlflow_run.json", {
                "tracking_uri": redact(self.tracking_uri), "experiment": self.experiment, "experiment_id": self._exp_id,
                "parent_run_id": self._parent})
        except Exception as exc:
            self._warn(exc)

    def _run(self, trial):
        if self._parent is None or self._warn.warned:  # off after its first failure: one warning, no retries
            return None
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            run = self._client.create_run(self._exp_id, run_name=f"trial {trial.trial_id}", tags={
                "mlflow.parentRunId": self._parent, "raytune_opt.trial_id": trial.trial_id})
            run_id = self._runs[trial.trial_id] = run.info.run_id
            self._client.log_batch(run_id, params=_params(flat_config(trial, self.spec)))
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        try:
            self._run(trial)
        except Exception as exc:
            self._warn(exc)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        try:
            run_id = self._run(trial)
            epoch, metrics = epoch_metrics(result, *dict(objectives.objectives(self.spec.settings.search)))
            if run_id is None or epoch is None:
                return
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._client.log_batch(run_id, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])
        except Exception as exc:
            self._warn(exc)

    def _end(self, trial, status: str, stop_reason: str = "") -> None:
        try:
            run_id = self._run(trial)
            if run_id is None:
                return
            reason = (trial.last_result or {}).get("stop_reason") or stop_reason
            self._client.set_tag(run_id, "raytune_opt.stop_reason", str(reason or "stopped by the scheduler"))
            self._client.set_terminated(run_id, status)
        except Exception as exc:
            self._warn(exc)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED", "error")

    def on_experiment_end(self, trials, **info):
        try:
            if self._parent is not None and not self._warn.warned:
                failed = trials and all(t.status == "ERROR" for t in trials)
                self._client.set_terminated(self._parent, "FAILED" if failed else "FINISHED")
        except Exception as exc:
            self._warn(exc)


def _params(d: dict) -> list:
    from mlflow.entities import Param

    return [Param(str(k), json.dumps(v) if isinstance(v, (list, dict)) else str(v)[:6000]) for k, v in d.items()]
