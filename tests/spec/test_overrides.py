"""key=value overrides on top of a spec file."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_opt.errors import SpecError
from raytune_opt.spec import load_spec, parse_override
from raytune_opt.spec.validate import check_local_resources

DIGITS = Path(__file__).resolve().parents[2] / "search_spaces" / "digits_cnn.yaml"


def test_overrides_are_typed_and_merged():
    spec = load_spec(DIGITS, ["search.num_samples=4", "train.epochs=2", "name=quick",
                              "train.optimizer.lr=1e-2", "promote.targets=[onnx]"])
    assert spec.data["search"]["num_samples"] == 4
    assert spec.data["train"]["epochs"] == 2
    assert spec.name == "quick"
    assert spec.data["train"]["optimizer"]["lr"] == pytest.approx(0.01)
    assert spec.data["promote"]["targets"] == ["onnx"]
    # Untouched settings keep the file's values.
    assert spec.data["train"]["batch_size"] == 64


def test_space_overrides_keep_the_dotted_key_whole():
    assert parse_override("space.train.optimizer.lr={loguniform: [0.001, 0.1]}") == (
        ("space", "train.optimizer.lr"), {"loguniform": [0.001, 0.1]})
    spec = load_spec(DIGITS, ["space.train.optimizer.lr={loguniform: [0.001, 0.1]}"])
    assert spec.space.by_key["train.optimizer.lr"].domain.args == (0.001, 0.1)


def test_overrides_change_the_hash():
    assert load_spec(DIGITS).sha256() != load_spec(DIGITS, ["train.epochs=3"]).sha256()
    assert load_spec(DIGITS).sha256() == load_spec(DIGITS).sha256()


def test_local_resource_check_counts_workers_times_cpus():
    spec = load_spec(DIGITS, ["resources.num_workers=2", "resources.cpus_per_worker=2"])
    problems = check_local_resources(spec.data, cpus=2, gpus=0)
    assert len(problems) == 1 and "needs 4 CPUs" in problems[0][1]
    assert check_local_resources(spec.data, cpus=4, gpus=0) == []
    gpu = load_spec(DIGITS, ["resources.gpus_per_worker=1"])
    assert "GPUs" in check_local_resources(gpu.data, cpus=8, gpus=0)[0][1]


def test_validate_local_flag_reports_unsatisfiable_resources(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(DIGITS, ["resources.num_workers=512"], local=True)
    assert "resources.cpus_per_worker" in str(err.value) and "override" not in err.value.problems[0].where
