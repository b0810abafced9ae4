"""Two Ray nodes on loopback with storage on a real S3-compatible server (moto, loopback).

The head node and a worker node each have one CPU, so two one-worker trials at once land
on both nodes, and a two-worker trial has a rank on each. The worker node runs in its own
mount namespace with an empty tmpfs over one directory (where the machine allows it): a
path there is node-local, which ``run`` must refuse.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cluster.conftest import VENV_BIN, HeadNode, S3Server, WorkerNode, can_unshare

pytestmark = pytest.mark.cluster

SPEC = "search_spaces/digits_cnn.yaml"


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3):
    private = tempfile.mkdtemp(prefix="rtpriv", dir="/tmp") if can_unshare() else None
    head = HeadNode(extra_env=s3.creds, num_cpus=1)
    try:
        worker = WorkerNode(head, num_cpus=1, private_dir=private)
    except Exception:
        head.stop()
        raise
    yield head, worker, private
    worker.stop()
    head.stop()
    if private:
        shutil.rmtree(private, ignore_errors=True)


def _cli(args: list[str], env: dict, timeout: float = 540) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "raytune-opt"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=os.getcwd())


def _env(head: HeadNode, s3: S3Server, tmp_path) -> dict:
    # The S3 mirror (the cache root's s3/) goes to the test's directory, not the machine's cache.
    return {**head.env, **s3.creds, "RAYTUNE_OPT_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def _s3_sweep(head: HeadNode, s3: S3Server, tmp_path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    """``raytune-opt run`` of the digits spec on the cluster, into s3://BUCKET/exp/NAME."""
    return _cli(["run", SPEC, f"name={name}", f"storage.path=s3://{s3.bucket}/exp",
                 f"storage.endpoint_url={s3.endpoint}", "train.epochs=2", *overrides, "--address", head.gcs],
                _env(head, s3, tmp_path))


def _object(s3: S3Server, key: str) -> bytes:
    return s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()


