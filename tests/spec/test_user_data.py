"""Specs with user data sets: data.dataset as 'module:callable', data.args checked against the signature,
and a data callable that fails or returns the wrong thing stopping `run` with one line before Ray starts."""

from __future__ import annotations


import pytest

from raytune_opt.cli import main
from raytune_opt.spec import load_spec
from tests._user_code import spec_problems, user_module, write_spec

DATA = '''
import torch
from torch.utils.data import TensorDataset


def load(n: int, seed: int, noise: float = 0.0):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    y = (x.sum(1) > 0).long()
    return TensorDataset(x, y), TensorDataset(x[: n // 4], y[: n // 4])


def wrong(n: int = 4):
    return [1, 2, 3, 4]


def raises(n: int = 4):
    raise FileNotFoundError("/no/such/corpus.txt")
'''


@pytest.fixture
def spec_dir(tmp_path):
    yield from user_module(tmp_path, "udata", DATA)


def test_a_user_data_set_validates_with_fixed_and_searched_args(spec_dir):
    directory, mod = spec_dir
    path = write_spec(directory, f"""
        data:
          dataset: {mod}:load
          args: {{n: 64}}
        model: {{name: mlp}}
        space:
          data.args.noise: {{uniform: [0.0, 0.5]}}
    """)
    spec = load_spec(path)
    assert spec.data["data"]["args"] == {"n": 64} and set(spec.space.by_key) == {"data.args.noise"}


def test_every_data_args_problem_at_once(spec_dir):
    directory, mod = spec_dir
    path = write_spec(directory, f"""
        data:
          dataset: {mod}:load
          args: {{nn: 64, seed: 3}}
        space:
          data.args.nois: {{uniform: [0.0, 0.5]}}
    """)
    problems = spec_problems(path)
    assert len(problems) == 4, problems
    assert any(f"data.args.nn: {mod}:load takes no argument 'nn' (got 64); did you mean 'n'?" in p for p in problems)
    assert any("data.args.seed: seed is given by the spec (got 3)" in p for p in problems)
    assert any("space.data.args.nois: " in p and "did you mean 'noise'?" in p for p in problems)
    assert any(f"data.dataset: {mod}:load needs argument 'n', which nothing supplies" in p for p in problems)


def test_a_data_set_that_does_not_import_is_one_line_at_its_key(spec_dir):
    directory, mod = spec_dir
    path = write_spec(directory, f"data:\n  dataset: {mod}.nope:load\n")
    assert spec_problems(path) == [f"{path}:2:3: data.dataset: cannot import '{mod}.nope:load' (No module named "
                               f"'{mod}.nope'; '{mod}' is not a package) (got '{mod}.nope:load'); check the module "
                               f"path; user code is imported from the spec's directory, the current directory, then "
                               f"sys.path"]
    path = write_spec(directory, f"data:\n  dataset: {mod}:lod\n")
    assert "has no attribute 'lod'; did you mean 'load'?" in spec_problems(path)[0]


def test_built_in_data_sets_take_no_args(spec_dir):
    directory, _ = spec_dir
    path = write_spec(directory, "data:\n  dataset: digits\n  args: {n: 3}\n")
    assert spec_problems(path) == [f"{path}:3:3: data.args: only user datasets take args; built-in digits reads "
                               "data.root, data.val_fraction... (got {\"n\": 3}); remove it, or set data.dataset to your "
                               "own 'module:callable'"]


@pytest.mark.parametrize("fn, message", [
    ("wrong", "returned a 4-item list, not a DataBundle, a (train, val) pair or a (train, val, test) triple; "
              "return raytune_opt.DataBundle"),
    ("raises", "raised FileNotFoundError: /no/such/corpus.txt (at "),
])
def test_run_stops_before_ray_on_a_data_callable_that_fails(spec_dir, fn, message, capsys):
    directory, mod = spec_dir
    path = write_spec(directory, f"data:\n  dataset: {mod}:{fn}\nmodel: {{name: mlp}}\n")
    assert main(["run", str(path), "--storage", str(directory / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f"data.dataset {mod}:{fn} {message}" in err


def test_the_task_is_checked_across_data_metric_loss_and_augmentation(tmp_path):
    path = write_spec(tmp_path, "data: {dataset: csv}\nmodel: {name: tabular_mlp}\n")
    assert [p.split(": ", 1)[1] for p in spec_problems(path)] == [
        "data.path: required for dataset csv (got null); set data.path (csv: the CSV or Parquet file)",
        "data.target: required for dataset csv (got null); set data.target (csv: the column to predict)"]
    base = "data: {dataset: csv, path: t.csv, target: y}\nmodel: {name: tabular_mlp}\n"
    path = write_spec(tmp_path, base + "search: {metric: val_rmse, mode: min}\ntrain: {augment: {mixup_alpha: 0.2}}\n")
    problems = spec_problems(path)
    assert len(problems) == 2, problems  # promotion takes a regression too (its gate is relative)
    assert "train.loss.name: cross_entropy is a classification loss, and search.metric val_rmse makes this a " \
           "regression (got the default cross_entropy); set train.loss.name: mse" in problems[0]
    assert "train.augment.mixup_alpha: mixes labels of a classification" in problems[1]
    ok = base + "search: {metric: val_r2, mode: max}\ntrain: {loss: {name: huber}}\n"
    assert load_spec(write_spec(tmp_path, ok)).data["data"]["path"] == str(tmp_path / "t.csv")  # next to the spec
    clash = "data: {dataset: csv, path: t.csv, target: y, task: classification}\nmodel: {name: tabular_mlp}\n" \
            "search: {metric: val_mae, mode: min}\n"
    (problem,) = spec_problems(write_spec(tmp_path, clash))
    assert "search.metric: val_mae is for regression, but data.task classification is for classification" in problem
    (problem,) = spec_problems(write_spec(tmp_path, "model: {name: tabular_mlp}\n"))
    assert "model.name: does not take images (data.dataset digits)" in problem
