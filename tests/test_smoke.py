"""`raytune-opt validate --smoke`: one sampled config's data and model, one batch through them,
and the ONNX export promotion would do; a broken component is one line and exit 2."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from raytune_opt.cli import main
from raytune_opt.smoke import sample_config
from raytune_opt.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]

USER = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset


def data(n: int = 32):
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % 3
    return TensorDataset(x, y), TensorDataset(x[:8], y[:8])


class Good(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.fc(x)


class TwoOutputs(Good):
    def __init__(self):
        super().__init__(2)


class Raises(Good):
    def forward(self, x):
        return self.fc(x.view(-1, 7))


class Frozen(Good):
    def forward(self, x):
        return self.fc(x).detach()


class Branchy(Good):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
            return self.fc(x)
        return -self.fc(x)


def broken_init(num_classes):
    raise ValueError("hidden must be even")
'''


@pytest.fixture
def spec_path(tmp_path):
    name = f"usmoke_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER)
    yield tmp_path / "spec.yaml", name
    sys.modules.pop(name, None)


def _write(path, mod, model, promote="enabled: false"):
    path.write_text(textwrap.dedent(f"""
        data: {{dataset: "{mod}:data"}}
        model: {{name: "{mod}:{model}"}}
        promote: {{{promote}}}
    """))
    return path


def test_the_sample_draws_every_active_key_inside_its_domain():
    spec = load_spec(ROOT / "search_spaces" / "digits_conditional.yaml")
    for seed in range(20):
        config = sample_config(spec.space, seed)
        for p in spec.space.params:
            assert (p.key in config) == spec.space.is_active(p.key, config), (seed, p.key)
            if p.key not in config:
                continue
            v, d = config[p.key], p.domain
            if d.categorical:
                assert v in d.args
            elif d.kind != "normal":
                assert d.args[0] <= v <= d.args[1] and (not d.integer or isinstance(v, int)), (p.key, v)
    assert sample_config(spec.space, 3) == sample_config(spec.space, 3)


def test_the_user_data_example_passes_the_smoke_test_with_its_onnx_export(capsys):
    assert main(["validate", "--quiet", str(ROOT / "search_spaces" / "examples" / "text_user_data.yaml"),
                 "--smoke"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("smoke: ")]
    assert len(lines) == 5 and lines[-1] == "smoke: ok", lines
    assert lines[1].startswith("smoke: data user_text.data:topics: 1280 train / 320 val / 400 test samples, inputs (24,) int64, "
                               "4 classes")
    assert "a batch (8, 24) -> (8, 4)" in lines[2] and "backward ok" in lines[2]
    assert lines[3].startswith("smoke: onnx export ok")


@pytest.mark.parametrize("model, message", [
    ("TwoOutputs", "a batch of inputs (8, 6) gave shape (8, 2), but 3 classes need (batch, num_classes) = (8, 3)"),
    ("Raises", "forward on a batch of (8, 6) raised RuntimeError: shape '[-1, 7]' is invalid for input of size 48 "
               "(at {file}:"),
    ("Frozen", "no parameter got a gradient from the loss"),
    ("broken_init", "building it raised ValueError: hidden must be even (at {file}:"),
])
def test_a_broken_model_is_one_line_naming_what_failed(spec_path, model, message, capsys):
    path, mod = spec_path
    assert main(["validate", "--quiet", str(_write(path, mod, model)), "--smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"smoke: model.name {mod}:{model}: " + message.format(file=path.parent / f"{mod}.py") in err


def test_a_model_that_does_not_export_fails_before_the_sweep_not_after(spec_path, capsys):
    path, mod = spec_path
    assert main(["validate", "--quiet", str(_write(path, mod, "Branchy", "targets: [onnx]")), "--smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"smoke: model.name {mod}:Branchy: ONNX export (promotion's first step) failed: " in err
    assert "TorchExportError: Failed to export the model with torch.export." in err and "\x1b" not in err
    assert err.rstrip().endswith("set promote.enabled: false to sweep without promotion")
