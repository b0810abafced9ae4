"""Two gloo ranks from ``torch.multiprocessing.spawn``: a Session like Ray Train's, in miniature."""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from raytune_opt.recipe.session import Session


class SpawnSession(Session):
    """What Ray Train's session does, in miniature: DDP (with several ranks), a
    DistributedSampler, every report kept with its checkpoint directory and shards, and the
    prepared model kept so a test can compare parameters between ranks."""

    def __init__(self, rank: int, world_size: int, checkpoint_dir: str):
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cpu")
        self.num_threads = 1
        self.reports: list[dict] = []
        self._dir = checkpoint_dir
        self.model = None

    def prepare_model(self, model):
        self.model = DistributedDataParallel(model) if self.world_size > 1 else model
        return self.model

    def prepare_loader(self, loader):
        sampler = DistributedSampler(loader.dataset, num_replicas=self.world_size, rank=self.rank,
                                     shuffle=isinstance(loader.sampler, RandomSampler), seed=0)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                          collate_fn=loader.collate_fn)

    def report(self, metrics, checkpoint_dir, shards=()):
        self.reports.append({**metrics, "checkpoint_dir": checkpoint_dir, "shards": list(shards)})

    def checkpoint_root(self):
        return self._dir
