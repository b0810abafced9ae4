"""Every shipped YAML validates, says how to run it, and documents its keys inline."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_opt.cli import main
from raytune_opt.spec import load_spec
from raytune_opt.spec.schema import reference_markdown

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "search_spaces").rglob("*.yaml"))


def test_the_shipped_specs_are_there():
    names = {p.name for p in SPECS}
    assert {"digits_cnn.yaml", "cifar10_resnet18.yaml", "cifar100_resnet50_deepspeed.yaml",
            "imagefolder_mobilenetv3.yaml", "digits_conditional.yaml"} <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_spec_validates_and_prints_a_summary(path, capsys):
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK (sha256" in out and "searchers that can take it:" in out


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_spec_starts_with_the_command_that_runs_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and f"raytune-opt " in first and path.name in first


def test_digits_default_is_the_embedded_local_job():
    spec = load_spec(ROOT / "search_spaces" / "digits_cnn.yaml")
    d = spec.data
    assert d["data"]["dataset"] == "digits" and d["resources"]["gpus_per_worker"] == 0
    assert d["search"]["num_samples"] >= 16 and d["scheduler"]["name"] == "asha"
    assert d["search"]["algorithm"] == "optuna"


def test_readme_spec_reference_is_generated_from_the_schema():
    readme = (ROOT / "README.md").read_text()
    assert reference_markdown() in readme, "regenerate: python -c 'from raytune_opt.spec.schema import reference_markdown as r; print(r())'"
