"""The Session interface and its local implementation."""

from __future__ import annotations

import os

import pytest
import torch

from raytune_opt.recipe.session import LocalSession, Session


def test_local_session_is_a_single_identity_rank():
    session = LocalSession()
    assert (session.rank, session.world_size, session.is_rank_zero) == (0, 1, True)
    assert session.device == torch.device("cpu") and session.num_threads is None
    model, loader = torch.nn.Linear(1, 1), object()
    assert session.prepare_model(model) is model and session.prepare_loader(loader) is loader


def test_reports_are_kept_and_passed_to_the_callback(tmp_path):
    seen = []
    session = LocalSession(str(tmp_path), callback=lambda m, d: seen.append((m["epoch"], d)))
    session.report({"epoch": 1}, str(tmp_path))
    session.report({"epoch": 2}, None)
    assert session.reports == [{"epoch": 1}, {"epoch": 2}] and seen == [(1, str(tmp_path)), (2, None)]
    assert session.checkpoint_root() == str(tmp_path)


def test_checkpoint_root_defaults_to_a_fresh_directory():
    root = LocalSession().checkpoint_root()
    assert os.path.isdir(root) and not os.listdir(root)
    os.rmdir(root)


def test_base_session_requires_report_and_checkpoint_root():
    with pytest.raises(NotImplementedError):
        Session().report({}, None)
    with pytest.raises(NotImplementedError):
        Session().checkpoint_root()
