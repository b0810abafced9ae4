"""Real Ray head nodes on loopback, started by the tests with `ray start --block` and
stopped by PID (never `ray stop`, which would stop every Ray process on the machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests._procs import free_port, free_ports, kill_tree, wait_for_http

VENV_BIN = Path(sys.executable).parent


def _node_ports(ports: list[int]) -> list[str]:
    # Fixed default ports (52365 for the job agent's HTTP server) collide between two nodes on
    # one machine: the second agent then cannot bind and job submission answers "No available
    # agent". Every node gets its own, picked together so that no two are the same (CI once
    # got one port for the dashboard and the agent).
    listen, grpc, runtime_env, metrics = ports
    return [f"--dashboard-agent-listen-port={listen}", f"--dashboard-agent-grpc-port={grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}"]


def _node_env(extra_env: dict | None) -> dict:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
            **(extra_env or {})}


class HeadNode:
    def __init__(self, extra_env: dict | None = None, num_cpus: int = 2):
        # Unix socket paths are limited to 107 bytes: a short temp dir, not pytest's tmp_path.
        self.temp_dir = tempfile.mkdtemp(prefix="rtray", dir="/tmp")
        self.port, self.dashboard_port, *agent_ports = free_ports(6)
        self.env = _node_env(extra_env)
        self.log = open(os.path.join(self.temp_dir, "head.log"), "w")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={self.port}",
             f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
             "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", f"--temp-dir={self.temp_dir}",
             "--include-dashboard=true", "--disable-usage-stats", *_node_ports(agent_ports)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.gcs = f"127.0.0.1:{self.port}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {open(self.log.name).read()[-2000:]}")
            try:
                # Any HTTP answer (even 401 under token auth) means the dashboard is up.
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(1)
        raise RuntimeError("the head node's dashboard never came up")

    def stop(self) -> None:
        kill_tree(self.proc.pid)
        self.log.close()


@pytest.fixture(scope="module")
def head_node():
    node = HeadNode()
    yield node
    node.stop()


def can_unshare() -> bool:
    """Whether this machine lets us give a process a private mount namespace (root, Linux)."""
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class WorkerNode:
    """A second Ray node on this machine joining ``head`` (its own temp dir and ports).

    With ``private_dir``, the node runs in its own mount namespace with an empty tmpfs over
    that directory: files the driver writes there are invisible to this node, as on a node
    with its own local disk.
    """

    def __init__(self, head: HeadNode, num_cpus: int = 1, private_dir: str | None = None,
                 extra_env: dict | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="rtwrk", dir="/tmp")
        self.env = _node_env({**head.env, **(extra_env or {})})
        self.log = open(os.path.join(self.temp_dir, "worker.log"), "w")
        cmd = [str(VENV_BIN / "ray"), "start", "--block", f"--address={head.gcs}", "--node-ip-address=127.0.0.1",
               f"--num-cpus={num_cpus}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats", *_node_ports(free_ports(4))]
        if private_dir is not None:
            script = f'mount -t tmpfs raytune-opt-private "{private_dir}" && exec "$@"'
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.node_id = self._wait_joined(head)

    def _wait_joined(self, head: HeadNode, timeout: float = 120) -> str:
        """The new node's id, once the head lists it alive."""
        import json

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker ray start exited: {open(self.log.name).read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{head.address}/nodes?view=summary", timeout=5) as r:
                    nodes = json.load(r)["data"]["summary"]
                for n in nodes:
                    raylet = n.get("raylet", {})
                    if raylet.get("state") == "ALIVE" and not raylet.get("isHeadNode") \
                            and self.temp_dir in json.dumps(n):
                        return raylet["nodeId"]
                alive = [n for n in nodes if n.get("raylet", {}).get("state") == "ALIVE"]
                if len(alive) >= 2 and not any(self.temp_dir in json.dumps(n) for n in nodes):
                    # The summary does not name temp dirs in every version: the non-head one.
                    others = [n["raylet"]["nodeId"] for n in alive if not n["raylet"].get("isHeadNode")]
                    if len(others) == 1:
                        return others[0]
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(1)
        raise RuntimeError("the worker node never joined the head")

    def stop(self) -> None:
        kill_tree(self.proc.pid)
        self.log.close()


class S3Server:
    """A real S3-compatible server on loopback (moto in server mode) with one bucket."""

    def __init__(self, bucket: str = "sweeps"):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                      "AWS_DEFAULT_REGION": "us-east-1"}
        self.log = tempfile.NamedTemporaryFile("w", prefix="rtmoto", suffix=".log", delete=False)
        self.proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.log.flush()
        wait_for_http(f"{self.endpoint}/moto-api/", self.proc, self.log.name, timeout=60)
        self.client().create_bucket(Bucket=bucket)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        out, token = [], None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self.client().list_objects_v2(**kw)
            out += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def stop(self) -> None:
        kill_tree(self.proc.pid)
        self.log.close()
        os.unlink(self.log.name)
