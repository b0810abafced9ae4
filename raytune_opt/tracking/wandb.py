"""Weights & Biases: a run per trial grouped by sweep, the best trial tagged, a sweep-level run.

Each trial's run (id ``<key>-<trial id>``, job type ``trial``, in the group tracking.wandb.group
or the sweep's name) gets the trial's searched config and what identifies the sweep
(``raytune_opt.*``), every epoch's metrics with the epoch as step, and its final status
(summary ``status`` and ``stop_reason``; W&B's state is failed for an errored trial). When the
sweep and its promotion are done, :func:`finish_sweep` (from ``tracking.log_sweep_artifacts``)
tags the best trial's run ``best`` (and the promoted one ``promoted`` when promote.select chose
another) and writes the run ``<key>-sweep`` (job type ``sweep``): results.csv as the
``leaderboard`` table, best.json's figures and the promotion's status in its summary.

``<key>`` is drawn when the sweep starts and kept in ``EXPERIMENT/wandb_run.json``: a resumed
sweep reads it back, so its trials continue their own runs (W&B's ``resume="allow"``), and a new
sweep of the same name gets runs of its own. Offline (``mode: offline``) the runs are written
under ``EXPERIMENT/wandb/``, with no API key and no network; ``wandb sync`` uploads them later.

Ray's ``WandbLoggerCallback`` (ray/air/integrations/wandb.py, read at Ray 2.60) is not used:
it logs ``step=training_iteration`` and every flattened result key (Ray's bookkeeping and the
config included), where the trackers here log the recipe's metrics per epoch; it starts two
Ray actors per trial (a logging actor and a queue actor, each a Ray worker process) and hands
``WANDB_API_KEY`` to them as a runtime_env variable, i.e. through Ray's control plane; it asks
for a key unless the ``WANDB_MODE`` *environment variable* says offline (``mode="offline"``
passed to it still needs one); it opens runs with ``resume=False`` under the bare Tune trial
id, so a resumed sweep cannot continue them; and it has no best tag or sweep-level run. Since
wandb 0.19.10 (``reinit="create_new"``) one process holds several runs at once, so this one
logs from the driver like the TensorBoard and MLflow callbacks, through W&B's own service
process and nothing else.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
from pathlib import Path

from ray.tune import Callback

from raytune_opt import _atomic, objectives
from raytune_opt._warn import WarnOnce
from raytune_opt.errors import UsageError
from raytune_opt.experiment import BEST, RESULTS
from raytune_opt.redact import redact
from raytune_opt.tracking import WANDB_RUN
from raytune_opt.tracking._common import epoch_metrics, flat_config

MODES = {"online": "online", "offline": "offline", "disabled": "disabled", "dryrun": "offline", "run": "online"}
# Leaderboard columns of results.csv left out: the config as JSON (its keys are columns of their
# own) and paths on the driver's disk.
_NOT_IN_TABLE = ("config", "checkpoint", "node_id")


def check_wandb(mode: str | None, timeout_s: float = 5.0) -> str:
    """The mode the runs will use (the spec's, else ``$WANDB_MODE``, else online), checked now,
    before Ray starts: an online mode needs an API key and W&B's server within reach.

    Raises:
        MissingDependencyError: wandb is not installed.
        UsageError: ``$WANDB_MODE`` is no W&B mode, or online W&B has no key or cannot be reached.
    """
    from raytune_opt._imports import require

    env = os.environ.get("WANDB_MODE")
    resolved = MODES.get(mode or env or "online")
    if resolved is None:
        raise UsageError(f"WANDB_MODE={env}: not a W&B mode tracking.wandb can use; set it to online, offline or "
                         "disabled, or set tracking.wandb.mode")
    if resolved == "disabled":
        return resolved
    wandb = require("wandb", "tracking.wandb")
    if resolved == "offline":
        return resolved
    offline = "or set tracking.wandb.mode: offline (no key, no network) and 'wandb sync' the runs later"
    import urllib.error
    import urllib.request

    # The server first: wandb.login below asks it who the key belongs to (a 5 s wait when it is down).
    url = wandb.setup().settings.base_url
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except (OSError, ValueError) as exc:  # URLError, timeouts, a malformed WANDB_BASE_URL
        why = getattr(exc, "reason", None) or exc
        raise UsageError(f"tracking.wandb.mode online: cannot reach W&B at {redact(url)} ({redact(str(why))[:200]}); "
                         f"check the network, WANDB_BASE_URL or the proxy (HTTPS_PROXY), {offline}") from None
    with contextlib.redirect_stderr(io.StringIO()):  # wandb.login says where it found the key
        has_key = wandb.login(prompt=False, verify=False)  # env, settings files, .netrc: W&B's own lookup
    if not has_key:
        raise UsageError(f"tracking.wandb.mode online: no W&B API key (WANDB_API_KEY is unset and 'wandb login' was "
                         f"not run); set WANDB_API_KEY in the environment (never in the spec), run 'wandb login', "
                         f"{offline}")
    return resolved


def _settings():
    import wandb

    # Only what we log: no console capture (the driver prints Tune's and the live view's lines),
    # no system metrics (the driver is not where trials train), no metadata (W&B records
    # sys.argv, and a CLI override may hold a credential), no git, code or requirements, no banners.
    # Offline records reach the run file every 2 s instead of W&B's 15: a killed driver loses less.
    return wandb.Settings(console="off", silent=True, x_disable_meta=True, x_disable_stats=True, disable_git=True,
                          save_code=False, disable_code=True, disable_job_creation=True, x_save_requirements=False,
                          x_transaction_log_flush_interval=2.0)


def _open(rec: dict, run_id: str, **kwargs):
    """Start or continue (``resume="allow"``) the W&B run ``run_id`` of the experiment ``rec``
    (wandb_run.json) beside any other run this process holds."""
    import wandb

    return wandb.init(project=rec["project"], entity=rec["entity"], group=rec["group"], mode=rec["mode"],
                      dir=rec["dir"], id=run_id, resume="allow", reinit="create_new", settings=_settings(), **kwargs)


def run_id(key: str, trial_id: str) -> str:
    """The W&B run id of a trial of the sweep whose key is ``key`` (``"sweep"``: the sweep's run)."""
    return f"{key}-{trial_id}"


def _status(reason: str) -> str:
    """A finished trial's status from its stop reason, in results.csv's words (results.csv, which
    the sweep writes after the fit, stays the record: the leaderboard table is read from it)."""
    if reason in ("completed", "early_stopping"):
        return "ok"
    if reason.startswith("diverged"):
        return "diverged"
    if reason.startswith(objectives.INFEASIBLE):
        return objectives.INFEASIBLE
    return "stopped"


class WandbCallback(Callback):
    """Logs each trial to its W&B run from the driver, as Tune reports it.

    Args:
        spec: the sweep's spec (tracking.wandb set).
        exp_dir: the experiment's local directory (wandb_run.json; offline runs under wandb/).
        where: the experiment's location for the runs' config (redacted).
        mode: online or offline (:func:`check_wandb`).
    """

    def __init__(self, spec, exp_dir: str | Path, where: str, mode: str):
        s = spec.settings
        wb = s.tracking.wandb
        self.spec, self.exp_dir = spec, Path(exp_dir)
        self.rec = {"project": wb.project, "entity": wb.entity, "group": wb.group or spec.name, "mode": mode,
                    "dir": str(self.exp_dir), "experiment": spec.name, "key": None,
                    "sweep_config": {"search.algorithm": s.search.algorithm, "search.metric": s.search.metric,
                                     "search.mode": s.search.mode, "search.num_samples": s.search.num_samples,
                                     "scheduler.name": s.scheduler.name, "train.epochs": s.train.epochs,
                                     "raytune_opt.experiment": spec.name, "raytune_opt.spec_sha256": spec.sha256(),
                                     "raytune_opt.experiment_dir": redact(where)}}
        self._live()
        self._warn = WarnOnce(f"W&B logging ({mode}, project {wb.project})", self.exp_dir)

    def _live(self) -> None:
        self._runs, self._next, self._config = {}, {}, {}

    def __getstate__(self):  # Tune pickles its callbacks with the Tuner (tuner.pkl): no live run in it
        state = self.__dict__.copy()
        state.update(_runs={}, _next={}, _config={})
        return state

    def setup(self, **info):
        try:
            path = self.exp_dir / WANDB_RUN
            try:
                old = json.loads(path.read_text())  # a resumed sweep: its runs keep their ids
            except (OSError, ValueError):
                old = {}
            self.rec["key"] = old.get("key") or secrets.token_hex(4)
            _atomic.write_json(path, {**old, **self.rec})
        except Exception as exc:
            self._warn(exc)

    def _run(self, trial):
        if self.rec["key"] is None or self._warn.warned:  # off after its first failure: one warning, no retries
            return None
        run = self._runs.get(trial.trial_id)
        if run is None:
            config = flat_config(trial, self.spec)
            ident = {"raytune_opt.trial_id": trial.trial_id, **{k: v for k, v in self.rec["sweep_config"].items()
                                                                if k.startswith("raytune_opt.")}}
            # Blocks the driver while W&B opens the run (offline ~0.1-1 s here; online a round trip).
            run = self._runs[trial.trial_id] = _open(self.rec, run_id(self.rec["key"], trial.trial_id),
                                                     name=f"trial {trial.trial_id}", job_type="trial",
                                                     config={**config, **ident})
            # W&B drops a step below its last one: a resumed (online) run starts after it.
            self._next[trial.trial_id] = max(1, int(getattr(run, "starting_step", 0) or 0))
            self._config[trial.trial_id] = config
        return run

    def on_trial_start(self, iteration, trials, trial, **info):
        try:
            self._run(trial)
        except Exception as exc:
            self._warn(exc)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        try:
            run = self._run(trial)
            epoch, metrics = epoch_metrics(result, *dict(objectives.objectives(self.spec.settings.search)))
            # An epoch already logged (a trial resumed from an earlier checkpoint, a PBT exploit of a
            # donor behind it) is not logged again: W&B would drop it with a warning.
            if run is None or epoch is None or epoch < self._next[trial.trial_id]:
                return
            config = flat_config(trial, self.spec)
            if config != self._config[trial.trial_id]:  # PBT changed it
                run.config.update(config, allow_val_change=True)
                self._config[trial.trial_id] = config
            run.log({**metrics, "epoch": epoch}, step=epoch, commit=True)  # now, not when the next epoch comes
            self._next[trial.trial_id] = epoch + 1
        except Exception as exc:
            self._warn(exc)

    def _end(self, trial, status: str | None, exit_code: int) -> None:
        try:
            run = self._run(trial)
            if run is None:
                return
            reason = str((trial.last_result or {}).get("stop_reason") or ("error" if exit_code else ""))
            run.summary.update({"status": status or _status(reason),
                                "stop_reason": reason or "stopped by the scheduler"})
            self._runs.pop(trial.trial_id, None)
            run.finish(exit_code=exit_code)
        except Exception as exc:
            self._warn(exc)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, None, 0)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "error", 1)

    def on_experiment_end(self, trials, **info):
        known = {t.trial_id: t for t in trials or ()}
        for tid in list(self._runs):  # trials the sweep ended without ending them
            try:
                if tid in known:
                    self._end(known[tid], "unfinished", 0)
                else:
                    self._runs.pop(tid).finish(exit_code=0)
            except Exception as exc:
                self._warn(exc)


