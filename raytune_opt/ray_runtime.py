"""Starting or joining Ray.

Without an address we start an embedded local Ray bound to loopback, with the dashboard on
(Train V2's placement-group cleaner uses the state API: with it off, stopped trials leaked
placement groups and later trials hung) and the auth mode set explicitly.
"""

from __future__ import annotations

import os

from raytune_opt.errors import UsageError

AUTH_MODES = ("disabled", "token")  # what Ray 2.60 knows (ray._raylet.AuthenticationMode)


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: ``--address``, else ``$RAY_ADDRESS`` (set by ``ray job submit``)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def in_ray_job() -> bool:
    """Whether this process is a Ray job's driver (``ray job submit`` / ``raytune-opt
    submit``): its working directory reaches every node through the job's own runtime env."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def start(address: str | None, num_cpus: int | None = None, py_modules: list | None = None) -> bool:
    """Start an embedded local Ray (address None) or join ``address``; True if embedded.

    ``py_modules``: user modules Ray ships to every node of a joined cluster (its
    ``runtime_env``), for trials to import there.

    Raises:
        UsageError: the cluster cannot be reached.
    """
    import ray

    if ray.is_initialized():
        return False
    set_auth_mode(embedded=address is None)
    if address is None:
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", num_cpus=num_cpus or os.cpu_count(),
                 log_to_driver=False, configure_logging=True, logging_level="ERROR")
        return True
    _probe(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"py_modules": py_modules} if py_modules else None)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"{_source(address)} {address}: cannot join the Ray cluster ({str(exc).splitlines()[0]}); "
                         "check the address (e.g. 127.0.0.1:6379 or ray://host:10001) and that the cluster runs") from None
    return False


def _source(address: str) -> str:
    """Where an address came from, for an error message: the flag, or ``$RAY_ADDRESS``."""
    return "$RAY_ADDRESS" if address == os.environ.get("RAY_ADDRESS") else "--address"


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes, when a HOST:PORT cluster address does not answer
    (``ray.init`` retries an unreachable GCS for a long time)."""
    import socket

    if "://" in address or address == "auto" or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{_source(address)} {address}: not HOST:PORT; write e.g. 127.0.0.1:6379 (the head's GCS "
                         "port)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UsageError(f"{_source(address)} {address}: cannot join the Ray cluster (nothing answers there: "
                         f"{exc.strerror or exc}); check the address (the head's GCS port, 6379 by default) "
                         "and that the cluster runs") from None


def set_auth_mode(embedded: bool) -> str:
    """Set ``RAY_AUTH_MODE`` explicitly unless the user did (Ray 2.60 turns token auth on by
    default for clusters that ``ray.init`` starts, and clients fail with InvalidAuthToken when
    the modes differ).

    An embedded loopback-only cluster runs without a token: creating one would write
    ~/.ray/auth_token, which then turns auth on for every later ``ray start`` here. A client of
    a cluster uses a token when one is available, where Ray's own CLI looks for it.

    Raises:
        UsageError: ``RAY_AUTH_MODE`` is set to something else than Ray's modes (Ray would
            silently treat a typo such as ``tokne`` as ``disabled``).
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None:
        os.environ["RAY_AUTH_MODE"] = "disabled" if embedded or not _token_available() else "token"
    elif mode not in AUTH_MODES:
        raise UsageError(f"$RAY_AUTH_MODE {mode!r}: not a Ray auth mode; set it to {' or '.join(AUTH_MODES)}, "
                         "or unset it to let raytune-opt choose")
    return os.environ["RAY_AUTH_MODE"]


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return True
    return os.path.exists(os.path.expanduser("~/.ray/auth_token"))


def stop(embedded: bool) -> None:
    import ray

    if embedded and ray.is_initialized():
        ray.shutdown()
