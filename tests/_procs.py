"""Processes a test starts: a free loopback port for them, and stopping them by PID (never `ray stop`)."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while picked: one at a
    time, the OS may hand out the same port twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def kill_tree(pid: int, first: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Signal a process and all its descendants by PID; SIGKILL what is left after ``grace`` s.

    A fresh Ray head stops within ~2 s of SIGTERM; after jobs had run on it, its raylet, GCS,
    object store and ``ray start`` itself were still alive 5 s later, and the former 20 s
    grace made each cluster module's teardown take ~22 s in CI.
    """
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [parent] + parent.children(recursive=True)
    for p in procs:
        try:
            p.send_signal(first)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def wait_for_http(url: str, proc, log_path: str, timeout: float) -> None:
    """Wait until ``url`` answers; fail with the server's log if ``proc`` died or time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path) as f:
                    raise RuntimeError(f"{url} did not come up: {f.read()[-2000:]}") from None
            time.sleep(0.3)
