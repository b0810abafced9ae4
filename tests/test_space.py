"""The space: YAML domains -> Space -> Ray Tune domains, checked statistically."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from raytune_opt.space import Condition, Domain, Param, Space, apply
from raytune_opt.spec.validate import load_spec

N = 2000


def _space(tmp_path, text: str, algorithm: str = "random") -> Space:
    path = tmp_path / "spec.yaml"
    path.write_text(f"search: {{algorithm: {algorithm}}}\nspace:\n" + text)
    return load_spec(path).space


def _draws(domain: Domain, seed: int = 0) -> np.ndarray:
    import random

    random.seed(seed)
    np.random.seed(seed)
    return np.asarray(domain.to_tune().sample(size=N, random_state=np.random.default_rng(seed)), dtype=float)


def test_loguniform_passes_ks_against_log_uniform(tmp_path):
    space = _space(tmp_path, "  train.optimizer.lr: {loguniform: [1.0e-5, 1.0e-1]}\n")
    x = _draws(space.by_key["train.optimizer.lr"].domain)
    assert x.min() >= 1e-5 and x.max() <= 1e-1
    # log10 of a log-uniform variable is uniform on [-5, -1].
    assert stats.kstest(np.log10(x), stats.uniform(loc=-5, scale=4).cdf).pvalue > 0.01
    # ... and the test has power: a plain uniform on the same range fails it.
    y = np.random.default_rng(1).uniform(1e-5, 1e-1, N)
    assert stats.kstest(np.log10(y), stats.uniform(loc=-5, scale=4).cdf).pvalue < 1e-6


def test_uniform_and_normal_match_their_distributions(tmp_path):
    space = _space(tmp_path, "  model.dropout: {uniform: [0.1, 0.4]}\n"
                              "  train.deepspeed.gradient_clipping: {normal: [1.0, 0.2]}\n")
    u = _draws(space.by_key["model.dropout"].domain)
    assert stats.kstest(u, stats.uniform(loc=0.1, scale=0.3).cdf).pvalue > 0.01
    n = _draws(space.by_key["train.deepspeed.gradient_clipping"].domain)
    assert stats.kstest(n, stats.norm(loc=1.0, scale=0.2).cdf).pvalue > 0.01


def test_quantized_and_integer_domains_respect_step_and_bounds(tmp_path):
    space = _space(tmp_path, "  model.dropout: {quniform: [0.0, 0.5, 0.1]}\n"
                              "  train.epochs: {qrandint: [2, 10, 2]}\n"
                              "  train.batch_size: {lograndint: [8, 256]}\n"
                              "  model.width: {randint: [4, 7]}\n")
    q = _draws(space.by_key["model.dropout"].domain)
    assert np.allclose(np.round(q / 0.1) * 0.1, q) and q.min() >= 0 and q.max() <= 0.5
    e = _draws(space.by_key["train.epochs"].domain)
    assert set(e) == {2, 4, 6, 8, 10}  # qrandint includes high
    b = _draws(space.by_key["train.batch_size"].domain)
    assert b.min() >= 8 and b.max() < 256 and np.all(b == np.round(b))
    # log-uniform over integers: the lower half of the log range gets about half the draws
    assert 0.4 < np.mean(b < math.sqrt(8 * 256)) < 0.6
    w = _draws(space.by_key["model.width"].domain)
    assert set(w) == {4, 5, 6}  # randint excludes high


def test_choice_is_uniform_over_options(tmp_path):
    space = _space(tmp_path, "  train.optimizer.name: {choice: [sgd, adam, adamw, rmsprop]}\n")
    draws = space.by_key["train.optimizer.name"].domain.to_tune().sample(size=N)
    counts = [draws.count(o) for o in ("sgd", "adam", "adamw", "rmsprop")]
    assert stats.chisquare(counts).pvalue > 0.01


def test_grid_expands_to_the_full_product(tmp_path):
    space = _space(tmp_path, "  train.batch_size: {grid: [32, 64, 128]}\n"
                              "  train.optimizer.name: {grid: [sgd, adam]}\n"
                              "  model.width: {grid: [16, 32]}\n", algorithm="grid")
    assert space.grid_size() == 12
    tune_space = space.to_tune()
    assert tune_space["train.batch_size"] == {"grid_search": [32, 64, 128]}
    from ray.tune.search.variant_generator import generate_variants  # what grid search runs

    points = [config for _, config in generate_variants(tune_space)]
    assert len(points) == 12 and len({tuple(sorted(p.items())) for p in points}) == 12


def test_conditional_parameters_active_exactly_when_parent_matches(tmp_path):
    space = _space(tmp_path, """\
  train.optimizer.name:
    choice:
      sgd:
        train.optimizer.momentum: {uniform: [0.8, 0.99]}
      adam:
        train.optimizer.beta1: {uniform: [0.85, 0.95]}
      adamw:
        train.optimizer.beta1: {uniform: [0.85, 0.95]}
  model.name: {choice: [mlp, small_cnn]}
  model.dropout: {uniform: [0.0, 0.5], when: {model.name: mlp}}
