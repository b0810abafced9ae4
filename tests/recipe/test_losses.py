"""Cross-entropy and focal loss: hard and soft targets, label smoothing, class weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.recipe.losses import CrossEntropy, FocalLoss, build_loss, class_weights


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g) * 3
    target = torch.randint(0, 5, (16,), generator=g)
    return logits, target


def test_balanced_weights_are_inverse_class_frequency():
    from sklearn.utils.class_weight import compute_class_weight

    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0, 1, 0])
    ours = class_weights("balanced", y, 3)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y.numpy())
    assert torch.allclose(ours, torch.tensor(expected, dtype=torch.float32))
    assert ours.tolist() == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    # A class missing from the training labels gets weight 0 instead of infinity.
    assert class_weights("balanced", y, 4)[3] == 0


def test_weights_list_and_null():
    assert class_weights(None, torch.tensor([0, 1]), 2) is None
    assert class_weights([1, 2.5], torch.tensor([0, 1]), 2).tolist() == [1.0, 2.5]
    with pytest.raises(RecipeConfigError, match="3 weights but the data has 2 classes"):
        class_weights([1, 2, 3], torch.tensor([0, 1]), 2)


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_with_gamma_zero_is_cross_entropy(batch, weighted):
    logits, target = batch
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0]) if weighted else None
    ce, focal = CrossEntropy(weight), FocalLoss(0.0, weight)
    assert torch.allclose(focal(logits, target), ce(logits, target), atol=1e-6)
    soft = torch.softmax(torch.randn(16, 5), dim=1)
    assert torch.allclose(focal(logits, soft), ce(logits, soft), atol=1e-6)


def test_cross_entropy_matches_torch_with_label_smoothing(batch):
    logits, target = batch
    ours = CrossEntropy(label_smoothing=0.1)(logits, target)
    assert torch.allclose(ours, F.cross_entropy(logits, target, label_smoothing=0.1))


@pytest.mark.parametrize("loss", [CrossEntropy(), FocalLoss(2.0)])
def test_one_hot_soft_targets_equal_class_indices(batch, loss):
    logits, target = batch
    assert torch.allclose(loss(logits, F.one_hot(target, 5).float()), loss(logits, target), atol=1e-6)


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[8.0, 0.0]])
    hard = torch.tensor([[0.5, 0.0]])
    y = torch.tensor([0])
    ce, focal = CrossEntropy(), FocalLoss(2.0)
    assert focal(easy, y) / ce(easy, y) < focal(hard, y) / ce(hard, y) < 1


def test_build_loss_by_name():
    y = torch.tensor([0, 0, 1])
    loss = build_loss({"name": "focal", "focal_gamma": 1.0, "class_weights": "balanced"}, y, 2)
    assert isinstance(loss, FocalLoss) and loss.gamma == 1.0 and loss.weight.tolist() == pytest.approx([0.75, 1.5])
    assert isinstance(build_loss({"name": "cross_entropy"}, y, 2), CrossEntropy)
    with pytest.raises(RecipeConfigError):
        build_loss({"name": "hinge"}, y, 2)


def test_every_schema_loss_builds():
    from raytune_opt.spec import schema

    y = torch.tensor([0, 1, 1])
    logits = torch.randn(3, 2)
    targets, outputs = torch.tensor([0.5, -1.0, 2.0]), torch.randn(3, 1)
    for name in schema.LOSSES:
        if schema.LOSS_TASK[name] == "regression":
            loss = build_loss({"name": name}, None, 1, "regression")(outputs, targets)
            assert loss.shape == () and torch.isfinite(loss), name
            with pytest.raises(RecipeConfigError, match=f"train.loss.name {name} is a regression loss but the data "
                                                        f"set holds a classification task"):
                build_loss({"name": name}, y, 2)
        else:
            assert torch.isfinite(build_loss({"name": name}, y, 2)(logits, y))
    mse = build_loss({"name": "mse"}, None, 1, "regression")(outputs, targets)
    assert mse == pytest.approx(((outputs.flatten() - targets) ** 2).mean().item())  # (N, 1) against (N,)
