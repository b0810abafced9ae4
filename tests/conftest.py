"""Shared fixtures: one embedded local Ray for every sweep test of a session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def local_ray():
    """An embedded local Ray (loopback only, dashboard on), started once and shut down after."""
    from raytune_opt import ray_runtime

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    embedded = ray_runtime.start(None, num_cpus=2)
    yield ray
    ray_runtime.stop(embedded)
