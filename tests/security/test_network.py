"""Issue 25, section 1: what the network sees of raytune-opt's Ray.

The embedded Ray (``raytune-opt run`` without ``--address``) listens on loopback only and
runs with token auth, with a token made for the run that reaches Ray's processes through the
environment only. One real sweep, run as a user runs it (the console script in a fresh
process, here with a HOME of its own), is watched while it runs: every listening socket of its
whole process tree, a client without the token knocking at its GCS, and afterwards every file
and line it left, for the token. A cluster joined with ``--address`` that answers without a
token gets one warning line.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import psutil
import pytest

from tests._listener import Listener

ROOT = Path(__file__).resolve().parents[2]
# One 2-worker trial (DDP over gloo: its rendezvous store and gloo's sockets listen too), a
# few batches of 3 epochs.
SWEEP = ["search_spaces/digits_cnn.yaml", "name=net", "search.num_samples=1",
         "train.epochs=3", "train.limit_batches=8", "resources.num_workers=2",
         "resources.max_concurrent_trials=1", "promote.enabled=false"]

# What MLflow reads as "in CI or a test: no telemetry" (mlflow.telemetry.utils._is_ci_env_or_testing):
# left out of the sweep's environment, so that it runs as on a user's machine.
_TELEMETRY_OFF_IN_CI = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
                        "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
                        "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID", "DO_NOT_TRACK",
                        # and the switches themselves: the sweep must turn them off on its own
                        "MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED")
# ray._common.usage.usage_lib.get_cloud_from_metadata_requests (Azure, GCP, AWS), through a proxy.
_RAY_CLOUD_PROBES = {"GET http://169.254.169.254/metadata/instance?api-version=2021-12-13 HTTP/1.1",
                     "GET http://metadata.google.internal/computeMetadata/v1 HTTP/1.1",
                     "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1"}
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy")


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1, as gRPC's dual-stack sockets show it
    return addr.is_loopback  # 127.0.0.0/8 or ::1; never 0.0.0.0 / :: (every interface)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _listeners(procs: list[psutil.Process]) -> set[tuple[str, str, str, int]]:
    """(process name, tcp|udp, local ip, port) of every listening TCP and every bound UDP socket
    of ``procs`` (one read of the machine's socket tables: cheap enough to repeat every second)."""
    names = {p.pid: _safe(p.name, "?") for p in procs}
    return {(names[c.pid], "udp" if c.type == 2 else "tcp", c.laddr.ip, c.laddr.port)  # 2: SOCK_DGRAM
            for c in psutil.net_connections(kind="inet")
            if c.pid in names and c.laddr and (c.status == psutil.CONN_LISTEN or c.type == 2)}


def _safe(method, default=None):
    try:
        return method()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return default


def _flag(proc: psutil.Process, name: str) -> str | None:
    for arg in _safe(proc.cmdline, []):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _probe_gcs(port: int, token: str | None) -> str:
    """What the GCS on 127.0.0.1:port says to one gRPC call: 'OK' or the status code's name."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


def _other_addresses() -> list[str]:
    """This machine's addresses other than loopback (where a client from elsewhere comes in)."""
    import socket

    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs  # fe80::...%eth0 keeps its scope
            if a.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(a.address)]


