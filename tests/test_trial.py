"""What a multi-worker trial hands Ray Train (raytune_opt.trial)."""

from __future__ import annotations

import ray.train
from ray.train.v2._internal.callbacks import DatasetsCallback

from raytune_opt import trial


def _noop(config):
    pass


def test_a_trainer_without_datasets_starts_no_ray_data_actor():
    # Train V2 adds a DatasetsCallback (a DatasetManager actor per run) whatever the datasets;
    # ours drops it when there are none, and keeps it when a user passes some.
    trainer = trial._trainer_class()(_noop, scaling_config=ray.train.ScalingConfig(num_workers=2))
    names = [type(c).__name__ for c in trainer._create_default_callbacks()]
    assert "BackendSetupCallback" in names and "DatasetsCallback" not in names, names
    with_data = trial._trainer_class()(_noop, scaling_config=ray.train.ScalingConfig(num_workers=2),
                                       datasets={"train": [1, 2, 3]})
    assert any(isinstance(c, DatasetsCallback) for c in with_data._create_default_callbacks())