""", algorithm="optuna")
    assert space.is_conditional
    assert [p.key for p in space.params].index("train.optimizer.name") < [p.key for p in space.params].index(
        "train.optimizer.momentum")
    full = {"train.optimizer.name": "sgd", "train.optimizer.momentum": 0.9, "train.optimizer.beta1": 0.9,
            "model.name": "small_cnn", "model.dropout": 0.1}
    assert space.prune(full) == {"train.optimizer.name": "sgd", "train.optimizer.momentum": 0.9,
                                 "model.name": "small_cnn"}
    for opt in ("adam", "adamw"):
        pruned = space.prune({**full, "train.optimizer.name": opt, "model.name": "mlp"})
        assert "train.optimizer.beta1" in pruned and "train.optimizer.momentum" not in pruned
        assert "model.dropout" in pruned
    assert space.by_key["train.optimizer.beta1"].conditions == (Condition("train.optimizer.name", ("adam", "adamw")),)


def test_nested_conditions_chain():
    space = Space([
        Param("model.name", Domain("choice", ("mlp", "small_cnn"))),
        Param("model.depth", Domain("choice", (1, 2)), (Condition("model.name", ("mlp",)),)),
        Param("model.width", Domain("randint", (8, 64)), (Condition("model.depth", (2,)),)),
    ])
    assert space.is_active("model.width", {"model.name": "mlp", "model.depth": 2})
    # depth is inactive under small_cnn, so width (child of depth) is inactive too
    assert not space.is_active("model.width", {"model.name": "small_cnn", "model.depth": 2})


def test_apply_sets_dotted_keys_without_touching_the_base():
    base = {"train": {"optimizer": {"lr": 0.1, "name": "sgd"}}}
    out = apply(base, {"train.optimizer.lr": 0.01, "train.deepspeed.zero_optimization.stage": 2})
    assert out["train"]["optimizer"] == {"lr": 0.01, "name": "sgd"}
    assert out["train"]["deepspeed"] == {"zero_optimization": {"stage": 2}}
    assert base["train"]["optimizer"]["lr"] == 0.1


def test_pyyaml_exponent_without_dot_is_read_as_a_number(tmp_path):
    # PyYAML reads 1e-3 as a string; float settings and domain bounds accept it anyway.
    path = tmp_path / "spec.yaml"
    path.write_text("train:\n  optimizer: {lr: 1e-3}\nspace:\n  train.optimizer.weight_decay: {loguniform: [1e-6, 1e-2]}\n")
    spec = load_spec(path)
    assert spec.data["train"]["optimizer"]["lr"] == pytest.approx(1e-3)
    assert spec.space.by_key["train.optimizer.weight_decay"].domain.args == (1e-6, 1e-2)
