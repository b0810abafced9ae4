"""The environment variables `run`, `resume`, `submit` and `promote` read to find Ray (fast, no Ray started)."""

from __future__ import annotations

import socket

import pytest

from raytune_opt import ray_runtime
from raytune_opt.errors import UsageError


@pytest.mark.parametrize("mode", ["tokne", "TOKEN", "", "k8s"])
def test_a_mistyped_auth_mode_is_refused_not_silently_disabled(monkeypatch, mode):
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    with pytest.raises(UsageError, match=rf"^\$RAY_AUTH_MODE '{mode}': not a Ray auth mode; set it to disabled or token"):
        ray_runtime.set_auth_mode(embedded=True)


@pytest.mark.parametrize("mode", ["disabled", "token"])
def test_the_user_s_auth_mode_is_kept(monkeypatch, mode):
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    assert ray_runtime.set_auth_mode(embedded=True) == mode


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_from_the_environment_is_named_as_such(monkeypatch):
    address = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(UsageError, match=rf"^\$RAY_ADDRESS {address}: cannot join the Ray cluster"):
        ray_runtime._probe(ray_runtime.resolve_address(None), timeout=1)
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(UsageError, match=rf"^--address {address}: cannot join"):
        ray_runtime._probe(address, timeout=1)


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:port"])
def test_a_port_that_cannot_be_is_not_host_port(address):
    with pytest.raises(UsageError, match="not HOST:PORT"):
        ray_runtime._probe(address)


def test_the_embedded_ray_runs_with_token_auth_unless_the_user_turned_it_off(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # first: the test's end puts back what was there
    assert ray_runtime.set_auth_mode(embedded=True) == "disabled"
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert ray_runtime.set_auth_mode(embedded=True) == "token"


@pytest.mark.parametrize("address,loopback", [("127.0.0.1:6379", True), ("localhost:6379", True),
                                              ("127.0.0.2:6379", True), ("[::1]:6379", True),
                                              ("10.0.0.1:6379", False), ("head:6379", False),
                                              ("ray://127.0.0.1:10001", False), ("auto", False)])
def test_a_loopback_address_is_kept_as_loopback(address, loopback):
    """Ray turns 127.0.0.1 into the machine's address, where a loopback-only cluster does not listen."""
    assert ray_runtime._is_loopback_address(address) is loopback


def test_the_embedded_dashboard_takes_a_kernel_picked_port_not_rays_default():
    # Two sweeps started at once both found 8265 free, then the second failed to bind it
    # (a CI run beside other sweeps: 46 errors). The kernel's pick differs between them.
    from raytune_opt.ray_runtime import _free_loopback_port

    ports = {_free_loopback_port() for _ in range(3)}
    assert 8265 not in ports and len(ports) == 3, ports
