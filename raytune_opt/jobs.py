"""Submitting a sweep to a Ray cluster as a Ray job (Ray's Job Submission SDK).

The job runs ``raytune-opt run SPEC ...`` on the head node, in a copy of the working
directory; inside the job ``RAY_ADDRESS`` is set, so ``run`` joins the cluster.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from raytune_opt.errors import UsageError

# Ray caps a job's working_dir at 100 MiB and then fails unhelpfully (ray#45602): these
# never belong in it. Measured on this repo: everything else is < 1 MiB.
WORKING_DIR_EXCLUDES = [".git", ".venv", "venv", "results", "**/__pycache__", "*.egg-info", ".pytest_cache",
                        "benchmarks/out", "*.pt", "*.onnx", "*.engine"]
WORKING_DIR_LIMIT = 100 * 1024 * 1024
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 180  # seconds; on a busy 2-core machine the job agent took over a minute


def check_address(address: str) -> str:
    """The dashboard address for the Job SDK; a warning for plain http off loopback.

    Raises:
        UsageError: not an http(s) URL with a host.
    """
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"--address {address}: not a Ray dashboard URL; write http://HOST:8265 "
                         "(the Job API runs on the dashboard port, not the GCS port 6379)")
    if url.scheme == "http" and not _is_loopback(url.hostname):
        print(f"raytune-opt: warning: {address} is plain http to a non-loopback host: the auth token and the "
              "working directory travel unencrypted; use an SSH port-forward or https", file=sys.stderr)
    return address


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def working_dir_size(root: Path, excludes: list[str]) -> int:
    """Bytes Ray would upload from ``root``: Ray's own traversal (its excludes and .gitignore).

    A private Ray helper: the point is to count exactly what Ray will package.
    """
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    total = 0

    def add(path: Path) -> None:
        nonlocal total
        if path.is_file():
            total += path.stat().st_size

    quiet = logging.getLogger("raytune_opt.working_dir")  # Ray logs every ignore file at INFO
    quiet.setLevel(logging.WARNING)
    _dir_travel(root, [_get_excludes(root, excludes)], add, include_gitignore=True, logger=quiet)
    return total


def entrypoint(spec: str, overrides: list[str], storage: str | None, dry_run: bool) -> str:
    args = ["raytune-opt", "run", spec, *overrides]
    if storage:
        args += ["--storage", storage]
    if dry_run:
        args.append("--dry-run")
    return " ".join(shlex.quote(a) for a in args)


def submit(spec: str, overrides: list[str], address: str, *, storage: str | None = None, follow: bool = False,
           no_wait: bool = False, working_dir: str = ".", dry_run: bool = False) -> int:
    """Submit ``raytune-opt run SPEC`` as a Ray job; return the exit code to use.

    With ``follow`` the job's logs stream here; without ``no_wait`` we wait for the end. The
    exit code follows the job's: 0 when it succeeded, 1 otherwise (and 0 after submitting
    with ``no_wait``).

    Raises:
        UsageError: bad address, unreachable or refusing cluster, working dir too large.
    """
    from raytune_opt.ray_runtime import set_auth_mode

    check_address(address)
    root = Path(working_dir).resolve()
    if not (root / spec).is_file() and not Path(spec).is_absolute():
        raise UsageError(f"{spec}: not found under the working directory {root}; the job runs the spec from "
                         "its copy of that directory, so pass a path relative to it")
    size = working_dir_size(root, WORKING_DIR_EXCLUDES)
    if size > WORKING_DIR_LIMIT:
        raise UsageError(f"{root}: the job's working directory would be {size / 2**20:.0f} MiB, over Ray's 100 MiB "
                         "limit; move data and results out of it or add them to .gitignore-style excludes")
    set_auth_mode(embedded=False)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                job_id = client.submit_job(
                    entrypoint=entrypoint(spec, overrides, storage, dry_run),
                    runtime_env={"working_dir": str(root), "excludes": WORKING_DIR_EXCLUDES,
                                 "env_vars": {"PYTHONUNBUFFERED": "1"}},
                    metadata={"raytune_opt_spec": spec},
                )
                break
            except RuntimeError as exc:
                # Right after `ray start` the dashboard answers before its job agent is up.
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
    except (OSError, RuntimeError, ValueError, AuthenticationError) as exc:
        # What the SDK raises for an unreachable, refusing or token-protected cluster: ConnectionError and
        # requests' errors (OSErrors), RuntimeError for an HTTP error status, ValueError for an address it
        # cannot parse, AuthenticationError for a missing token. A TypeError would be our bug.
        raise UsageError(f"--address {address}: the cluster did not take the job ({_one_line(exc)}); check the "
                         "address, that the cluster runs, and RAY_AUTH_MODE / your token (~/.ray/auth_token)") from None
    print(f"raytune-opt: submitted job {job_id} to {address}", flush=True)
    if no_wait:
        return 0
    if follow:
        import asyncio

        async def tail() -> None:
            async for lines in client.tail_job_logs(job_id):
                print(lines, end="", flush=True)

        asyncio.run(tail())
    status = _wait(client, job_id)
    print(f"raytune-opt: job {job_id} {status.lower()}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _wait(client, job_id: str, poll_s: float = 1.0) -> str:
    while True:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
