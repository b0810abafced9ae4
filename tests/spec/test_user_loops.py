"""Specs with a user training loop: train.loop as 'module:callable' taking (config, ctx)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from raytune_opt.errors import SpecError
from raytune_opt.spec import load_spec

LOOPS = '''
def train(config, ctx):
    pass


def one_arg(config):
    pass
'''


@pytest.fixture
def spec_dir(tmp_path):
    name = f"uloops_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(LOOPS)
    yield tmp_path, name
    sys.modules.pop(name, None)


def _write(directory, body: str):
    path = directory / "spec.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def _problems(path):
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return [str(p) for p in info.value.problems]


def test_a_user_loop_validates_and_may_optimize_a_metric_of_its_own(spec_dir):
    directory, mod = spec_dir
    spec = load_spec(_write(directory, f"train: {{loop: '{mod}:train'}}\nsearch: {{metric: val_auc, mode: max}}\n"))
    assert spec.data["train"]["loop"] == f"{mod}:train" and spec.data["search"]["metric"] == "val_auc"


def test_loop_problems_are_one_line_each(spec_dir):
    directory, mod = spec_dir
    path = _write(directory, f"train: {{loop: '{mod}:one_arg'}}\nsearch: {{metric: 'val auc'}}\n")
    assert _problems(path) == [
        f"{path}:1:9: train.loop: {mod}:one_arg must take (config, ctx) (got a signature (config)); define it as "
        "def train(config, ctx): ...",
        f"{path}:2:10: search.metric: must be a metric name (got 'val auc'); name one your train.loop reports, "
        "e.g. val_auc"]
    path = _write(directory, f"train: {{loop: '{mod}:trian'}}\n")
    assert "train.loop: cannot import" in _problems(path)[0] and "did you mean 'train'?" in _problems(path)[0]


def test_the_builtin_loop_reports_only_its_own_metrics(spec_dir):
    directory, _ = spec_dir
    (problem,) = _problems(_write(directory, "search: {metric: val_auc}\n"))
    assert "search.metric: unknown value (got 'val_auc'); did you mean " in problem and "valid: val_accuracy" in problem
    assert problem.endswith("(or a metric your own train.loop reports)")
