"""Real Ray head nodes on loopback, started by the tests with `ray start --block` and
stopped by PID (never `ray stop`, which would stop every Ray process on the machine)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests._procs import kill_tree

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeadNode:
    def __init__(self, extra_env: dict | None = None, num_cpus: int = 2):
        # Unix socket paths are limited to 107 bytes: a short temp dir, not pytest's tmp_path.
        self.temp_dir = tempfile.mkdtemp(prefix="rtray", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    "RAY_AUTH_MODE": "disabled", **(extra_env or {})}
        self.log = open(os.path.join(self.temp_dir, "head.log"), "w")
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={self.port}",
             f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
             "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", f"--temp-dir={self.temp_dir}",
             "--include-dashboard=true", "--disable-usage-stats",
             # Fixed default ports (52365 for the job agent's HTTP server) collide between two
             # nodes on one machine: the second agent then cannot bind and job submission
             # answers "No available agent". Every node gets its own.
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"],
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
