"""Specs with user models: model.name as 'module:callable', model.args checked against the signature."""

from __future__ import annotations


import pytest

from raytune_opt import registry
from raytune_opt.cli import main
from raytune_opt.spec import load_spec
from tests._user_code import spec_problems, user_module, write_spec

NET = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int, num_classes: int, blocks: int = 1):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)


def anything(**kwargs):
    return Net(8, kwargs["num_classes"])
'''


@pytest.fixture
def spec_dir(tmp_path):
    """A directory holding a user package (unique name per test) and nothing else."""
    yield from user_module(tmp_path, "umodels", NET, package=True)


def test_a_user_model_next_to_the_spec_validates_with_fixed_and_searched_args(spec_dir, tmp_path, monkeypatch):
    directory, pkg = spec_dir
    monkeypatch.chdir(tmp_path.parent)  # found through the spec's directory, not the current one
    path = write_spec(directory, f"""
        model:
          name: {pkg}:Net
          args: {{hidden: 16}}
        space:
          model.args.blocks: {{choice: [1, 2]}}
          model.args.hidden: {{randint: [8, 33]}}
    """)
    spec = load_spec(path)
    assert spec.data["model"]["args"] == {"hidden": 16}
    assert spec.code_dirs == (str(directory), str(tmp_path.parent))
    assert set(spec.space.by_key) == {"model.args.blocks", "model.args.hidden"}


def test_a_required_arg_may_be_supplied_by_the_space_alone(spec_dir):
    directory, pkg = spec_dir
    path = write_spec(directory, f"model: {{name: '{pkg}:Net'}}\nspace:\n  model.args.hidden: {{choice: [8, 16]}}\n")
    assert load_spec(path).space.by_key["model.args.hidden"].domain.args == (8, 16)
    # ... and without the space it is missing.
    assert spec_problems(path, ["space={}"]) == [
        f"{path}:1:9: model.name: {pkg}:Net needs argument 'hidden', which nothing supplies (got model.args {{}}); "
        "set model.args.hidden, or search model.args.hidden in space"]


def test_a_kwargs_signature_takes_any_arg(spec_dir):
    directory, pkg = spec_dir
    path = write_spec(directory, f"model:\n  name: {pkg}:anything\n  args: {{whatever: 1, colour: red}}\n")
    assert load_spec(path).data["model"]["args"] == {"whatever": 1, "colour": "red"}


def test_model_name_and_args_from_overrides(spec_dir):
    directory, pkg = spec_dir
    path = write_spec(directory, "name: x\n")
    spec = load_spec(path, [f"model.name={pkg}:Net", "model.args.hidden=4"])
    assert spec.data["model"] == {**spec.data["model"], "name": f"{pkg}:Net", "args": {"hidden": 4}}
    problems = spec_problems(path, [f"model.name={pkg}:Net", "model.args.hiden=4"])
    assert len(problems) == 2 and problems[0].startswith(f"override 'model.args.hiden=4': model.args.hiden: "
                                                         f"{pkg}:Net takes no argument 'hiden' (got 4); did you mean "
                                                         f"'hidden'?")


def test_searching_a_builtin_against_a_user_model_checks_args_per_option(spec_dir):
    directory, pkg = spec_dir
    body = f"""
        model: {{name: small_cnn}}
        space:
          model.name:
            choice:
              small_cnn: {{}}
              "{pkg}:Net": {{model.args.hidden: {{choice: [8, 16]}}}}
    """
    assert set(load_spec(write_spec(directory, body)).space.by_key) == {"model.name", "model.args.hidden"}
    # An arg only the built-in option would get is no problem of the user model's, and vice versa.
    bad = body.replace("model.args.hidden", "model.args.hiddn")
    problems = spec_problems(write_spec(directory, bad))
    assert len(problems) == 2, problems
    assert "space.model.args.hiddn: " in problems[0] and "takes no argument 'hiddn'" in problems[0]
    assert "space.model.name: " in problems[1] and "needs argument 'hidden'" in problems[1]


def test_every_problem_at_once_through_the_cli(spec_dir, capsys):
    directory, pkg = spec_dir
    path = write_spec(directory, f"""
        model:
          name: {pkg}:Net
          args: {{hiddn: 3, num_classes: 4}}
        train:
          epochs: 0
    """)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "Traceback" not in "\n".join(err)
    assert any("model.args.hiddn:" in line for line in err) and any("model.args.num_classes:" in line for line in err)
    assert any("train.epochs:" in line for line in err) and any("needs argument 'hidden'" in line for line in err)


def test_a_registered_user_model_and_its_check_hook(spec_dir, monkeypatch):
    directory, pkg = spec_dir
    entries = dict(registry.MODELS._entries)
    monkeypatch.setattr(registry.MODELS, "_entries", entries)

    def check(args):
        return [] if args.get("hidden", 0) % 8 == 0 else [
            (("args", "hidden"), f"must be a multiple of 8 (got {args.get('hidden')})", "use 8, 16, 24...")]

    registry.MODELS.register("my_net", f"{pkg}:Net", check=check)
    path = write_spec(directory, "model:\n  name: my_net\n  args: {hidden: 16}\n")
    assert load_spec(path).data["model"]["name"] == "my_net"
    assert spec_problems(path, ["model.args.hidden=12"]) == [
        "override 'model.args.hidden=12': model.args.hidden: must be a multiple of 8 (got 12); use 8, 16, 24..."]


def test_the_shipped_specs_keep_their_builtin_models():
    # No shipped spec uses args; the registry's built-ins keep their names and order.
    assert registry.MODELS.names()[:3] == ("mlp", "small_cnn", "cnn1d")
