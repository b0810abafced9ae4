"""TensorBoard event files: EXPERIMENT/tensorboard/<trial>/, one step per epoch, plus hparams.

``tensorboard --logdir EXPERIMENT/tensorboard`` then compares trials, and its HPARAMS tab
lists each trial's configuration against its best and last value of the sweep's metric.
"""

from __future__ import annotations

from pathlib import Path

from ray.tune import Callback

from raytune_opt import objectives
from raytune_opt._warn import WarnOnce
from raytune_opt.tracking._common import epoch_metrics, flat_config


class TensorBoardCallback(Callback):
    """Writes each trial's epochs as they are reported (in the driver, no worker involved)."""

    def __init__(self, logdir: str | Path, spec):
        self.logdir, self.spec = Path(logdir), spec
        self._writers: dict = {}
        self._best: dict = {}
        self._warn = WarnOnce(f"TensorBoard logging to {self.logdir}", self.logdir.parent)  # the experiment

    def _writer(self, trial):
        w = self._writers.get(trial.trial_id)
        if w is None:
            from torch.utils.tensorboard import SummaryWriter

            w = self._writers[trial.trial_id] = SummaryWriter(log_dir=str(self.logdir / trial.trial_id))
        return w

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self._warn.warned:  # off after its first failure
            return
        try:
            epoch, metrics = epoch_metrics(result, *dict(objectives.objectives(self.spec.settings.search)))
            if epoch is None:
                return
            w = self._writer(trial)
            for k, v in metrics.items():
                w.add_scalar(k, v, global_step=epoch)
            metric, mode = objectives.primary(self.spec.settings.search)
            if metric in metrics:
                old = self._best.get(trial.trial_id)
                v = metrics[metric]
                if old is None or (v > old if mode == "max" else v < old):
                    self._best[trial.trial_id] = v
            w.flush()
        except Exception as exc:  # never fail a trial for a view of it
            self._warn(exc)

    def _close(self, trial, status: str) -> None:
        if self._warn.warned:
            return
        try:
            from torch.utils.tensorboard.summary import hparams

            w = self._writer(trial)
            metric = objectives.primary(self.spec.settings.search)[0]
            config = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                      for k, v in flat_config(trial, self.spec).items()}
            config["status"] = status
            best = self._best.get(trial.trial_id)
            final = {f"hparam/best_{metric}": best if best is not None else float("nan")}
            # The hparams plugin's three summaries in the trial's own event file (SummaryWriter.add_hparams
            # would open a sub-run directory per call instead).
            for summary in hparams(config, final):
                w.file_writer.add_summary(summary)
            for k, v in final.items():
                w.add_scalar(k, v)
            w.close()
            self._writers.pop(trial.trial_id, None)
        except Exception as exc:
            self._warn(exc)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "complete")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "error")

    def on_experiment_end(self, trials, **info):
        for w in list(self._writers.values()):
            try:
                w.close()
            except Exception as exc:
                self._warn(exc)
        self._writers.clear()
