"""DDP and ZeRO 1/2/3 on two gloo ranks: same accuracy band, consolidated checkpoints, resume.

Two ranks come from ``torch.multiprocessing.spawn`` rather than a Ray TorchTrainer: one
process pair runs all four strategies back to back (a TorchTrainer costs ~20 s of start-up
per trial here), and the test can read each rank's reports and files directly. The Ray
path (every rank's shard reaching Train's persisted checkpoint) is covered by
test_sweep.py in this folder.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raytune_opt.recipe.checkpoint import load_model
from raytune_opt.recipe.data import load_data
from raytune_opt.recipe.loop import classification_metrics, train
from tests._procs import free_port
from tests._spawn import SpawnSession

pytestmark = pytest.mark.slow

WORLD = 2
RUNS = {  # name -> train.strategy, train.deepspeed
    "ddp": ("ddp", {}),
    "zero1": ("deepspeed", {"zero_optimization": {"stage": 1}}),
    "zero2": ("deepspeed", {"zero_optimization": {"stage": 2}}),
    "zero3": ("deepspeed", {"zero_optimization": {"stage": 3}}),
}
EPOCHS = 3


def _cfg(strategy: str, deepspeed: dict, epochs: int = EPOCHS) -> dict:
    return {"seed": 0, "data": {"dataset": "digits"}, "model": {"name": "small_cnn", "width": 16},
            "train": {"epochs": epochs, "batch_size": 32, "grad_accum_steps": 2, "grad_clip_norm": 5.0,
                      "optimizer": {"name": "adamw", "lr": 3e-3}, "strategy": strategy, "deepspeed": deepspeed}}


def _worker(rank: int, world: int, port: int, out: str, jobs: list) -> None:
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world))  # as Ray Train sets them
    log_file = logging.FileHandler(f"{out}/rank{rank}.log")
    logging.getLogger("raytune_opt").addHandler(log_file)
    logging.getLogger("raytune_opt").setLevel(logging.INFO)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for name, cfg, ckpt_dir, resume in jobs:
            session = SpawnSession(rank, world, ckpt_dir)
            train(cfg, session, resume_from=resume)
            torch.save(session.reports, f"{out}/{name}.rank{rank}.pt")
            if session.model is not None:  # DDP: the prepared model, to compare the ranks' parameters
                params = {k: v.detach().clone() for k, v in session.model.module.named_parameters()}
                torch.save(params, f"{out}/{name}.params{rank}.pt")
            dist.barrier()  # rank 0 writes last.pt after the others are done: a resume job must wait for it
    finally:
        dist.destroy_process_group()


EXAMPLES = Path(__file__).resolve().parents[2] / "search_spaces" / "examples"


def _user_cfg(strategy: str, deepspeed: dict, epochs: int = EPOCHS) -> dict:
    """The shipped example's own data, model and loop (search_spaces/examples/user_text/)."""
    return {"seed": 0, "data": {"dataset": "user_text.data:topics", "args": {"n": 800, "vocab_size": 100}},
            "model": {"name": "user_text.models:BagOfEmbeddings", "args": {"vocab_size": 100}},
            "train": {"loop": "user_text.loop:train", "epochs": epochs, "batch_size": 32, "grad_clip_norm": 5.0,
                      "optimizer": {"name": "adamw", "lr": 2e-2}, "strategy": strategy, "deepspeed": deepspeed}}


def _spawn(world: int, out: Path, jobs: list) -> None:
    mp.spawn(_worker, args=(world, free_port(), str(out), jobs), nprocs=world, join=True)


