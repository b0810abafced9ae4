"""Submitting sweeps to a real Ray head node on loopback (marked cluster)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raytune_opt import jobs
from raytune_opt.cli import main
from raytune_opt.errors import UsageError
from tests.cluster.conftest import VENV_BIN, HeadNode
from tests.security.test_submit_upload import JUNK, PROJECT, SECRETS, make_project

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["search.num_samples=2", "train.epochs=2", "train.limit_batches=5", "scheduler={name: fifo}",
         "promote.enabled=false"]

pytestmark = pytest.mark.cluster


def _rows(exp: Path) -> list[dict]:
    with open(exp / "results.csv") as f:
        return list(csv.DictReader(f))


def test_submit_follow_runs_the_sweep_on_the_cluster(head_node, tmp_path, monkeypatch, capsys):
    """The text example: its own data, model and loop travel in the job's working directory."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.chdir(ROOT)
    rc = main(["submit", "search_spaces/examples/text_user_data.yaml", *SMALL, "name=submitted", "--storage",
               str(tmp_path), "--address", head_node.address, "--follow"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "submitted job" in out and "succeeded" in out
    assert "trials: 2 ok" in out  # the job's own output, streamed here
    rows = _rows(tmp_path / "submitted")
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert json.loads((tmp_path / "submitted" / "best.json").read_text())["checkpoint"]


def test_plain_ray_job_submit_works_too(head_node, tmp_path):
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", head_node.address, "--working-dir", str(ROOT),
           "--", "raytune-opt", "run", "search_spaces/digits_cnn.yaml", *SMALL, "name=plain", "--storage", str(tmp_path)]
    proc = subprocess.run(cmd, env=head_node.env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(_rows(tmp_path / "plain")) == 2


def test_a_failing_job_gives_a_non_zero_exit_and_its_upload_held_no_secrets(head_node, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # A working directory with keys, tokens, .git, virtual envs and caches beside the spec (issue 25).
    project = make_project(tmp_path, ROOT / "search_spaces" / "cifar10_resnet18.yaml")
    monkeypatch.chdir(project)
    # Valid here, but the data is not on the cluster: the job fails there, and so do we.
    rc = main(["submit", "spec.yaml", "data.root=/nonexistent/cifar", "--dry-run",
               "--storage", str(tmp_path / "results"), "--address", head_node.address])
    assert rc == 1
    out = capsys.readouterr().out
    assert "failed" in out and "left out: 9 secrets" in out
    # What the head unpacked as the job's working directory (Ray keeps it for later jobs).
    unpacked = Path(head_node.temp_dir, "session_latest", "runtime_resources", "working_dir_files")
    (package,) = [d for d in unpacked.glob("_ray_pkg_*") if (d / "train_helpers.py").is_file()]
    got = {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()}
    assert set(PROJECT) <= got
    assert not got & (set(SECRETS) | set(JUNK)), got
    assert not [p for p in got if "leaked" in (package / p).read_text(errors="replace")]


def test_a_job_without_the_token_is_refused_by_a_token_cluster(tmp_path):
    token = "raytune-opt-test-token-0123456789abcdef"
    node = HeadNode(extra_env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, num_cpus=1)
    # Ray's client reads the auth mode once per process: each attempt is a fresh CLI process.
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    cmd = [str(VENV_BIN / "raytune-opt"), "submit", "search_spaces/digits_cnn.yaml", *SMALL,
           "--storage", str(tmp_path), "--address", node.address, "--no-wait"]
    try:
        refused = subprocess.run(cmd, env={**base, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                                 timeout=120, cwd=ROOT)
        assert refused.returncode == 2, refused.stderr
        assert "did not take the job" in refused.stderr and "Traceback" not in refused.stderr
        accepted = subprocess.run(cmd, env={**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token},
                                  capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert accepted.returncode == 0, accepted.stderr
        assert "submitted job" in accepted.stdout
        for proc in (refused, accepted):  # the token is never printed
            assert token not in proc.stdout + proc.stderr
    finally:
        node.stop()


def test_bad_addresses_are_refused_before_anything_is_sent(tmp_path, capsys):
    for address in ("127.0.0.1:6379", "ray://127.0.0.1:10001", "http://"):
        with pytest.raises(UsageError, match="not a Ray dashboard URL"):
            jobs.check_address(address)
    jobs.check_address("http://10.1.2.3:8265")
    assert "plain http to a non-loopback host" in capsys.readouterr().err
    jobs.check_address("http://127.0.0.1:8265")
    assert capsys.readouterr().err == ""


def test_the_embedded_rays_processes_find_their_own_cluster_beside_another(local_ray, head_node):
    """Two Rays on one machine (this module's head beside the tests' embedded one, as another
    user's sweep would be): the state API in the embedded Ray's workers, which Train V2's
    placement-group cleaner uses, must reach its own cluster instead of failing with "Found
    multiple active Ray instances" (the cleaner then died, and a sweep leaked placement groups
    until its 2-worker trials timed out)."""
    ray = local_ray

    @ray.remote(num_cpus=0)
    def own_nodes() -> list:
        from ray.util.state import list_nodes

        return [n.node_id for n in list_nodes()]

    assert ray.get(own_nodes.remote(), timeout=60) == [ray.get_runtime_context().get_node_id()]