def finish_sweep(exp_dir: str | Path) -> None:
    """After the sweep and its promotion: tag the best (and the promoted) trial's run and write
    the sweep-level run with the leaderboard. Warns, never raises."""
    exp_dir = Path(exp_dir)
    warn = WarnOnce("W&B sweep run", exp_dir, then="the sweep's own files are complete")
    try:
        path = exp_dir / WANDB_RUN
        rec = json.loads(path.read_text())
        if not rec.get("key"):
            return
        best = _read_json(exp_dir / BEST)
        manifest = _read_json(exp_dir / "promotion" / "manifest.json")
        want: dict[str, list] = {}
        if best.get("trial_id"):
            want.setdefault(best["trial_id"], []).append("best")
        promoted = (manifest.get("source") or {}).get("trial_id")
        if promoted and promoted != best.get("trial_id"):
            want.setdefault(promoted, []).append("promoted")
        had = rec.get("tags") or {}
        # A resumed sweep may have a new best: the run that had the tag loses it.
        for tid in sorted(set(want) | set(had)):
            if sorted(want.get(tid, [])) != sorted(had.get(tid, [])):
                run = _open(rec, run_id(rec["key"], tid))
                run.tags = tuple(want.get(tid, []))
                run.finish()
        run = _open(rec, run_id(rec["key"], "sweep"), name=rec["experiment"], job_type="sweep",
                    config=rec.get("sweep_config") or {})
        table = _leaderboard(exp_dir / RESULTS, best)
        if table is not None:
            run.log({"leaderboard": table})
        run.summary.update(_sweep_summary(best, manifest))
        run.finish()
        _atomic.write_json(path, {**rec, "tags": want})
    except Exception as exc:  # a tracker is a view; the files in exp_dir are the record
        warn(exc)


