"""One conformance test over every Strategy: really train a tiny model on one gloo rank through
the interface alone (setup, sync_context, backward, step, before_validation, model_state_dict,
save_shards, checkpoint_extra, close), as the loop does, and check what each method promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raytune_opt import _imports
from raytune_opt.recipe.session import LocalSession
from raytune_opt.spec import schema
from raytune_opt.strategies import NAMES, build_strategy
from tests._procs import free_port

CASES = [  # (id, train.strategy, train.deepspeed)
    ("ddp", "ddp", {}),
    ("zero1", "deepspeed", {"zero_optimization": {"stage": 1}}),
    ("zero3", "deepspeed", {"zero_optimization": {"stage": 3}}),
]
assert {c[1] for c in CASES} == set(NAMES), "every registered strategy has a case"


class _OneRankSession(LocalSession):
    """One gloo rank: DDP wraps the model when a process group exists (DeepSpeed makes its own)."""

    def prepare_model(self, model):
        return DistributedDataParallel(model) if dist.is_initialized() else model


@pytest.fixture
def gloo_group_for(request):
    def start(strategy: str):
        if strategy == "ddp":  # DDP needs the group Ray Train would give it; DeepSpeed starts its own
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield start
    if dist.is_initialized():
        dist.destroy_process_group()


def _problem(n: int = 128):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_every_strategy_trains_steps_and_saves_through_the_interface(case, tmp_path, gloo_group_for):
    name, strategy_name, ds_cfg = case
    if strategy_name == "deepspeed" and not _imports.is_available("deepspeed"):
        pytest.skip("needs the deepspeed extra")
    gloo_group_for(strategy_name)
    torch.manual_seed(0)
    accum = 2
    train_cfg = {**schema.defaults()["train"], "strategy": strategy_name, "deepspeed": ds_cfg, "batch_size": 16,
                 "grad_accum_steps": accum, "grad_clip_norm": 1.0}
    session = _OneRankSession(str(tmp_path))
    strategy = build_strategy(session, train_cfg)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    x, y = _problem()
    try:
        wrapped = strategy.setup(model, optimizer)
        losses, norms = [], []
        for epoch in range(6):
            epoch_loss = 0.0
            for i in range(0, len(x), 16):
                boundary = (i // 16 + 1) % accum == 0
                with strategy.sync_context(boundary):
                    with strategy.autocast()():
                        loss = nn.functional.cross_entropy(wrapped(x[i:i + 16]), y[i:i + 16])
                    strategy.backward(loss)
                epoch_loss += loss.item()
                if boundary:
                    norm = strategy.step()
                    assert isinstance(norm, torch.Tensor) and norm.dim() == 0
                    norms.append(norm.item())
            losses.append(epoch_loss / (len(x) // 16))
        assert strategy.pop_skipped_steps() == 0  # fp32: the loss scaler skips nothing
        assert len(norms) == 6 * len(x) // (16 * accum) and all(n > 0 for n in norms)
        assert losses[-1] < 0.5 * losses[0], losses  # it learned

        # The full weights load into a plain model of the same shape and give the same outputs.
        strategy.before_validation()
        state = strategy.model_state_dict()
        plain = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        plain.load_state_dict(state)
        wrapped.eval()
        with torch.no_grad():
            torch.testing.assert_close(plain(x), wrapped(x).float(), rtol=1e-5, atol=1e-5)

        # Checkpoint parts: shards exactly when the strategy says it shards, named relative to the
        # directory and present; what the consolidated checkpoint stores is plain JSON.
        shards = strategy.save_shards(str(tmp_path), 1)
        assert bool(shards) == strategy.sharded_checkpoints
        assert all(not Path(s).is_absolute() and (tmp_path / s).is_file() for s in shards)
        json.dumps(strategy.checkpoint_extra(1))
        opt_state = strategy.optimizer_state_dict()
        assert (opt_state is None) == strategy.sharded_checkpoints  # sharded state lives in the shards
    finally:
        strategy.close()