def _val_accuracy(model) -> float:
    data = load_data({"dataset": "digits", "test_fraction": 0.2}, 0)  # as the trials split it (the schema default)
    with torch.no_grad():
        pred = model(data.x_val).argmax(1)
    confusion = torch.bincount(data.y_val * 10 + pred, minlength=100).view(10, 10)
    return classification_metrics(confusion)["val_accuracy"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every strategy for EPOCHS epochs on two ranks; ZeRO-2 also for 2 epochs, then resumed."""
    out = tmp_path_factory.mktemp("zero")
    jobs = [(name, _cfg(*spec), str(out / name), None) for name, spec in RUNS.items()]
    jobs.append(("zero2_short", _cfg(*RUNS["zero2"], epochs=2), str(out / "zero2_short"), None))
    jobs.append(("zero2_resumed", _cfg(*RUNS["zero2"]), str(out / "zero2_short"),
                 str(out / "zero2_short" / "last.pt")))
    # A user loop through the same TrialContext: DDP, and ZeRO-2 straight and resumed.
    jobs.append(("user_ddp", _user_cfg(*RUNS["ddp"]), str(out / "user_ddp"), None))
    jobs.append(("user_zero2", _user_cfg(*RUNS["zero2"]), str(out / "user_zero2"), None))
    jobs.append(("user_zero2_short", _user_cfg(*RUNS["zero2"], epochs=2), str(out / "user_zero2_short"), None))
    jobs.append(("user_zero2_resumed", _user_cfg(*RUNS["zero2"]), str(out / "user_zero2_short"),
                 str(out / "user_zero2_short" / "last.pt")))
    sys.path.insert(0, str(EXAMPLES))  # spawned ranks start with the parent's sys.path
    try:
        _spawn(WORLD, out, jobs)
    finally:
        sys.path.remove(str(EXAMPLES))
    return out


def _reports(out: Path, name: str, rank: int = 0) -> list[dict]:
    return torch.load(out / f"{name}.rank{rank}.pt", weights_only=False)


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3"])
def test_zero_trains_into_the_ddp_accuracy_band(runs, name):
    ddp, zero = _reports(runs, "ddp")[-1], _reports(runs, name)[-1]
    assert ddp["val_accuracy"] > 0.85, ddp
    assert abs(zero["val_accuracy"] - ddp["val_accuracy"]) <= 0.03, (name, zero["val_accuracy"], ddp["val_accuracy"])
    assert zero["stop_reason"] == "completed"
    # Both ranks report the same numbers.
    other = _reports(runs, name, rank=1)[-1]
    assert other["val_accuracy"] == zero["val_accuracy"] and other["train_loss"] == zero["train_loss"]


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3"])
def test_every_rank_reports_its_own_shard(runs, name):
    r0, r1 = _reports(runs, name, 0)[-1], _reports(runs, name, 1)[-1]
    tag = f"zero/epoch{EPOCHS}"
    assert r0["checkpoint_dir"] == r1["checkpoint_dir"] == str(runs / name)
    assert any("pp_rank_0_" in s for s in r0["shards"]) and not any("pp_rank_1_" in s for s in r0["shards"])
    assert any("pp_rank_1_" in s for s in r1["shards"]) and not any("pp_rank_0_" in s for s in r1["shards"])
    assert "zero/latest" in r0["shards"] and all(s.startswith(tag) for s in r1["shards"])
    for shard in r0["shards"] + r1["shards"]:
        assert (runs / name / shard).is_file()


@pytest.mark.parametrize("name", ["ddp", "zero1", "zero2", "zero3"])
def test_consolidated_checkpoint_loads_into_the_plain_model(runs, name):
    model, ckpt = load_model(runs / name / "last.pt")  # no DeepSpeed involved
    assert ckpt["epoch"] == EPOCHS and all(v.dtype in (torch.float32, torch.int64) for v in ckpt["model_state"].values())
    reported = _reports(runs, name)[-1]["val_accuracy"]
    # The loop's validation pads the ranks' shards with at most one repeated sample.
    assert _val_accuracy(model) == pytest.approx(reported, abs=1.5 / 288)
    if name != "ddp":
        assert ckpt["optimizer_state"] is None and ckpt["zero"]["world_size"] == WORLD


def test_resume_at_the_same_world_size_restores_the_optimizer_state(runs):
    straight, resumed = _reports(runs, "zero2"), _reports(runs, "zero2_resumed")
    assert [r["epoch"] for r in resumed] == [EPOCHS]
    for key in ("train_loss", "val_loss", "val_accuracy", "grad_norm"):
        assert resumed[0][key] == pytest.approx(straight[-1][key], rel=1e-4), key
    assert "fresh optimizer" not in (runs / "rank0.log").read_text()


def test_resume_at_another_world_size_falls_back_to_the_consolidated_weights(runs, tmp_path):
    import shutil

    src = tmp_path / "ckpt"
    shutil.copytree(runs / "zero2", src)
    _spawn(1, tmp_path, [("one_rank", _cfg(*RUNS["zero2"], epochs=EPOCHS + 1), str(src), str(src / "last.pt"))])
    log = (tmp_path / "rank0.log").read_text()
    assert "fresh optimizer" in log and "written by 2 rank(s) and this run has 1" in log
    (report,) = _reports(tmp_path, "one_rank")
    assert report["epoch"] == EPOCHS + 1 and report["val_accuracy"] > 0.85


def test_a_user_loop_keeps_its_ranks_in_sync_under_ddp_and_runs_under_zero2(runs, monkeypatch):
    """The example's own loop (ctx.prepare_model / loader / backward / step / all_sum / report)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    for name in ("user_ddp", "user_zero2"):
        r0, r1 = _reports(runs, name, 0), _reports(runs, name, 1)
        assert [r["epoch"] for r in r0] == [1, 2, 3] and r0[-1]["stop_reason"] == "completed"
        assert [r["val_accuracy"] for r in r0] == [r["val_accuracy"] for r in r1]  # the same numbers on both ranks
        assert r0[-1]["val_accuracy"] > 0.6, (name, r0[-1])
        model, ckpt = load_model(runs / name / "last.pt", trust_code=True)  # consolidated, no DeepSpeed needed
        assert ckpt["model"]["target"] == "user_text.models:BagOfEmbeddings" and ckpt["epoch"] == EPOCHS
    p0, p1 = (torch.load(runs / f"user_ddp.params{r}.pt") for r in range(WORLD))
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
    # ZeRO-2 resumed after 2 epochs: the third epoch as the straight run had it.
    straight, resumed = _reports(runs, "user_zero2"), _reports(runs, "user_zero2_resumed")
    assert [r["epoch"] for r in resumed] == [EPOCHS]
    assert resumed[0]["val_loss"] == pytest.approx(straight[-1]["val_loss"], rel=1e-4)
