"""Specs with a user training loop: train.loop as 'module:callable' taking (config, ctx)."""

from __future__ import annotations


import pytest

from raytune_opt.spec import load_spec
from tests._user_code import spec_problems, user_module, write_spec

LOOPS = '''
def train(config, ctx):
    pass


def one_arg(config):
    pass
'''


@pytest.fixture
def spec_dir(tmp_path):
    yield from user_module(tmp_path, "uloops", LOOPS)


def test_a_user_loop_validates_and_may_optimize_a_metric_of_its_own(spec_dir):
    directory, mod = spec_dir
    spec = load_spec(write_spec(directory, f"train: {{loop: '{mod}:train'}}\nsearch: {{metric: val_auc, mode: max}}\n"))
    assert spec.data["train"]["loop"] == f"{mod}:train" and spec.data["search"]["metric"] == "val_auc"


def test_loop_problems_are_one_line_each(spec_dir):
    directory, mod = spec_dir
    path = write_spec(directory, f"train: {{loop: '{mod}:one_arg'}}\nsearch: {{metric: 'val auc'}}\n")
    assert spec_problems(path) == [
        f"{path}:2:10: search.metric: must be a metric name (letters, digits, '_') or a list of them, e.g. val_auc "
        "(got 'val auc'); see the README's spec reference",
        f"{path}:1:9: train.loop: {mod}:one_arg must take (config, ctx) (got a signature (config)); define it as "
        "def train(config, ctx): ..."]
    path = write_spec(directory, f"train: {{loop: '{mod}:trian'}}\n")
    assert "train.loop: cannot import" in spec_problems(path)[0] and "did you mean 'train'?" in spec_problems(path)[0]


def test_the_builtin_loop_reports_only_its_own_metrics(spec_dir):
    directory, _ = spec_dir
    (problem,) = spec_problems(write_spec(directory, "search: {metric: val_auc}\n"))
    assert "search.metric: unknown metric (got 'val_auc'); did you mean " in problem and "valid: val_accuracy" in problem
    assert problem.endswith("(or a metric your own train.loop reports)")