def test_sweep_on_two_nodes_with_s3_storage_and_promotion_from_the_bucket(cluster, s3, tmp_path):
    head, worker, _ = cluster
    proc = _s3_sweep(head, s3, tmp_path, "two-nodes", "search.num_samples=4", "resources.max_concurrent_trials=2",
                     "promote.targets=[onnx,int8]")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "results: s3://sweeps/exp/two-nodes" in proc.stdout

    keys = set(s3.keys("exp/two-nodes/"))
    for name in ("spec.yaml", "results.csv", "best.json", "promotion/manifest.json", "promotion/model.onnx"):
        assert f"exp/two-nodes/{name}" in keys, sorted(keys)[:50]
    rows = list(csv.DictReader(io.StringIO(_object(s3, "exp/two-nodes/results.csv").decode())))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), rows
    # Trials ran on both nodes: the worker node's id and one other (the head's).
    nodes = {r["node_id"] for r in rows}
    assert worker.node_id in nodes and len(nodes) == 2, (nodes, worker.node_id)
    # Every trial's checkpoint is in the bucket.
    for r in rows:
        assert r["checkpoint"].startswith(f"s3://{s3.bucket}/exp/two-nodes/trial_"), r["checkpoint"]
        assert r["checkpoint"][len(f"s3://{s3.bucket}/"):] + "/best.pt" in keys

    best = json.loads(_object(s3, "exp/two-nodes/best.json"))
    manifest = json.loads(_object(s3, "exp/two-nodes/promotion/manifest.json"))
    # Promotion read the best checkpoint from the bucket (and says so).
    assert best["checkpoint"].startswith("s3://") and manifest["source"]["checkpoint"] == best["checkpoint"]
    arts = {a["name"]: a for a in manifest["artifacts"]}
    assert arts["onnx"]["status"] == "ok"
    # One split on both nodes: the best trial's model (trained on either) scores on the driver's
    # validation split what it reported there, and the driver measured it once on the 359 test images.
    assert arts["pytorch"]["accuracy"] == pytest.approx(best["value"])
    assert best["test"]["samples"] == 359 and best["test"]["trial_id"] == best["trial_id"]
    assert arts["pytorch"]["test_accuracy"] == pytest.approx(best["test"]["metrics"]["test_accuracy"])

    # `promote` straight from the bucket, with nothing local: a fresh cache.
    env = {**_env(head, s3, tmp_path), "RAYTUNE_OPT_CACHE": str(tmp_path / "cache2")}
    again = _cli(["promote", f"s3://{s3.bucket}/exp/two-nodes", "--endpoint-url", s3.endpoint, "--targets", "onnx"],
                 env, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "manifest: s3://sweeps/exp/two-nodes/promotion/manifest.json" in again.stdout
    # The fresh cache split the data again, the same way: the same test figure.
    redone = {a["name"]: a for a in json.loads(_object(s3, "exp/two-nodes/promotion/manifest.json"))["artifacts"]}
    assert redone["pytorch"]["test_accuracy"] == arts["pytorch"]["test_accuracy"]


def test_an_s3_sweep_killed_mid_way_resumes_from_the_bucket_alone(cluster, s3, tmp_path):
    EPOCHS = 48  # noqa: N806 — a constant of this test
    import signal
    import time

    from tests._procs import kill_tree

    head, _, _ = cluster
    name = "s3-resume"
    cmd = [str(VENV_BIN / "raytune-opt"), "run", SPEC, f"name={name}", f"storage.path=s3://{s3.bucket}/exp",
           f"storage.endpoint_url={s3.endpoint}", "search={algorithm: random, num_samples: 4}",
           # Long enough that the bucket's state (synced every 10 s) knows running trials before the
           # end: with 16 epochs a fast machine finished the sweep first (CI, 2026-12-02).
           "scheduler={name: fifo}", f"train.epochs={EPOCHS}", "train.limit_batches=16", "promote.enabled=false",
           "--address", head.gcs]
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cmd, env=_env(head, s3, tmp_path), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    prefix = f"exp/{name}/"
    try:
        deadline, seen_at = time.monotonic() + 300, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            page = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents", [])
            lasts = [o for o in page if o["Key"].endswith("/ckpt/last.pt")]
            if seen_at is None and len(lasts) >= 2:
                seen_at = max(o["LastModified"] for o in lasts)
            states = [o for o in page if "/experiment_state-" in o["Key"]]
            if seen_at is not None and states and max(o["LastModified"] for o in states) > seen_at:
                break  # the bucket's experiment state knows the running trials
            time.sleep(0.5)
        else:
            pytest.fail("the sweep never checkpointed two trials and synced its state")
    finally:
        kill_tree(proc.pid, signal.SIGKILL)
        log.close()
    assert f"{prefix}results.csv" not in set(s3.keys(prefix))
    # A complete copy of Tune's state of one save: the bucket's files may be of two (tune_state.py).
    assert [k for k in s3.keys(f"{prefix}.tune-state/") if k.endswith(".zip")], s3.keys(prefix)

    # Nothing local: a fresh cache.
    env = {**_env(head, s3, tmp_path), "RAYTUNE_OPT_CACHE": str(tmp_path / "fresh")}
    again = _cli(["resume", f"s3://{s3.bucket}/exp/{name}", "--endpoint-url", s3.endpoint, "--address", head.gcs],
                 env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(_object(s3, f"{prefix}results.csv").decode())))
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4, rows
    assert all(r["status"] == "ok" and r["epochs"] == str(EPOCHS) for r in rows), rows
    for r in rows:
        hist = list(csv.DictReader(io.StringIO(_object(s3, f"{prefix}history/{r['trial_id']}.csv").decode())))
        epochs = [int(float(h["epoch"])) for h in hist]
        assert epochs[0] == 1 and epochs == sorted(set(epochs)) and epochs[-1] == EPOCHS, (r["trial_id"], epochs)
    # (A trial interrupted mid-way that started again from epoch 1 would show its first
    # epochs twice in its history: Tune keeps the trial's results across the resume.)


@pytest.mark.parametrize("warm", [pytest.param(False, marks=pytest.mark.exhaustive), True], ids=["per-trial", "warm"])
def test_two_worker_trial_with_a_rank_on_each_node_checkpoints_to_s3(cluster, s3, tmp_path, warm):
    # Warm: the slot's group spans both nodes (one CPU each) and keeps its Train run on S3.
    head, worker, _ = cluster
    name = "ddp-two-nodes-warm" if warm else "ddp-two-nodes"
    proc = _s3_sweep(head, s3, tmp_path, name, "search.num_samples=1", "resources.num_workers=2",
                     f"resources.warm_workers={str(warm).lower()}", "promote.enabled=false")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(_object(s3, f"exp/{name}/results.csv").decode())))
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["epochs"] == "2", rows
    keys = set(s3.keys(f"exp/{name}/"))
    ckpt = rows[0]["checkpoint"]
    assert ckpt.startswith("s3://") and ckpt[len(f"s3://{s3.bucket}/"):] + "/best.pt" in keys, (ckpt, sorted(keys))
    # One CPU per node: the two DDP ranks had to be on different nodes, and stayed in sync.
    hist = list(csv.DictReader(io.StringIO(_object(s3, f"exp/{name}/history/{rows[0]['trial_id']}.csv")
                                           .decode())))
    assert float(hist[-1]["rank_param_max_diff"]) == 0.0


