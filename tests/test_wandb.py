"""Weights & Biases: offline runs read back with W&B's own reader of its run files
(``wandb-core leet inspect --json``, what ``wandb leet inspect`` runs), with no network: every
W&B server address points at a local listener that must see no connection.

The callback is driven here with the calls Tune makes (tests/test_tracking.py's trials); a real
sweep's runs are checked by :func:`check_sweep_wandb` from tests/test_sweep.py's conditional sweep.
"""

from __future__ import annotations

import base64
import csv
import json
import pickle
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from raytune_opt.cli import main
from raytune_opt.spec import load_spec

wandb = pytest.importorskip("wandb", reason="needs the wandb extra (pip install -e '.[test]')")

from tests._listener import Listener  # noqa: E402
from tests.test_tracking import CONDITIONAL, TRIALS, FakeTrial, _drive, _epochs  # noqa: E402


def _offline(tmp_path, monkeypatch, proxy: bool):
    for var, sub in (("WANDB_DIR", "wandb_dir"), ("WANDB_CACHE_DIR", "wandb_cache"),
                     ("WANDB_DATA_DIR", "wandb_data"), ("WANDB_CONFIG_DIR", "wandb_config")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    net = Listener()
    monkeypatch.setenv("WANDB_BASE_URL", net.url)
    if proxy:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(var, net.url)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(var, "")
    wandb.teardown()  # settings are read once per process: start from this environment
    yield net
    wandb.teardown()
    net.close()
    assert net.connections == [], f"W&B offline contacted {net.url}: {net.connections}"


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, its own directories under tmp_path, its server and any proxy a listener that
    must get no connection (the first line of each is kept: whom it was for); W&B's process-wide
    state torn down after."""
    yield from _offline(tmp_path, monkeypatch, proxy=True)


@pytest.fixture
def offline_wandb_in_a_sweep(tmp_path, monkeypatch):
    """:func:`offline_wandb` without the proxy, for a whole sweep: there Ray talks to the machine's
    own address, and MLflow's client and the report's Chromium phone home through a proxy
    (config.mlflow-telemetry.io, update.googleapis.com: seen 2026-12-06). W&B's server is still
    the listener; the driven tests above keep the proxy."""
    yield from _offline(tmp_path, monkeypatch, proxy=False)


def read_runs(wandb_dir: Path) -> dict[str, list[list[dict]]]:
    """Every offline run under ``wandb_dir`` by run id: each segment's records (a resumed run has
    one segment per process that opened it), in the order the segments started."""
    from wandb.util import get_core_path

    segments = []
    for f in Path(wandb_dir).glob("offline-run-*/run-*.wandb"):
        out = subprocess.run([get_core_path(), "leet", "inspect", "--no-observability", "--json", "--run-file", str(f),
                              str(wandb_dir)], capture_output=True, text=True, check=True, timeout=60).stdout
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        run = next((r["run"] for r in records if r["type"] == "run"), None)
        if run is not None:  # None: a wandb.init that failed before it wrote the run
            segments.append((run["start_time"], run["run_id"], records))
    runs: dict = {}
    for _, rid, records in sorted(segments):
        runs.setdefault(rid, []).append(records)
    return runs


def config(segments: list[list[dict]]) -> dict:
    out: dict = {}
    for records in segments:
        for r in records:
            if r["type"] in ("run", "config"):
                out.update(((r.get("run") or r).get("config") or {}).get("update") or {})
    out.pop("_wandb", None)
    return out


def history(segments: list[list[dict]], key: str) -> list[tuple[int, float]]:
    return [(int(r["history"]["step"]["num"]), r["history"]["item"][key]) for records in segments for r in records
            if r["type"] == "history" and key in r["history"]["item"]]


def summary(segments: list[list[dict]]) -> dict:
    out: dict = {}
    for records in segments:
        for r in records:
            if r["type"] == "summary":
                out.update(r["summary"]["update"])
    return out


def last(segments: list[list[dict]], kind: str) -> dict | None:
    found = [r[kind] for records in segments for r in records if r["type"] == kind]
    return found[-1] if found else None


def tags(segments: list[list[dict]]) -> list:
    """The tags the run has after its last segment (W&B sets them whole)."""
    out: list = []
    for records in segments:
        for r in records:
            if r["type"] == "run" and "tags" in r["run"]:
                out = r["run"]["tags"]
    return out


def _callback(tmp_path: Path, spec=None, project: str = "cond", name: str = "cond"):
    from raytune_opt.tracking.wandb import WandbCallback

    spec = spec or load_spec(CONDITIONAL, [f"tracking.wandb.project={project}", "tracking.wandb.mode=offline",
                                           f"name={name}"])
    exp = tmp_path / spec.name
    exp.mkdir(parents=True, exist_ok=True)
    return WandbCallback(spec, exp, str(exp), "offline"), exp


def test_each_trial_gets_an_offline_run_with_its_config_every_epoch_and_its_status(tmp_path, offline_wandb):
    cb, exp = _callback(tmp_path)
    _drive(cb)  # aaa01: 3 epochs, completed; bbb02: stopped by the scheduler after epoch 1
    broken = FakeTrial("ccc03", {"train.optimizer.lr": 0.1, "train.optimizer.name": "adam",
                                 "train.optimizer.beta1": 0.9, "model.name": "mlp", "model.dropout": 0.1})
    cb.on_trial_start(0, [], broken)
    cb.on_trial_result(0, [], broken, _epochs(2, None)[0])
    cb.on_trial_error(0, [], broken)
    key = json.loads((exp / "wandb_run.json").read_text())["key"]
    runs = read_runs(exp / "wandb")
    assert set(runs) == {f"{key}-aaa01", f"{key}-bbb02", f"{key}-ccc03"}
    first, second, third = (runs[f"{key}-{t}"] for t in ("aaa01", "bbb02", "ccc03"))
    run = last(first, "run")
    assert (run["project"], run["run_group"], run["job_type"], run["display_name"]) == ("cond", "cond", "trial",
                                                                                         "trial aaa01")
    cfg = config(first)
    assert cfg["train.optimizer.momentum"] == 0.9 and cfg["model.name"] == "mlp"
    assert cfg["raytune_opt.trial_id"] == "aaa01" and cfg["raytune_opt.experiment"] == "cond"
    assert "train.optimizer.beta1" not in cfg  # inactive there
    assert "train.optimizer.momentum" not in config(second)
    assert history(first, "val_accuracy") == [(1, 0.6), (2, 0.7), (3, pytest.approx(0.8))]  # step = epoch
    assert history(first, "epoch") == [(1, 1), (2, 2), (3, 3)]
    assert not history(first, "time_total_s")  # Ray's bookkeeping stays out
    assert [s for s, _ in history(second, "val_loss")] == [1]
    assert summary(first)["status"] == "ok" and summary(first)["stop_reason"] == "completed"
    assert summary(second)["status"] == "stopped" and summary(second)["stop_reason"] == "stopped by the scheduler"
    assert summary(third)["status"] == "error"
    assert [last(s, "exit").get("exit_code", 0) for s in (first, second, third)] == [0, 0, 1]  # ccc03: failed
    # Only what we log: no console, no system metrics, no metadata (it would hold sys.argv).
    kinds = {r["type"] for records in first for r in records}
    assert not kinds & {"output_raw", "output", "stats", "environment"}, kinds


_KILLED_DRIVER = """
import os, pickle, signal, sys, time
sys.path[:0] = [{root!r}]
from raytune_opt.spec import load_spec
from raytune_opt.tracking.wandb import WandbCallback
from tests.test_tracking import CONDITIONAL, TRIALS
spec = load_spec(CONDITIONAL, ["tracking.wandb.project=cond", "tracking.wandb.mode=offline", "name=cond"])
cb = WandbCallback(spec, {exp!r}, {exp!r}, "offline")
open({pkl!r}, "wb").write(pickle.dumps(cb))  # what Tune's tuner.pkl holds: the callback before setup
cb.setup()
trial, epochs = TRIALS[0]
cb.on_trial_start(0, [], trial)
for r in epochs[:2]:
    cb.on_trial_result(0, [], trial, r)
