"""Fixtures for the recipe tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # Decoded data sets go to a per-session directory, never the machine's shared cache.
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path_factory.getbasetemp() / "data_cache"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # The test machine has 2 cores shared with other work: one intra-op thread avoids
    # oversubscription, which slows small CPU ops by an order of magnitude.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
