"""Batch augmentation: shapes, identity when off, flips and crops, Mixup/CutMix labels, seeding."""

from __future__ import annotations

import pytest
import torch

from raytune_opt.recipe.augment import Augmenter
from raytune_opt.recipe.errors import RecipeConfigError


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g)


ALL_ON = {"hflip": 0.5, "random_crop_padding": 2, "rotation_degrees": 15, "color_jitter": 0.3,
          "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "mix_prob": 1.0}


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_are_kept(channels):
    x, y = torch.randn(8, channels, 8, 8), torch.randint(0, 4, (8,))
    out_x, out_y = Augmenter(ALL_ON, 4, channels, seed=0)(x, y)
    assert out_x.shape == x.shape and out_y.shape == (8, 4) and torch.isfinite(out_x).all()


def test_identity_at_probability_zero(batch):
    x, y = batch
    off = {"hflip": 0.0, "random_crop_padding": 0, "rotation_degrees": 0.0, "color_jitter": 0.0,
           "mixup_alpha": 0.0, "cutmix_alpha": 0.0}
    aug = Augmenter(off, 4, 3)
    assert not aug.active
    out_x, out_y = aug(x, y)
    assert torch.equal(out_x, x) and torch.equal(out_y, y)
    out_x, out_y = Augmenter({"mixup_alpha": 1.0, "mix_prob": 0.0}, 4, 3)(x, y)
    assert torch.equal(out_x, x) and torch.equal(out_y, y)
    # Mixing possible but not drawn for this batch: the images stay, the labels become
    # one-hot (so the loss sees one target type all epoch).
    out_x, out_y = Augmenter({"mixup_alpha": 1.0, "mix_prob": 1e-9}, 4, 3)(x, y)
    assert torch.equal(out_x, x) and torch.equal(out_y.argmax(1), y) and torch.equal(out_y.sum(1), torch.ones(8))


def test_hflip_at_probability_one_flips_every_image(batch):
    x, y = batch
    out_x, _ = Augmenter({"hflip": 1.0}, 4, 3)(x, y)
    assert torch.equal(out_x, x.flip(-1))


def test_random_crop_shifts_by_whole_pixels(batch):
    x, y = batch
    out_x, _ = Augmenter({"random_crop_padding": 3}, 4, 3, seed=5)(x, y)
    for i in range(len(x)):
        # Some shift (dy, dx) in [-3, 3]^2 of the zero-padded image reproduces the output.
        padded = torch.nn.functional.pad(x[i], (3, 3, 3, 3))
        assert any(torch.allclose(out_x[i], padded[:, 3 + dy:3 + dy + 16, 3 + dx:3 + dx + 16])
                   for dy in range(-3, 4) for dx in range(-3, 4))


def test_mixup_labels_are_probabilities(batch):
    x, y = batch
    out_x, out_y = Augmenter({"mixup_alpha": 0.4}, 4, 3, seed=2)(x, y)
    assert torch.allclose(out_y.sum(1), torch.ones(8))
    lam = out_y[0, y[0]].item() if y[0] != y[-1] else None
    if lam is not None:  # sample 0 is mixed with the last one (the batch rolled by one)
        assert torch.allclose(out_x[0], lam * x[0] + (1 - lam) * x[-1], atol=1e-5)


def test_cutmix_label_weight_is_the_pasted_area(batch):
    x, y = batch
    y = torch.arange(8) % 4
    out_x, out_y = Augmenter({"cutmix_alpha": 1.0}, 4, 3, seed=3)(x, y)
    assert torch.allclose(out_y.sum(1), torch.ones(8))
    kept = (out_x[0] == x[0]).all(0).float().mean().item()
    assert out_y[0, y[0]].item() == pytest.approx(kept, abs=1e-6)


def test_with_both_on_each_batch_picks_one():
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    aug = Augmenter({"mixup_alpha": 1.0, "cutmix_alpha": 1.0}, 4, 1, seed=0)
    kinds = set()
    for _ in range(20):
        out_x, _ = aug(x, y)
        # CutMix leaves some pixels exactly as they were; Mixup changes (almost) all.
        kinds.add("cutmix" if (out_x == x).float().mean() > 0.05 else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_same_seed_same_augmentation(batch):
    x, y = batch
    a = Augmenter(ALL_ON, 4, 3, seed=7)(x, y)
    b = Augmenter(ALL_ON, 4, 3, seed=7)(x, y)
    c = Augmenter(ALL_ON, 4, 3, seed=8)(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_global_rng_untouched(batch):
    x, y = batch
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    Augmenter(ALL_ON, 4, 3, seed=1)(x, y)
    assert torch.equal(torch.rand(1), expected)


def test_out_of_range_setting():
    with pytest.raises(RecipeConfigError, match="hflip"):
        Augmenter({"hflip": 2.0}, 4, 3)


def test_signals_take_mixup_and_refuse_image_augmentations():
    x, y = torch.randn(8, 1, 40), torch.randint(0, 4, (8,))
    out_x, out_y = Augmenter({"mixup_alpha": 0.4}, 4, 1, seed=0)(x, y)
    assert out_x.shape == (8, 1, 40) and torch.allclose(out_y.sum(1), torch.ones(8))
    for key in ("hflip", "random_crop_padding", "rotation_degrees", "color_jitter", "cutmix_alpha"):
        with pytest.raises(RecipeConfigError, match="work on images .* shape \\(8, 1, 40\\)"):
            Augmenter({key: 1}, 4, 1, seed=0)(x, y)