import glob, subprocess
from wandb.util import get_core_path
deadline = time.monotonic() + 30
while time.monotonic() < deadline:  # until W&B's service has written epoch 2 to the run file
    files = glob.glob({exp!r} + "/wandb/offline-run-*/run-*.wandb")
    out = subprocess.run([get_core_path(), "leet", "inspect", "--no-observability", "--json", "--run-file", files[0],
                          {exp!r} + "/wandb"], capture_output=True, text=True).stdout if files else ""
    if '"step":{{"num":2}}' in out:
        break
    time.sleep(0.2)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_sweep_resumed_logs_to_the_same_runs(tmp_path, offline_wandb):
    """The driver is killed (-9) after a trial's second epoch; the resumed driver gets the callback
    back from tuner.pkl (pickled before the sweep started), Tune calls setup again, and the trial,
    restarted from its last checkpoint, reports epoch 2 again and then 3. Only the driver and its
    callback are run: no Ray (the ids, not a sweep, are under test)."""
    import os
    import sys

    exp, pkl = tmp_path / "cond", tmp_path / "tuner_callback.pkl"
    exp.mkdir()
    script = _KILLED_DRIVER.format(root=str(Path(__file__).resolve().parents[1]), exp=str(exp), pkl=str(pkl))
    (tmp_path / "tmp").mkdir()  # W&B's temporary directories of the killed process, which nothing removes
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert proc.returncode == -9, proc.stderr[-2000:]
    key = json.loads((exp / "wandb_run.json").read_text())["key"]
    restored = pickle.loads(pkl.read_bytes())
    assert restored.rec["key"] is None  # drawn at setup, read back from wandb_run.json
    restored.setup()
    assert restored.rec["key"] == key
    trial, epochs = TRIALS[0]
    restored.on_trial_start(0, [], trial)
    for r in epochs[1:]:  # epoch 2 again (its checkpoint was the last), then 3
        trial.last_result = r
        restored.on_trial_result(0, [], trial, r)
    restored.on_trial_complete(0, [], trial)
    runs = read_runs(exp / "wandb")
    assert list(runs) == [f"{key}-aaa01"]
    killed, resumed = runs[f"{key}-aaa01"]
    assert last([resumed], "run")["resume"] is True
    assert last([killed], "exit") is None and last([resumed], "exit") is not None  # the killed one never ended
    assert history([killed], "val_accuracy") == [(1, 0.6), (2, 0.7)]
    # The resumed process does not know W&B's last step offline: it logs the epochs it sees, each
    # step once in its own segment; the server takes the steps past its last when 'wandb sync' uploads.
    assert history([resumed], "val_accuracy") == [(2, 0.7), (3, pytest.approx(0.8))]
    assert summary([resumed])["status"] == "ok"
    # Another sweep of the same name, elsewhere, gets runs of its own.
    other, _ = _callback(tmp_path / "elsewhere")
    other.setup()
    assert other.rec["key"] != key


