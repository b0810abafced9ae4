"""Specs with a user optimizer or lr schedule: train.optimizer.name / train.lr_schedule.name as
'module:callable', their args checked against the signature, the built-ins' settings refused."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest

from raytune_opt import registry
from raytune_opt.spec import load_spec
from raytune_opt.spec.validate import HASH_NEUTRAL
from tests._user_code import spec_problems, user_module, write_spec

ROOT = Path(__file__).resolve().parents[2]

# Written for the tests: a Lion optimizer (an Optimizer subclass), the same as a factory, and
# schedules. Validation imports the module, never calls anything in it.
OPTIM = '''
import torch


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023): the sign of an interpolated momentum."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


def lion(params, *, lr, beta1=0.9, beta2=0.99):
    return Lion(params, lr=lr, betas=(beta1, beta2))


def cosine_to(optimizer, *, total_steps, floor=0.0):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=floor)


def needs_gamma(optimizer, gamma):
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


def keyword_only(*, lr):
    return None
'''


def problems(path, overrides=()) -> list[str]:
    """The spec's problems as 'LINE: key: what; fix' (columns move with the module's name)."""
    return [re.sub(rf"^{re.escape(str(path))}:(\d+):\d+: ", r"\1: ", p) for p in spec_problems(path, overrides)]


@pytest.fixture
def spec_dir(tmp_path):
    """A directory holding a user module (unique name per test) and nothing else."""
    yield from user_module(tmp_path, "uoptim", OPTIM)


def test_a_user_optimizer_and_schedule_validate_with_fixed_and_searched_args(spec_dir):
    directory, mod = spec_dir
    path = write_spec(directory, f"""
        train:
          optimizer:
            name: {mod}:Lion
            lr: 3.0e-4
            weight_decay: 0.01
            args: {{betas: [0.9, 0.98]}}
          lr_schedule:
            name: {mod}:cosine_to
        space:
          train.optimizer.lr: {{loguniform: [1.0e-4, 1.0e-3]}}
          train.lr_schedule.args.floor: {{choice: [0.0, 1.0e-5]}}
    """)
    spec = load_spec(path)
    assert spec.data["train"]["optimizer"]["args"] == {"betas": [0.9, 0.98]}
    assert spec.data["train"]["lr_schedule"] == {**spec.data["train"]["lr_schedule"], "name": f"{mod}:cosine_to",
                                                 "args": {}}
    assert set(spec.space.by_key) == {"train.optimizer.lr", "train.lr_schedule.args.floor"}
    # A factory taking the spec's lr by name, args by keyword.
    path = write_spec(directory, f"train:\n  optimizer: {{name: '{mod}:lion', args: {{beta2: 0.95}}}}\n")
    assert load_spec(path).data["train"]["optimizer"]["args"] == {"beta2": 0.95}


def test_a_wrong_argument_says_which_it_takes_with_did_you_mean(spec_dir):
    directory, mod = spec_dir
    path = write_spec(directory, f"""
        train:
          optimizer: {{name: '{mod}:lion', args: {{beta: 0.9}}}}
          lr_schedule: {{name: '{mod}:cosine_to', args: {{flor: 0.0}}}}
        space:
          train.optimizer.args.beta_2: {{uniform: [0.9, 0.999]}}
    """)
    assert problems(path) == [
        f"3: train.optimizer.args.beta: {mod}:lion takes no argument 'beta' (got 0.9); "
        "did you mean 'beta2'? it takes: beta1, beta2",
        f"6: space.train.optimizer.args.beta_2: {mod}:lion takes no argument 'beta_2' (got "
        "'train.optimizer.args.beta_2'); did you mean 'beta2'? it takes: beta1, beta2",
        f"4: train.lr_schedule.args.flor: {mod}:cosine_to takes no argument 'flor' (got 0.0); "
        "did you mean 'floor'? it takes: floor"]


def test_a_user_optimizer_that_does_not_import(spec_dir):
    directory, mod = spec_dir
    path = write_spec(directory, f"train:\n  optimizer: {{name: '{mod}:Lino'}}\n"
                                 f"  lr_schedule: {{name: 'no_such_pkg_xyz.sched:cosine'}}\n")
    found = problems(path)
    assert found[0] == (f"2: train.optimizer.name: cannot import '{mod}:Lino' ('{mod}' has no attribute "
                           f"'Lino'; did you mean 'Lion'?) (got '{mod}:Lino'); check the module path; user code is "
                           "imported from the spec's directory, the current directory, then sys.path")
    assert found[1].startswith(f"3: train.lr_schedule.name: cannot import 'no_such_pkg_xyz.sched:cosine' "
                                  "(No module named 'no_such_pkg_xyz')")
    assert len(found) == 2


def test_the_built_ins_settings_and_injected_names_are_refused_for_a_user_callable(spec_dir):
    directory, mod = spec_dir
    path = write_spec(directory, f"""
        train:
          optimizer: {{name: '{mod}:lion', momentum: 0.5, weight_decay: 0.1, args: {{lr: 0.1}}}}
          lr_schedule: {{name: '{mod}:cosine_to', warmup_epochs: 1, args: {{epochs: 3}}}}
    """)
    assert problems(path) == [
        f"3: train.optimizer.args.lr: lr is given by train.optimizer (got 0.1); remove it; {mod}:lion "
        "receives lr when its signature names it",
        f"3: train.optimizer.weight_decay: {mod}:lion takes no argument 'weight_decay' (got 0.1); remove "
        f"it; give {mod}:lion its own arguments in train.optimizer.args",
        f"3: train.optimizer.momentum: train.optimizer.momentum is a setting of the built-in optimizers, "
        f"not used by {mod}:lion (got 0.5); remove it; give {mod}:lion its own arguments in train.optimizer.args",
        f"4: train.lr_schedule.args.epochs: epochs is given by the recipe (got 3); remove it; "
        f"{mod}:cosine_to receives epochs when its signature names it",
        f"4: train.lr_schedule.warmup_epochs: train.lr_schedule.warmup_epochs is a setting of the built-in "
        f"lr schedules, not used by {mod}:cosine_to (got 1.0); remove it; give {mod}:cosine_to its own arguments in "
        "train.lr_schedule.args"]


def test_a_required_argument_and_the_leading_positional_one(spec_dir):
    directory, mod = spec_dir
    path = write_spec(directory, f"train:\n  optimizer: {{name: '{mod}:keyword_only'}}\n"
                                 f"  lr_schedule: {{name: '{mod}:needs_gamma'}}\n")
    assert problems(path) == [
        f"2: train.optimizer.name: {mod}:keyword_only must take params as its first positional argument "
        f"(got '{mod}:keyword_only'); define it as def build(params, **kwargs)",
        f"3: train.lr_schedule.name: {mod}:needs_gamma needs argument 'gamma', which nothing supplies (got "
        "train.lr_schedule.args {}); set train.lr_schedule.args.gamma, or search train.lr_schedule.args.gamma in space"]
    assert load_spec(path, [f"train.optimizer.name={mod}:Lion", "train.lr_schedule.args.gamma=0.9"])


def test_a_built_in_takes_no_args_and_a_searched_name_may_mix_both(spec_dir):
    directory, mod = spec_dir
    path = write_spec(directory, "train:\n  optimizer: {name: adam, args: {amsgrad: true}}\n")
    assert problems(path) == [
        f"2: train.optimizer.args: only user optimizers take args; built-in adam reads "
        "its train.optimizer keys (lr, beta1...) (got {\"amsgrad\": true}); remove it, or set "
        "train.optimizer.name to your own 'module:callable'"]
    path = write_spec(directory, f"""
        space:
          train.optimizer.name:
            choice:
              adam: {{train.optimizer.beta1: {{uniform: [0.8, 0.95]}}}}
              {mod}:lion: {{train.optimizer.args.beta2: {{uniform: [0.95, 0.999]}}}}
    """)
    spec = load_spec(path)
    assert spec.space.by_key["train.optimizer.name"].domain.args == ("adam", f"{mod}:lion")


def test_the_new_args_sections_leave_every_shipped_specs_sha256_as_it_was():
    # Resume compares Spec.sha256: train.optimizer.args and train.lr_schedule.args at their
    # default ({}) must hash as the specs did before those keys existed.
    assert HASH_NEUTRAL[("train", "optimizer", "args")] == HASH_NEUTRAL[("train", "lr_schedule", "args")] == {}
    for path in sorted((ROOT / "search_spaces").glob("**/*.yaml")):
        spec = load_spec(path)
        data = copy.deepcopy(spec.data)
        for section in ("optimizer", "lr_schedule"):
            assert data["train"][section].pop("args") == {}
        assert spec.sha256() == dataclasses.replace(spec, data=data).sha256(), path
    # Given args are hashed.
    digits = ROOT / "search_spaces" / "digits_cnn.yaml"
    plain = load_spec(digits, ["train.optimizer.name=torch.optim:Adam"])
    assert plain.sha256() != load_spec(digits, ["train.optimizer.name=torch.optim:Adam",
                                                "train.optimizer.args.amsgrad=true"]).sha256()


def test_validating_the_built_in_optimizers_and_schedules_imports_neither_torch_nor_ray(tmp_path):
    import subprocess
    import sys

    path = write_spec(tmp_path, f"""
        space:
          train.optimizer.name: {{choice: {list(registry.OPTIMIZERS)}}}
          train.lr_schedule.name: {{choice: {list(registry.LR_SCHEDULES)}}}
    """)
    probe = (f"import sys; from raytune_opt.spec import load_spec; load_spec({str(path)!r}); "
             "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["False", "False"]