def _reaches(ip: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((ip, port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Run the sweep; while it runs, record its listeners and knock at its GCS. Returns what was seen."""
    tmp = tmp_path_factory.mktemp("net")
    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"
           and k not in _TELEMETRY_OFF_IN_CI and k.lower() not in _PROXY_ENV}
    env.update(HOME=str(home), RAYTUNE_OPT_CACHE=str(tmp / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               # Ray's first usage report comes after min(60 s, this): within the sweep.
               RAY_USAGE_STATS_REPORT_INTERVAL_S="1")
    # Every HTTP(S) request to anywhere but this machine goes to a loopback port that records it.
    outbound = Listener()
    for var in _PROXY_ENV[:4]:
        env[var] = outbound.url
    env["NO_PROXY"] = env["no_proxy"] = ",".join(["127.0.0.1", "localhost", "::1", *_other_addresses()])
    args = [*SWEEP, f"tracking.mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}"]
    out, err = tmp / "stdout", tmp / "stderr"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "raytune_opt", "run", *args, "--storage", str(tmp / "exp")],
                                cwd=ROOT, env=env, stdout=fo, stderr=fe, start_new_session=True)
    seen = {"listeners": set(), "names": set(), "probes": {}, "token": None, "session_dir": None,
            "outside": {}, "rc": None}
    try:
        deadline = time.monotonic() + 420
        while proc.poll() is None and time.monotonic() < deadline:
            procs = _tree(proc.pid)
            listeners = _listeners(procs)
            seen["names"] |= {_safe(p.name, "") for p in procs}
            seen["listeners"] |= listeners
            gcs = next((p for p in procs if _safe(p.name) == "gcs_server"), None)
            gcs_ports = sorted(port for name, kind, _, port in listeners if name == "gcs_server" and kind == "tcp")
            if gcs is not None and gcs_ports and not seen["probes"]:
                port = gcs_ports[0]  # the GCS listens on one port
                seen["session_dir"] = _flag(gcs, "session-dir")
                seen["token"] = _safe(gcs.environ, {}).get("RAY_AUTH_TOKEN")
                seen["probes"] = {"none": _probe_gcs(port, None), "wrong": _probe_gcs(port, "0" * 64),
                                  "right": _probe_gcs(port, seen["token"]) if seen["token"] else None}
                seen["outside"] = {ip: _reaches(ip, port) for ip in _other_addresses()}
            time.sleep(0.5)
        seen["rc"] = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            from tests._procs import kill_tree

            kill_tree(proc.pid)
        outbound.close()
    seen.update(stdout=out.read_text(), stderr=err.read_text(), tmp=tmp, home=home, outbound=outbound.connections)
    return seen


@pytest.mark.slow
def test_every_listening_socket_of_an_embedded_sweep_is_on_loopback(sweep):
    assert sweep["rc"] == 0, sweep["stdout"][-2000:] + sweep["stderr"][-3000:]
    # The sweep was seen at work: Ray's daemons, the trials and their DDP workers.
    assert {"gcs_server", "raylet"} <= sweep["names"], sweep["names"]
    assert any("RayTrainWorker" in n for n in sweep["names"]), sweep["names"]
    open_ = sorted(s for s in sweep["listeners"] if not _loopback(s[2]))
    assert not open_, f"listening outside loopback: {open_}"
    assert len({s for s in sweep["listeners"] if s[0] == "gcs_server"}) >= 1, sweep["listeners"]
    # And on the machine's own network addresses, the GCS port does not answer at all.
    assert not any(sweep["outside"].values()), sweep["outside"]


@pytest.mark.slow
def test_an_embedded_sweep_with_mlflow_sends_nothing_off_the_machine(sweep):
    """MLflow's telemetry (config.mlflow-telemetry.io) is on by default outside CI, and Ray's
    usage report (usage-stats.ray.io) is what `ray start` clusters send; the sweep ran without
    CI's markers or either switch, with Ray's report due 1 s after start, through a proxy that
    records every request for another machine, and the proxy saw none of them (on the code
    before this test, it saw ``CONNECT config.mlflow-telemetry.io:443``).

    What it does see: Ray 2.60's dashboard asks the three clouds' link-local metadata services
    which cloud it runs on, at start-up, whether usage stats are on or off
    (``usage_stats_head.run`` calls ``get_cluster_config_to_report`` before it looks), and no
    setting turns that off. Those three requests, and nothing else, are allowed here."""
    assert sweep["rc"] == 0, sweep["stdout"][-2000:] + sweep["stderr"][-3000:]
    assert (sweep["tmp"] / "mlflow.db").stat().st_size > 0  # MLflow was in the sweep
    other = [c for c in sweep["outbound"] if c[1] not in _RAY_CLOUD_PROBES]
    assert other == [], f"requests for other machines: {other}"


@pytest.mark.slow
def test_the_embedded_gcs_refuses_a_client_without_the_run_s_token(sweep):
    assert sweep["probes"]["none"] == "UNAUTHENTICATED", sweep["probes"]
    assert sweep["probes"]["wrong"] == "UNAUTHENTICATED", sweep["probes"]
    token = sweep["token"]
    assert token and len(token) >= 32, "the GCS got no RAY_AUTH_TOKEN from its environment"
    assert sweep["probes"]["right"] == "OK", sweep["probes"]  # refused for the token, not for anything else


@pytest.mark.slow
def test_the_run_s_token_is_in_no_file_no_log_and_no_output(sweep):
    token = sweep["token"]
    assert token, "the GCS got no RAY_AUTH_TOKEN from its environment"
    assert not (sweep["home"] / ".ray" / "auth_token").exists()  # never ~/.ray/auth_token
    assert token not in sweep["stdout"] + sweep["stderr"]
    roots = [sweep["tmp"] / "exp", Path(sweep["session_dir"])]
    assert roots[0].is_dir() and roots[1].is_dir(), roots
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert token.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------ --address (fast)

class _FakeGcs:
    """A gRPC server on loopback that answers NodeInfoGcsService.GetClusterId as a GCS with
    auth disabled does, or refuses every call without the token as one with token auth does."""

    def __init__(self, token: str | None):
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        class Servicer(gcs_service_pb2_grpc.NodeInfoGcsServiceServicer):
            def GetClusterId(self, request, context):
                sent = dict(context.invocation_metadata()).get("authorization")
                if token is not None and sent != f"Bearer {token}":
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken")
                return gcs_service_pb2.GetClusterIdReply(cluster_id=b"x" * 28)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        gcs_service_pb2_grpc.add_NodeInfoGcsServiceServicer_to_server(Servicer(), self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def close(self):
        self.server.stop(grace=None)


@pytest.mark.parametrize("auth", ["disabled", "token"])
def test_a_joined_cluster_without_auth_gets_one_warning_line(capsys, auth):
    from raytune_opt import ray_runtime

    gcs = _FakeGcs(token=None if auth == "disabled" else "t" * 64)
    try:
        ray_runtime.warn_if_open(gcs.address)
    finally:
        gcs.close()
    err = capsys.readouterr().err.splitlines()
    if auth == "token":
        assert err == []
        return
    assert len(err) == 1, err
    assert err[0].startswith(f"raytune-opt: warning: the Ray cluster at {gcs.address} runs without token "
                             "authentication"), err[0]
    assert "RAY_AUTH_MODE=token" in err[0] and "ray get-auth-token --generate" in err[0]
