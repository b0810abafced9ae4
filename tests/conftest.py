"""Shared fixtures: one embedded local Ray for every sweep test of a session."""

from __future__ import annotations

import os

import pytest

# Nothing in the suite may reach the Hugging Face Hub (train.loop: hf_trainer builds its models
# from configs): set before any Ray node starts, so that trial workers inherit it too.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def local_ray():
    """An embedded local Ray as ``run`` starts it (loopback only, token auth with a token of its
    own in ``RAY_AUTH_TOKEN`` while it runs, dashboard on), started once and shut down after.

    A process a test starts from this environment joins it with ``--address`` (a loopback
    address, and the token it inherits)."""
    from raytune_opt import ray_runtime

    import ray

    embedded = ray_runtime.start(None, num_cpus=2)
    yield ray
    ray_runtime.stop(embedded)
