"""One conformance test over every registered promotion step (registry.PROMOTION_STEPS): asked
for alone, a step runs after what it needs, and leaves artifacts the manifest describes the
same way (a status, a reason unless ok, a hashed file unless skipped or failed)."""

from __future__ import annotations

import json
import sys

import pytest

from raytune_opt import registry
from raytune_opt.promote import pipeline, promote
from raytune_opt.promote.select import sha256_file
from tests.promote.conftest import set_promote
from tests.promote.test_promote import ARTIFACT_KEYS

# What a step needs the spec to say to run at all (validation refuses it otherwise), kept cheap:
# distill's student, one epoch each of training.
SETTINGS = {"distill": {"distill": {"model": {"width": 8}, "epochs": 1}},
            "prune": {"prune": {"finetune_epochs": 1}}}


def test_targets_are_the_steps_in_registration_order_with_what_they_need():
    assert pipeline.parse_targets("tensorrt, onnx") == ["onnx", "tensorrt"]
    for name in registry.PROMOTION_STEPS:
        steps = pipeline.steps_for([name])
        assert steps[-1] == name and set(registry.PROMOTION_STEPS[name].meta["needs"]) <= set(steps[:-1])


@pytest.mark.parametrize("name", registry.PROMOTION_STEPS.names())
def test_every_promotion_step_alone_runs_after_its_needs_and_records_its_artifacts(name, experiment, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU step must skip cleanly without one
    monkeypatch.setitem(sys.modules, "ray", None)
    set_promote(experiment, **SETTINGS.get(name, {}))
    doc = promote(experiment, targets=[name])
    assert doc["status"] == "ok", doc["artifacts"]  # nothing failed (a rejection or a skip says why below)
    assert doc["targets"] == [name]
    arts = doc["artifacts"]
    assert arts[0]["name"] == "pytorch" and arts[0]["status"] == "ok"  # the fp32 reference everything compares to
    names = [a["name"] for a in arts]
    built = pipeline.steps_for([name])
    # Each step's artifacts are named after it and come after those of the steps it needs.
    owners = [next(s for s in built if n == s or n.startswith(s + "-")) for n in names[1:]]
    assert owners == sorted(owners, key=built.index) and set(owners) == set(built), names
    for rec in arts:
        assert ARTIFACT_KEYS <= set(rec), rec
        assert rec["status"] in ("ok", "rejected", "skipped", "failed"), rec
        assert rec["status"] == "ok" or rec["reason"], rec  # anything but ok says why
        if rec["status"] in ("ok", "rejected") and rec["name"] != "pytorch":
            path = experiment / "promotion" / rec["path"]
            assert path.is_file() and rec["sha256"] == sha256_file(path), rec
            assert rec["accuracy"] is not None, rec  # scored on the validation set
    assert json.loads((experiment / "promotion" / "manifest.json").read_text()) == doc