def test_a_node_local_storage_path_is_refused_on_a_multi_node_cluster(cluster, s3, tmp_path):
    head, _, private = cluster
    if private is None:
        pytest.skip("no private mount namespace here (unshare --mount needs root): cannot make a node-local path")
    target = os.path.join(private, "results")
    proc = _cli(["run", SPEC, "name=local-only", "--address", head.gcs, f"--storage={target}"],
                _env(head, s3, tmp_path), timeout=180)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    # This cluster runs without token auth: one warning line says so (issue 25), then the refusal.
    warning, *err = proc.stderr.strip().splitlines()
    assert warning.startswith("raytune-opt: warning: the Ray cluster at 127.0.0.1:") and \
        "runs without token authentication" in warning, warning
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert err[0].startswith(f"storage.path {target}: not shared by the cluster's 2 nodes"), err[0]
    assert "s3://" in err[0]
    assert not os.path.exists(os.path.join(target, "local-only")), "nothing is written before the refusal"

    # A directory both nodes see passes the same check.
    shared = tmp_path / "shared"
    code = ("import ray, pathlib; from raytune_opt.storage import check_shared; "
            f"ray.init(address={head.gcs!r}, logging_level='ERROR'); check_shared(pathlib.Path({str(shared)!r})); "
            "print('shared-ok')")
    ok = subprocess.run([sys.executable, "-c", code], env=_env(head, s3, tmp_path), capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and "shared-ok" in ok.stdout, ok.stderr[-2000:]
    assert not list(shared.glob(".raytune_opt_shared_*")), "the marker is removed"


@pytest.mark.parametrize("case", ["no-bucket", "unreachable"])
def test_bad_s3_storage_exits_2_with_one_line_before_ray_starts(s3, tmp_path, case):
    path, endpoint = {"no-bucket": ("s3://no-such-bucket/exp", s3.endpoint),
                      "unreachable": (f"s3://{s3.bucket}/exp", "http://127.0.0.1:9")}[case]
    env = {**os.environ, **s3.creds, "RAYTUNE_OPT_CACHE": str(tmp_path), "RAY_AUTH_MODE": "disabled"}
    proc = _cli(["run", SPEC, f"storage.path={path}", f"storage.endpoint_url={endpoint}"], env, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"storage.path {path}"), proc.stderr
    assert {"no-bucket": "does not exist", "unreachable": "endpoint_url"}[case] in err[0]


def test_user_code_the_worker_node_cannot_see_is_shipped_to_it(cluster, s3, tmp_path):
    """The shipped text example (its own data, model and loop) in a directory only the head
    sees: trials on the worker node import it from what `run --address` ships (Ray's
    runtime_env py_modules), not from the driver's path."""
    head, worker, private = cluster
    if private is None:
        pytest.skip("no private mount namespace here (unshare --mount needs root): every node sees every path")
    repo = Path(__file__).resolve().parents[2]
    project = tempfile.mkdtemp(prefix="usercode", dir=private)  # the worker node sees an empty tmpfs here
    try:
        shutil.copytree(repo / "search_spaces" / "examples" / "user_text", os.path.join(project, "user_text"))
        shutil.copy(repo / "search_spaces" / "examples" / "text_user_data.yaml", project)
        proc = _cli(["run", os.path.join(project, "text_user_data.yaml"), "name=shipped",
                     f"storage.path=s3://{s3.bucket}/exp", f"storage.endpoint_url={s3.endpoint}", "train.epochs=2",
                     "search.num_samples=4", "resources.max_concurrent_trials=2", "promote.enabled=false",
                     "--address", head.gcs], _env(head, s3, tmp_path))
    finally:
        shutil.rmtree(project, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(_object(s3, "exp/shipped/results.csv").decode())))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), [(r["status"], r["error"][-300:]) for r in rows]
    assert worker.node_id in {r["node_id"] for r in rows}, "no trial ran on the node that cannot see the code"