def test_the_sweep_end_tags_the_best_run_and_writes_the_leaderboard(tmp_path, offline_wandb):
    from raytune_opt.tracking import log_sweep_artifacts
    from tests._experiments import make_experiment

    exp = make_experiment(tmp_path, 6, name="art")
    spec = load_spec(CONDITIONAL, ["tracking.wandb.project=art", "tracking.wandb.mode=offline", "name=art"])
    from raytune_opt.tracking.wandb import WandbCallback

    WandbCallback(spec, exp, str(exp), "offline").setup()
    log_sweep_artifacts(exp)
    best = json.loads((exp / "best.json").read_text())
    key = json.loads((exp / "wandb_run.json").read_text())["key"]
    runs = read_runs(exp / "wandb")
    assert tags(runs[f"{key}-{best['trial_id']}"]) == ["best"]
    sweep = runs[f"{key}-sweep"]
    assert last(sweep, "run")["job_type"] == "sweep"
    assert config(sweep)["search.metric"] == "val_accuracy"
    assert summary(sweep)["best_trial"] == best["trial_id"]
    assert summary(sweep)["best_val_accuracy"] == pytest.approx(best["value"])
    assert summary(sweep)["promotion_status"] == "ok"
    with open(exp / "results.csv") as f:
        rows = list(csv.DictReader(f))
    (table_file,) = (exp / "wandb").glob(f"offline-run-*-{key}-sweep*/files/media/table/leaderboard_*.table.json")
    table = json.loads(table_file.read_text())
    assert len(table["data"]) == len(rows) == 6
    col = table["columns"]
    assert table["data"][0][col.index("trial_id")] == best["trial_id"]  # best first
    assert {r[col.index("trial_id")] for r in table["data"]} == {r["trial_id"] for r in rows}
    assert "config" not in col and "checkpoint" not in col and "config.train.optimizer.lr" in col
    # A resumed sweep with another best: the tag moves.
    other = next(r["trial_id"] for r in rows if r["trial_id"] != best["trial_id"] and r["status"] == "ok")
    (exp / "best.json").write_text(json.dumps({**best, "trial_id": other}))
    log_sweep_artifacts(exp)
    runs = read_runs(exp / "wandb")
    assert tags(runs[f"{key}-{other}"]) == ["best"]
    assert tags(runs[f"{key}-{best['trial_id']}"]) == ["promoted"]  # still what the promotion was built from
    assert len(runs[f"{key}-sweep"]) == 2  # the same sweep-level run, resumed