def _read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _cell(column: str, text: str):
    if text == "":
        return None
    if column.startswith(("best_", "last_", "config.")) or column in ("epochs", "seconds", "train_seconds"):
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if column == "epochs" else number
    return text


def _leaderboard(path: Path, best: dict):
    """results.csv as a wandb.Table, best first by the sweep's metric (None: no results.csv)."""
    import wandb

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    if not rows:
        return None
    columns = [c for c in rows[0] if c not in _NOT_IN_TABLE]
    data = [[_cell(c, r[c]) for c in columns] for r in rows]
    key = f"best_{best.get('metric')}"
    if key in columns:  # the leaderboard's order; trials without a value last
        i, sign = columns.index(key), (-1 if best.get("mode") == "max" else 1)
        data.sort(key=lambda row: (0, sign * row[i]) if isinstance(row[i], float) else (1, 0.0))
    # A config column mixes a value with the blanks of trials where it was inactive: W&B types it
    # from the values.
    return wandb.Table(columns=columns, data=data, allow_mixed_types=True)


def _sweep_summary(best: dict, manifest: dict) -> dict:
    out: dict = {}
    if best.get("trial_id"):
        out.update({"best_trial": best["trial_id"], "best_epochs": best.get("epochs")})
        out.update({f"best_{k}": v for k, v in (best.get("metrics") or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
        test = best.get("test") or {}
        out.update({k: v for k, v in (test.get("metrics") or {}).items() if isinstance(v, (int, float))})
    if manifest:
        out["promotion_status"] = manifest.get("status")
        out["promoted_trial"] = (manifest.get("source") or {}).get("trial_id")
        out["promotion_artifacts"] = {a.get("name"): a.get("status") for a in manifest.get("artifacts") or ()}
    return out
