"""User training loops: fn(config, ctx) against TrialContext, in one process (the 2-rank DDP and
ZeRO runs of the example's loop are in tests/strategies/test_zero_training.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from raytune_opt import registry
from raytune_opt.recipe.checkpoint import BEST, LAST, load_checkpoint, load_model
from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.recipe.loop import train
from raytune_opt.recipe.session import LocalSession

EXAMPLES = Path(__file__).resolve().parents[2] / "search_spaces" / "examples"
CALLS: list = []


def _cfg(loop: str, epochs: int = 3, **search) -> dict:
    return {"seed": 0, "data": {"dataset": "digits"}, "model": {"name": "mlp", "width": 32},
            "train": {"loop": loop, "epochs": epochs, "batch_size": 64, "checkpoint": True},
            "search": {"metric": "val_accuracy", "mode": "max", **search}}


def counting_loop(config, ctx):
    """Trains an mlp on digits with plain SGD; keeps a counter in the checkpoint's state."""
    CALLS.append((ctx.start_epoch, ctx.state))
    model = ctx.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model = ctx.prepare_model(model, optimizer)
    loader = ctx.loader("train")
    x_val, y_val = ctx.data.val.tensors
    steps = (ctx.state or {}).get("steps", 0)
    for epoch in range(ctx.start_epoch, ctx.epochs + 1):
        ctx.begin_epoch(epoch, loader)
        for x, y in loader:
            ctx.backward(F.cross_entropy(model(x), y))
            ctx.step()
            steps += 1
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        ctx.report({"val_accuracy": accuracy, "steps": steps}, epoch=epoch, state={"steps": steps})


def silent_loop(config, ctx):
    ctx.prepare_model(ctx.build_model(), None)


def loop_reporting(metrics):
    def loop(config, ctx):
        model = ctx.build_model()
        ctx.prepare_model(model, torch.optim.SGD(model.parameters(), lr=0.1))
        ctx.report(metrics, epoch=1)
    return loop


def unbuilt_loop(config, ctx):
    model = torch.nn.Linear(64, 10)
    ctx.prepare_model(model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_user_loop_reports_checkpoints_and_resumes_with_its_state(tmp_path):
    CALLS.clear()
    session = LocalSession(str(tmp_path / "a"))
    final = train(_cfg(f"{__name__}:counting_loop"), session)
    # It learns (an untrained mlp: ~0.1); the value itself varies by CPU (0.899 on an AMD EPYC
    # without AVX-512, above 0.9 on the machines before).
    assert [r["epoch"] for r in session.reports] == [1, 2, 3] and final["val_accuracy"] > 0.8
    assert [r["stop_reason"] for r in session.reports] == [None, None, "completed"]
    assert final["best_val_accuracy"] == max(r["val_accuracy"] for r in session.reports)
    assert all(r["epoch_s"] > 0 for r in session.reports)
    best = load_checkpoint(tmp_path / "a" / BEST)
    assert best["metrics"]["val_accuracy"] == final["best_val_accuracy"] and best["user_state"]["steps"] > 0
    model, ckpt = load_model(tmp_path / "a" / LAST)  # rebuilt from the spec's model, without the loop
    assert ckpt["recipe"]["train"]["loop"] == f"{__name__}:counting_loop" and ckpt["user_state"]["steps"] == 54  # 18 batches of the 1,150 training images, 3 epochs
    # Two epochs, then the third from the checkpoint: the loop gets its state and the start epoch back.
    train(_cfg(f"{__name__}:counting_loop", epochs=2), LocalSession(str(tmp_path / "b")))
    resumed = LocalSession(str(tmp_path / "b"))
    train(_cfg(f"{__name__}:counting_loop"), resumed, resume_from=str(tmp_path / "b" / LAST))
    assert CALLS[-1] == (3, {"steps": 36}) and [r["epoch"] for r in resumed.reports] == [3]
    assert resumed.reports[0]["val_accuracy"] == pytest.approx(final["val_accuracy"])
    assert resumed.reports[0]["steps"] == 54
    # Resumed from a finished run: the loop trains nothing and the last result is reported again.
    again = LocalSession(str(tmp_path / "b"))
    train(_cfg(f"{__name__}:counting_loop"), again, resume_from=str(tmp_path / "b" / LAST))
    assert [(r["epoch"], r.get("replayed")) for r in again.reports] == [(3, 1)]


@pytest.mark.parametrize("loop, message", [
    (f"{__name__}:silent_loop", "returned without calling ctx.report()"),
    (f"{__name__}:unbuilt_loop", "ctx.prepare_model: build the model with ctx.build_model()"),
    ("nope_pkg.loops:train", r"train.loop: cannot import 'nope_pkg.loops:train' \(No module named 'nope_pkg'\)"),
])
def test_a_loop_misusing_the_context_gets_a_clear_error(tmp_path, loop, message):
    with pytest.raises(RecipeConfigError, match=message):
        train(_cfg(loop), LocalSession(str(tmp_path)))


@pytest.mark.parametrize("metrics, message", [
    ({"accuracy": 0.5}, r"it lacks val_accuracy \(search.metric\); report numbers"),
    ({"val_accuracy": "high"}, "val_accuracy='high' is not a number"),
    ({"val_accuracy": 0.5, "test_accuracy": 0.5}, "test_accuracy names a test-split metric"),
])
def test_report_refuses_what_tune_could_not_use(tmp_path, monkeypatch, metrics, message):
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "bad_loop", loop_reporting(metrics), raising=False)
    with pytest.raises(RecipeConfigError, match=r"ctx.report\(epoch=1\): " + message):
        train(_cfg(f"{__name__}:bad_loop"), LocalSession(str(tmp_path)))


def test_the_builtin_recipe_is_the_registered_loop_builtin():
    from raytune_opt.recipe.loop import builtin_loop

    assert registry.LOOPS["builtin"].load() is builtin_loop


def measuring_loop(config, ctx):
    """Reports accuracy and what the model costs to serve, as the built-in loop does."""
    model = ctx.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapped = ctx.prepare_model(model, optimizer)
    cost = ctx.measures(wrapped)  # the wrapper is seen through
    x_val, y_val = ctx.data.val.tensors
    for epoch in range(ctx.start_epoch, ctx.epochs + 1):
        with torch.no_grad():
            accuracy = (wrapped(x_val).argmax(1) == y_val).float().mean().item()
        ctx.report({"val_accuracy": accuracy, **cost}, epoch=epoch)


def test_a_user_loop_reports_the_deployment_measures_the_builtin_loop_does(tmp_path):
    from raytune_opt.recipe import footprint

    session = LocalSession(str(tmp_path))
    train(_cfg(f"{__name__}:measuring_loop", epochs=1), session)
    (report,) = session.reports
    model, _ = load_model(tmp_path / LAST)
    assert report["params"] == footprint.count_params(model) and report["model_bytes"] == footprint.model_bytes(model)
    assert report["macs"] > 0 and report["latency_ms"] > 0
    builtin = LocalSession(str(tmp_path / "builtin"))
    train({**_cfg("builtin", epochs=1)}, builtin)
    assert {k: builtin.reports[0][k] for k in ("params", "macs", "model_bytes")} == {
        k: report[k] for k in ("params", "macs", "model_bytes")}  # the same model, the same measures
