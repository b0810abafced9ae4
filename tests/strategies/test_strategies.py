"""The strategy interface and DeepSpeed's config rules (fast: no training, no Ray)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import raytune_opt
from raytune_opt import _imports
from raytune_opt.cli import main
from raytune_opt.strategies import NAMES, Strategy, strategy_class
from raytune_opt.strategies import deepspeed as ds

ROOT = Path(__file__).resolve().parents[2]
DS_SPEC = ROOT / "search_spaces" / "digits_deepspeed.yaml"
HAS_DEEPSPEED = _imports.is_available("deepspeed")
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs the deepspeed extra")

# What every strategy must implement (the rest has defaults in Strategy).
ABSTRACT = ("setup", "sync_context", "backward", "step", "model_state_dict")


@pytest.mark.parametrize("name", NAMES)
def test_every_strategy_implements_the_interface(name):
    cls = strategy_class(name)
    assert issubclass(cls, Strategy) and cls.name == name
    for method in ABSTRACT:
        assert getattr(cls, method) is not getattr(Strategy, method), f"{cls.__name__} lacks {method}"
        assert inspect.signature(getattr(cls, method)) == inspect.signature(getattr(Strategy, method)), method


def test_the_recipe_owns_its_keys_and_the_rest_passes_through():
    train = {"batch_size": 16, "grad_accum_steps": 4, "grad_clip_norm": 2.0, "precision": "bf16",
             "deepspeed": {"zero_optimization": {"stage": 3, "overlap_comm": True}, "steps_per_print": 5}}
    cfg = ds.build_config(train)
    assert cfg["zero_optimization"] == {"stage": 3, "overlap_comm": True} and cfg["steps_per_print"] == 5
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["gradient_clipping"]) \
        == (16, 4, 2.0)
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert "optimizer" not in cfg and "scheduler" not in cfg  # ours: the client optimizer, our schedule
    assert "gradient_clipping" not in ds.build_config({**train, "grad_clip_norm": None})
    from raytune_opt.errors import RaytuneOptError

    with pytest.raises(RaytuneOptError, match=r"^train.deepspeed.optimizer: the recipe sets it from train.optimizer "
                                              r"\(got \{'type': 'Adam'\}\); remove train.deepspeed.optimizer"):
        ds.build_config({**train, "deepspeed": {"optimizer": {"type": "Adam"}}})


def _spec(tmp_path, body: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(body)
    return str(path)


@pytest.mark.parametrize("key, value, ours", [
    ("train_micro_batch_size_per_gpu", "8", "train.batch_size"),
    ("optimizer", "{type: Adam, params: {lr: 0.001}}", "train.optimizer"),
    ("scheduler", "{type: WarmupLR}", "train.lr_schedule"),
    ("bf16", "{enabled: true}", "train.precision"),
    ("gradient_clipping", "1.0", "train.grad_clip_norm"),
])
def test_a_key_the_recipe_owns_is_a_validation_error_naming_both(tmp_path, capsys, key, value, ours):
    spec = _spec(tmp_path, f"train:\n  strategy: deepspeed\n  deepspeed:\n    {key}: {value}\n")
    assert main(["validate", spec]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"spec.yaml:4:5: train.deepspeed.{key}:" in line and ours in line


def test_searching_a_key_the_recipe_owns_is_a_validation_error(tmp_path, capsys):
    spec = _spec(tmp_path, "train:\n  strategy: deepspeed\nspace:\n"
                           "  train.deepspeed.fp16.loss_scale: {choice: [0, 128]}\n")
    assert main(["validate", spec]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "space.train.deepspeed.fp16.loss_scale:" in line and "train.precision" in line


@needs_deepspeed
def test_deepspeeds_own_classes_check_the_config_and_every_searched_option(tmp_path, capsys):
    spec = _spec(tmp_path, "train:\n  strategy: deepspeed\n  deepspeed:\n    zero_optimization: {stage: 7}\n")
    assert main(["validate", spec]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "train.deepspeed.zero_optimization.stage:" in line and "(got 7)" in line
    spec = _spec(tmp_path, "train:\n  strategy: deepspeed\nspace:\n"
                           "  train.deepspeed.zero_optimization.stage: {choice: [1, 2, 5]}\n"
                           "  train.deepspeed.zero_optimization.overlap_comm: {choice: [true, false]}\n")
    assert main(["validate", spec]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "space.train.deepspeed.zero_optimization.stage:" in line and "option 5" in line


def test_fp16_without_a_gpu_is_a_validation_error_under_deepspeed(capsys):
    assert main(["validate", str(DS_SPEC), "train.precision=fp16"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "train.precision: fp16 needs a GPU" in line


@pytest.fixture
def without_deepspeed(monkeypatch):
    real = _imports.is_available
    monkeypatch.setattr(_imports, "is_available", lambda module: module != "deepspeed" and real(module))


def test_a_deepspeed_spec_without_the_extra_fails_validation_with_the_install_command(without_deepspeed, capsys):
    assert main(["validate", str(DS_SPEC)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "train.strategy:" in lines[0] and "pip install 'raytune-opt[deepspeed]'" in lines[0]


def test_searching_the_strategy_needs_the_extra_too(without_deepspeed, tmp_path, capsys):
    spec = _spec(tmp_path, "space:\n  train.strategy: {choice: [ddp, deepspeed]}\n")
    assert main(["validate", spec]) == 2
    assert "pip install 'raytune-opt[deepspeed]'" in capsys.readouterr().err


def test_a_ddp_spec_does_not_need_the_extra(without_deepspeed, capsys):
    assert main(["validate", str(ROOT / "search_spaces" / "digits_cnn.yaml"), "--quiet"]) == 0


@pytest.mark.parametrize("clip", [None, 0.5])
def test_ddp_step_returns_the_gradient_norm_before_clipping_as_torch_computes_it(clip):
    import torch
    from torch.nn.utils import get_total_norm

    from raytune_opt.recipe.session import LocalSession
    from raytune_opt.strategies.ddp import DDPStrategy

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    strategy = DDPStrategy(LocalSession(), {"grad_accum_steps": 1, "grad_clip_norm": clip, "precision": "fp32"})
    wrapped = strategy.setup(model, optimizer)
    strategy.backward(wrapped(torch.randn(8, 5)).square().sum())
    expected = get_total_norm([p.grad for p in model.parameters()])
    grads = [p.grad.clone() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    norm = strategy.step()
    assert expected > 0.5 and torch.allclose(norm, expected, rtol=1e-6, atol=0)
    scale = 1.0 if clip is None else min(1.0, clip / (float(expected) + 1e-6))  # clip_grad_norm_'s rule
    for p, b, g in zip(model.parameters(), before, grads):
        assert torch.allclose(p.detach(), b - 0.1 * scale * g, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


@needs_deepspeed
def test_validating_deepspeed_specs_imports_neither_torch_nor_ray_nor_deepspeed():
    # A process without torch has DeepSpeed's own classes judge the config in a child
    # interpreter: the shipped DeepSpeed specs validate with none of the three imported, and the
    # child's answers are those this process (which holds torch) computes in-process.
    from raytune_opt.strategies import deepspeed_config

    train = {"batch_size": 16, "grad_accum_steps": 1, "grad_clip_norm": None, "precision": "fp32"}
    configs = [ds.build_config({**train, "deepspeed": {"zero_optimization": {"stage": stage}}}) for stage in (7, 2)]
    probe = ("import json, sys; import raytune_opt\n"  # validate: load_spec, every problem as a list
             "from raytune_opt.strategies.deepspeed_config import check_configs\n"
             "problems = [[str(p) for p in raytune_opt.validate(path)] for path in sys.argv[2:]]\n"
             "found = check_configs(json.loads(sys.argv[1]))\n"
             "print(json.dumps([problems, found, [m for m in ('torch', 'ray', 'deepspeed') if m in sys.modules]]))")
    specs = [str(DS_SPEC), str(ROOT / "search_spaces" / "cifar100_resnet50_deepspeed.yaml")]
    proc = subprocess.run([sys.executable, "-c", probe, json.dumps(configs), *specs], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    problems, found, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [] and problems == [[], []]
    assert "torch" in sys.modules  # so this process checks in-process
    here = deepspeed_config.check_configs(configs)
    assert [[(tuple(where), what) for where, what in f] for f in found] == here
    assert here[0][0][0] == ("zero_optimization", "stage") and "(got 7)" in here[0][0][1] and here[1] == []
