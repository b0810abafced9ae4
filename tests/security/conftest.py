"""A real S3-compatible server on loopback (moto, as tests/test_tune_state.py starts it), shared
by the security tests that need one, and the environment that points raytune-opt at it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def s3():
    from tests.cluster.conftest import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, tmp_path, monkeypatch):
    """Credentials and endpoint for ``s3``, and an empty cache (no local mirror) under tmp_path."""
    for k, v in s3.creds.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    return s3
