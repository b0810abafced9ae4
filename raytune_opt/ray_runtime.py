"""Starting or joining Ray.

Without an address we start an embedded local Ray that only this machine can reach: every
Ray process of it (GCS, raylet and its object manager, dashboard and its agent, runtime-env
agent, workers, metrics) listens on 127.0.0.1 alone. ``ray.init(_node_ip_address="127.0.0.1")``
is not enough in Ray 2.60: ``resolve_ip_for_localhost`` turns it into the machine's own
address and the gRPC servers then listen on every interface. Ray keeps loopback as loopback
only in its single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Windows' and macOS's
default, read once into ``ray_constants.ENABLE_RAY_CLUSTER``): we switch it on in this process
while the embedded Ray runs, and in the environment Ray's own processes inherit while it
starts. Its processes send MLflow's telemetry nowhere (:data:`NO_TELEMETRY_ENV`, unless the
user set it). The ranks of a multi-worker trial listen on loopback too: gloo and NCCL are pointed
at the loopback interface (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME``, unless set), and
rank 0's rendezvous store, which torch binds to every interface, is made on a loopback socket
(``train_backend._hold_loopback_store``).

Any process of the machine's other users can still reach loopback, so the embedded Ray also
runs with token auth (``RAY_AUTH_MODE=token``) unless the user set ``RAY_AUTH_MODE=disabled``:
a random token made for the run, handed to Ray's processes through ``RAY_AUTH_TOKEN`` in the
environment only (never ``~/.ray/auth_token``, which would turn auth on for every later ``ray
start`` here) and taken out again when the run ends. The dashboard is on (Train V2's
placement-group cleaner uses the state API: with it off, stopped trials leaked placement
groups and later trials hung).

Ray's processes are told where this run's dashboard is (``RAY_API_SERVER_ADDRESS``): Ray's
state API otherwise looks for "the" Ray of the machine, and with a second one running (another
user's sweep) Train V2's placement-group cleaner died and later trials timed out.

With an address, Ray is joined as it is; a cluster that answers a client without a token
gets one warning line saying how to turn token auth on.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys

from raytune_opt.errors import UsageError

AUTH_MODES = ("disabled", "token")  # what Ray 2.60 knows (ray._raylet.AuthenticationMode)
# Ray's single-machine switch: loopback addresses stay loopback (ray._private.ray_constants).
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
# Where Ray's state API (Train V2's placement-group cleaner, our tests) finds this run's
# dashboard; without it, it looks for "the" Ray of the machine and fails when there are two.
_API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
# gloo and NCCL listen on the interface of the machine's hostname unless told which one.
_COLLECTIVE_IFACE_ENV = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
_LOOPBACK_IFACE = "lo0" if sys.platform == "darwin" else "lo"
# What is sent home unless told not to: MLflow 3 starts a telemetry client at import and sends
# usage events (config.mlflow-telemetry.io, seen from a test sweep with MLflow tracking). The
# processes raytune-opt starts send nothing off the machine that the user did not ask for; a user
# who set the variable keeps their value. (Ray's usage report needs nothing: ray.init turns it off
# for the clusters it starts, release wheels; tests/security/test_network.py watches both.)
NO_TELEMETRY_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true"}
# What an embedded run changed, to put back when it ends: {"env": {...}, "enable_cluster": bool}.
_embedded_state: dict | None = None


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
    if address is None:
        _start_embedded(num_cpus)
        return True
    set_auth_mode(embedded=False)
    _reload_auth_config()
    _probe(address)
    try:
        # A loopback address stays loopback (Ray would turn it into the machine's address,
        # where a loopback-only cluster, such as another run's embedded Ray, does not listen).
        with _loopback_kept(_is_loopback_address(address)):
            ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                     runtime_env={"py_modules": py_modules} if py_modules else None)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UsageError(f"{_source(address)} {address}: cannot join the Ray cluster ({str(exc).splitlines()[0]}); "
                         "check the address (e.g. 127.0.0.1:6379 or ray://host:10001) and that the cluster runs") from None
    if not address.startswith("ray://"):  # through Ray Client the GCS is not reachable from here
        warn_if_open(ray.get_runtime_context().gcs_address)
    return False


def _start_embedded(num_cpus: int | None) -> None:
    """The embedded local Ray: loopback only, token auth with a token made for this run."""
    import ray
    from ray._private import ray_constants

    global _embedded_state
    _restore_embedded()  # an earlier embedded Ray shut down without stop()
    before = {k: os.environ.get(k) for k in (*_AUTH_ENV, _API_SERVER_ENV)}
    _embedded_state = {"env": before, "enable_cluster": ray_constants.ENABLE_RAY_CLUSTER}
    try:
        if set_auth_mode(embedded=True) == "token":
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # never printed, never written
        _reload_auth_config()
        # A second Ray on the machine (another user's sweep, a `ray start`) made Train V2's
        # placement-group cleaner die with "Found multiple active Ray instances" (its state API
        # autodetects the cluster), so stopped trials leaked placement groups and later ones
        # timed out: this run's processes are told where its own dashboard is.
        # A port the kernel picks, not Ray's default 8265: two sweeps started at once on one
        # machine both found 8265 free and the second failed to bind it (46 errors in a CI run
        # beside another engineer's sweeps: "Failed to bind to 127.0.0.1:8265").
        dashboard_port = _free_loopback_port()
        os.environ[_API_SERVER_ENV] = f"http://127.0.0.1:{dashboard_port}"
        # This process resolves loopback as loopback for the whole run (the state API that
        # Train and our tests use resolves the GCS address again); Ray's processes inherit
        # the switch from the environment they start with.
        ray_constants.ENABLE_RAY_CLUSTER = False
        for_ray = {_LOCAL_ONLY_ENV: "0", **{k: _LOOPBACK_IFACE for k in _COLLECTIVE_IFACE_ENV if k not in os.environ},
                   **{k: v for k, v in NO_TELEMETRY_ENV.items() if k not in os.environ}}
        outside = {k: os.environ.get(k) for k in for_ray}
        os.environ.update(for_ray)
        try:
            ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=dashboard_port, _node_ip_address="127.0.0.1", num_cpus=num_cpus or os.cpu_count(),
                     log_to_driver=False, configure_logging=True, logging_level="ERROR")
        finally:
            for k, v in outside.items():  # for Ray's processes, not for the ones we start later
                _put_env(k, v)
    except BaseException:
        _restore_embedded()
        raise


def no_telemetry() -> None:
    """This process and the ones it starts send no usage telemetry (:data:`NO_TELEMETRY_ENV`),
    unless the user set the variables. Before Ray or MLflow is imported: MLflow decides at import."""
    for k, v in NO_TELEMETRY_ENV.items():
        os.environ.setdefault(k, v)


def _free_loopback_port() -> int:
    """A free port on loopback, as the kernel hands them out (it rotates through its ephemeral
    range, so two starts a moment apart do not get the same one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _restore_embedded() -> None:
    """Put back what :func:`_start_embedded` changed: the run's token leaves the environment."""
    global _embedded_state
    if _embedded_state is None:
        return
    from ray._private import ray_constants

    for k, v in _embedded_state["env"].items():
        _put_env(k, v)
    ray_constants.ENABLE_RAY_CLUSTER = _embedded_state["enable_cluster"]
    _embedded_state = None
    _reload_auth_config()


def _put_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _reload_auth_config() -> None:
    """Make this process see ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN`` as they are now: Ray reads
    them once into its config and its token cache (a driver that had read 'disabled' before
    failed to reach its own token-auth GCS with InvalidAuthToken)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def _loopback_kept(on: bool):
    """While active (``on``): this process keeps 127.0.0.1 as given instead of resolving it to
    the machine's address (``ray._private.services.resolve_ip_for_localhost``)."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    if on:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _is_loopback_address(address: str) -> bool:
    if "://" in address or ":" not in address:
        return False
    return is_loopback_host(address.rpartition(":")[0].strip("[]"))


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_open(gcs_address: str) -> None:
    """One line on stderr when the GCS at HOST:PORT answers a client that sends no token: the
    cluster runs without auth, and anyone who can reach it can run code there."""
    if _answers_without_token(gcs_address):
        print(f"raytune-opt: warning: the Ray cluster at {gcs_address} runs without token authentication: anyone "
              "who can reach it can run code there; to turn it on, start every node with RAY_AUTH_MODE=token and "
              "one token (`ray get-auth-token --generate` writes ~/.ray/auth_token; or set RAY_AUTH_TOKEN), and "
              "run raytune-opt with the same", file=sys.stderr)


def _answers_without_token(gcs_address: str, timeout: float = 5.0) -> bool:
    """Whether a gRPC call without a token gets an answer from the GCS; False when it is
    refused (``UNAUTHENTICATED``: token auth on) or cannot be asked."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(gcs_address) as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return True


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

    The embedded Ray runs with a token (:func:`start` makes one for the run and hands it over
    in ``RAY_AUTH_TOKEN``); ``RAY_AUTH_MODE=disabled`` set by the user turns that off (the
    embedded Ray is still loopback only). A client of a cluster uses a token when one is
    available, where Ray's own CLI looks for it.

    Raises:
        UsageError: ``RAY_AUTH_MODE`` is set to something else than Ray's modes (Ray would
            silently treat a typo such as ``tokne`` as ``disabled``).
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None:
        os.environ["RAY_AUTH_MODE"] = "token" if embedded or _token_available() else "disabled"
    elif mode not in AUTH_MODES:
        raise UsageError(f"$RAY_AUTH_MODE {mode!r}: not a Ray auth mode; set it to {' or '.join(AUTH_MODES)}, "
                         "or unset it to let raytune-opt choose")
    return os.environ["RAY_AUTH_MODE"]


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return True
    return os.path.exists(os.path.expanduser("~/.ray/auth_token"))


def stop(embedded: bool) -> None:
    """Shut down the embedded Ray (a joined cluster is left running) and put back the
    environment it ran with."""
    import ray

    if embedded and ray.is_initialized():
        ray.shutdown()
    if embedded:
        _restore_embedded()