def check_sweep_wandb(exp_dir: Path, rows: list[dict]) -> None:
    """A real sweep's W&B runs: one per trial with its active config and every epoch of its
    history, the best tagged, the sweep-level run with one leaderboard row per trial."""
    rec = json.loads((exp_dir / "wandb_run.json").read_text())
    runs = read_runs(exp_dir / "wandb")
    assert set(runs) == {f"{rec['key']}-{r['trial_id']}" for r in rows} | {f"{rec['key']}-sweep"}
    best = json.loads((exp_dir / "best.json").read_text())["trial_id"]
    for r in rows:
        segments = runs[f"{rec['key']}-{r['trial_id']}"]
        cfg = {k: v for k, v in config(segments).items() if not k.startswith("raytune_opt.")}
        assert cfg == json.loads(r["config"]), r["trial_id"]
        with open(exp_dir / "history" / f"{r['trial_id']}.csv") as f:
            hist = [(int(float(h["epoch"])), float(h["val_accuracy"])) for h in csv.DictReader(f)]
        logged = history(segments, "val_accuracy")
        assert [s for s, _ in logged] == [e for e, _ in hist], r["trial_id"]
        assert [v for _, v in logged] == pytest.approx([v for _, v in hist]), r["trial_id"]
        assert summary(segments)["status"] == r["status"], r["trial_id"]
        assert tags(segments) == (["best"] if r["trial_id"] == best else [])
    (table_file,) = exp_dir.glob(f"wandb/offline-run-*-{rec['key']}-sweep*/files/media/table/leaderboard_*.table.json")
    assert len(json.loads(table_file.read_text())["data"]) == len(rows)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def refusing_server():
    """A local HTTP server standing for W&B's that answers 401 to every request."""
    import http.server

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"errors": ["unauthorized"]}')

        do_GET = do_HEAD = do_PUT = do_POST

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


KEY = "k3y-" + "s3cr3t" * 7  # a made-up API key


def test_online_w_and_b_without_a_server_or_a_key_is_one_line_before_ray_starts(tmp_path, capsys, monkeypatch,
                                                                                 refusing_server):
    from raytune_opt import ray_runtime

    monkeypatch.setattr(ray_runtime, "start", lambda *a, **k: pytest.fail("Ray started"))
    for var in ("WANDB_MODE", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no.netrc"))  # no 'wandb login' either
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("HOME", str(tmp_path))
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    args = ["run", str(CONDITIONAL), "tracking.wandb.project=p", "name=t", "--storage", str(tmp_path)]
    wandb.teardown()  # settings are read once per process
    try:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"tracking.wandb.mode online: cannot reach W&B at {url}"), err
        assert "s3cr3t" not in err[0]
        monkeypatch.setenv("WANDB_BASE_URL", refusing_server)  # it answers; now there is no key
        monkeypatch.delenv("WANDB_API_KEY")
        wandb.teardown()
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tracking.wandb.mode online: no W&B API key"), err
    finally:
        wandb.teardown()
    assert not (tmp_path / "t").exists()


def test_the_api_key_reaches_no_file_and_no_line(tmp_path, capsys, monkeypatch, refusing_server):
    """Online, against a local server that refuses the key: one warning, the trials go on, and
    the key (nor its base64 form in W&B's Authorization header) is in nothing written or printed."""
    for var, value in (("WANDB_API_KEY", KEY), ("WANDB_BASE_URL", refusing_server),
                       ("WANDB_CONFIG_DIR", str(tmp_path / "cfg")), ("WANDB_CACHE_DIR", str(tmp_path / "cache")),
                       ("WANDB_DATA_DIR", str(tmp_path / "data")), ("NETRC", str(tmp_path / "no.netrc"))):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    wandb.teardown()
    from raytune_opt.tracking.wandb import WandbCallback, check_wandb

    try:
        assert check_wandb(None) == "online"  # a key, and a server that answers
        spec = load_spec(CONDITIONAL, ["tracking.wandb.project=p", "name=sec"])
        exp = tmp_path / "sec"
        exp.mkdir()
        _drive(WandbCallback(spec, exp, str(exp), "online"))
    finally:
        wandb.teardown()
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("raytune-opt:")]
    assert len(ours) == 1 and "W&B logging (online, project p) failed" in ours[0], err
    secrets = (KEY, base64.b64encode(f"api:{KEY}".encode()).decode()[:40])
    assert not any(s in err for s in secrets)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.parent.name == "logs" for p in written)  # W&B's debug logs were written...
    for p in written:  # ...and hold no key
        text = p.read_bytes().decode("utf-8", "replace")
        assert not any(s in text for s in secrets), p


def test_validate_names_the_missing_extra_and_its_install_line(monkeypatch):
    import raytune_opt
    from raytune_opt import _imports

    # W&B settings are part of the hash (resume refuses a changed one); unset, they are left out of
    # it (tests/spec/test_spec_hash.py: every older experiment still resumes).
    assert load_spec(CONDITIONAL).sha256() != load_spec(CONDITIONAL, ["tracking.wandb.project=p"]).sha256()
    real = _imports.is_available
    monkeypatch.setattr(_imports, "is_available", lambda m: False if m == "wandb" else real(m))
    problems = raytune_opt.validate(CONDITIONAL, ["tracking.wandb.project=p"])
    assert [(p.key, p.fix) for p in problems] == [("tracking.wandb.project",
                                                   "install the wandb extra: pip install 'raytune-opt[wandb]'")]
    assert "'wandb', which is not installed" in problems[0].message
    assert raytune_opt.validate(CONDITIONAL, ["tracking.wandb.project=p", "tracking.wandb.mode=disabled"]) == []
