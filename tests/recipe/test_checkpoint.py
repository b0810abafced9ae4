"""Checkpoints: weights-only round trip, atomic writes, and every kind of bad file."""

from __future__ import annotations

import pytest
import torch

from raytune_opt.recipe.checkpoint import (BEST, FORMAT, LAST, CheckpointError, load_checkpoint, load_model,
                                           make_checkpoint, save_checkpoint, write_checkpoints)
from raytune_opt.recipe.models import build_model, model_spec
from raytune_opt.recipe.optim import build_optimizer, build_scheduler


def _checkpoint(name="small_cnn"):
    cfg = {"name": name, "width": 8, "depth": 2}
    torch.manual_seed(0)
    model = build_model(cfg, 3, 10, 32)
    opt = build_optimizer(model.parameters(), {"name": "adam"})
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()  # so the optimizer has state (exp_avg...) to store
    sched = build_scheduler(opt, {"name": "cosine"}, 10, 2)
    ckpt = make_checkpoint(model_spec=model_spec(cfg, (3, 32, 32), 10), model_state=model.state_dict(),
                           optimizer_state=opt.state_dict(), scheduler_state=sched.state_dict(), epoch=3,
                           metrics={"val_accuracy": 0.5, "stop_reason": None}, recipe={"model": cfg},
                           spec_sha256="ab" * 32)
    return model.eval(), ckpt


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_round_trip_gives_identical_outputs(tmp_path, name):
    model, ckpt = _checkpoint(name)
    path = save_checkpoint(ckpt, tmp_path / "c.pt")
    torch.load(path, weights_only=True)  # nothing in it needs pickle
    rebuilt, loaded = load_model(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert loaded["format"] == FORMAT and loaded["epoch"] == 3 and loaded["spec_sha256"] == "ab" * 32
    assert loaded["metrics"]["val_accuracy"] == 0.5 and isinstance(loaded["torch_version"], str)
    assert loaded["optimizer_state"]["state"] and loaded["scheduler_state"]["name"] == "cosine"


def test_best_and_last_written_atomically(tmp_path):
    _, ckpt = _checkpoint()
    write_checkpoints(ckpt, tmp_path, is_best=True)
    write_checkpoints({**ckpt, "epoch": 4}, tmp_path, is_best=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST, LAST]  # no temporary files left
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 3 and load_checkpoint(tmp_path / LAST)["epoch"] == 4
    assert load_checkpoint(tmp_path)["epoch"] == 3  # a directory means its best


def _error(path, fragment):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert fragment in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    _error(tmp_path / "nope.pt", "no such checkpoint")


def test_truncated_file(tmp_path):
    _, ckpt = _checkpoint()
    path = save_checkpoint(ckpt, tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[:1000])
    _error(path, "truncated or corrupt")


def test_foreign_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, path)
    _error(path, "not a raytune-opt checkpoint")
    (tmp_path / "text.pt").write_text("hello")
    _error(tmp_path / "text.pt", "truncated or corrupt")


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_file_needing_unsafe_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": Evil()}, path)
    _error(path, "unsafe unpickling")
