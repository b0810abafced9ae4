"""Two gloo ranks through a DDP session: identical parameters and identical reports."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raytune_opt.recipe.loop import train
from tests._procs import free_port
from tests._spawn import SpawnSession

WORLD = 2


def _worker(rank: int, port: int, out_dir: str, cfg: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        session = SpawnSession(rank, WORLD, out_dir)
        train(cfg, session)
        params = {k: v.detach().clone() for k, v in session.model.module.named_parameters()}
        torch.save({"reports": session.reports, "params": params}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_end_identical(tmp_path):
    cfg = {"seed": 0, "data": {"dataset": "digits"}, "model": {"name": "small_cnn", "width": 8, "dropout": 0.2},
           "train": {"epochs": 2, "limit_batches": 6, "grad_accum_steps": 2, "checkpoint": True,
                     "augment": {"hflip": 0.5}}}
    mp.spawn(_worker, args=(free_port(), str(tmp_path), cfg), nprocs=WORLD, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    # Every rank reports the same numbers (averaged with all_reduce), except wall-clock ones.
    for a, b in zip(rank0["reports"], rank1["reports"]):
        for key in ("epoch", "train_loss", "val_loss", "val_accuracy", "val_f1", "grad_norm", "lr",
                    "samples_per_s", "stop_reason"):
            assert a[key] == b[key], key
    assert rank0["params"].keys() == rank1["params"].keys()
    assert all(torch.equal(rank0["params"][k], rank1["params"][k]) for k in rank0["params"])
    assert rank0["reports"][-1]["stop_reason"] == "completed"
    assert rank0["reports"][-1]["checkpoint_dir"] == str(tmp_path) and rank1["reports"][-1]["checkpoint_dir"] is None
