"""Training-time augmentation of whole batches of normalized image tensors.

Everything is vectorized over the batch (one affine ``grid_sample`` for crop and rotation,
per-sample factors as tensors), and every random draw comes from the augmenter's own
seeded generators, so a run is reproducible and never disturbs the global RNG.

The images arrive normalized per channel (mean 0, std 1), so zero padding is mean
padding, and colour jitter works in normalized units: brightness shifts, contrast scales
around each image's mean, saturation blends with each image's grey (3 channels only).

Mixup and CutMix follow torchvision's ``transforms.v2.MixUp``/``CutMix`` (one lambda per
batch, partner = the batch rolled by one), but are written here because those draw from
the global RNG and cannot take a generator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.spec.view import view

__all__ = ["Augmenter"]


class Augmenter:
    """Augment ``(images, labels)`` batches as the spec's ``train.augment`` asks.

    Args:
        aug_cfg: ``hflip``, ``random_crop_padding``, ``rotation_degrees``, ``color_jitter``,
            ``mixup_alpha``, ``cutmix_alpha``, ``mix_prob`` (missing keys: the schema's defaults, off).
        num_classes: classes, for the soft labels of Mixup/CutMix.
        in_channels: image channels; 1-channel data gets brightness/contrast jitter only.
        seed: seed of the augmenter's generators.
        device: where the batches live (the generator draws there).

    Raises:
        RecipeConfigError: a setting out of range.
    """

    def __init__(self, aug_cfg: dict, num_classes: int, in_channels: int, seed: int = 0,
                 device: torch.device | str = "cpu"):
        aug = view(("train", "augment"), aug_cfg)
        self.hflip = float(aug.hflip)
        self.padding = int(aug.random_crop_padding)
        self.degrees = float(aug.rotation_degrees)
        self.jitter = float(aug.color_jitter)
        self.mixup_alpha = float(aug.mixup_alpha)
        self.cutmix_alpha = float(aug.cutmix_alpha)
        self.mix_prob = float(aug.mix_prob)
        for name, value, lo, hi in (("hflip", self.hflip, 0, 1), ("color_jitter", self.jitter, 0, 1),
                                    ("mix_prob", self.mix_prob, 0, 1), ("rotation_degrees", self.degrees, 0, 180),
                                    ("random_crop_padding", self.padding, 0, math.inf),
                                    ("mixup_alpha", self.mixup_alpha, 0, math.inf),
                                    ("cutmix_alpha", self.cutmix_alpha, 0, math.inf)):
            if not lo <= value <= hi:
                raise RecipeConfigError(f"train.augment.{name} must be in [{lo}, {hi}] (got {value})")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random draws (the loop reseeds per epoch so a resumed run repeats them)."""
        self.generator.manual_seed(int(seed))
        # Scalar draws (Beta lambdas, the Mixup/CutMix choice) come from NumPy: torch's
        # Beta/Gamma samplers take no generator.
        self.rng = np.random.default_rng(int(seed))

    @property
    def active(self) -> bool:
        """False when every augmentation is off (the loop then skips the call)."""
        return bool(self.hflip or self.padding or self.degrees or self.jitter or self._mixing)

    @property
    def _image_ops(self) -> bool:
        return bool(self.hflip or self.padding or self.degrees or self.jitter or self.cutmix_alpha)

    @property
    def _mixing(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one batch: ``x`` (N, C, H, W) normalized, ``y`` (N,) class indices.

        1-D signals (N, C, L) take Mixup only.

        Returns ``(x, y)`` where ``y`` becomes (N, num_classes) probabilities when Mixup or
        CutMix could apply to this batch (even if this batch was left unmixed), so the
        target type does not change from batch to batch.
        """
        if x.dim() != 4 and self._image_ops:
            raise RecipeConfigError(f"train.augment: hflip, random_crop_padding, rotation_degrees, color_jitter and "
                                    f"cutmix_alpha work on images (N, C, H, W) but got inputs of shape "
                                    f"{tuple(x.shape)}; set them to 0 (mixup_alpha works on any input)")
        if self.hflip > 0:
            flip = self._rand(x.shape[0]) < self.hflip
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.padding or self.degrees:
            x = self._affine(x)
        if self.jitter > 0:
            x = self._color_jitter(x)
        if self._mixing:
            x, y = self._mix(x, y)
        return x, y

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device)

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * self._rand(n)

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        """Random rotation and random-crop-with-padding translation in one resampling."""
        n, _, h, w = x.shape
        angle = self._uniform(n, -1, 1) * math.radians(self.degrees)
        # A crop of the zero-padded image at offset (dy, dx) is a shift by whole pixels.
        shift_x = torch.randint(-self.padding, self.padding + 1, (n,), generator=self.generator, device=self.device)
        shift_y = torch.randint(-self.padding, self.padding + 1, (n,), generator=self.generator, device=self.device)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([
            torch.stack([cos, -sin * h / w, shift_x * 2.0 / w], dim=1),
            torch.stack([sin * w / h, cos, shift_y * 2.0 / h], dim=1),
        ], dim=1).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        mode = "bilinear" if self.degrees else "nearest"  # pure shifts stay exact
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)

    def _color_jitter(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        s = self.jitter
        shape = (n, 1, 1, 1)
        brightness = self._uniform(n, -s, s).view(shape).to(x.dtype)
        contrast = self._uniform(n, 1 - s, 1 + s).view(shape).to(x.dtype)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + brightness
        if self.in_channels == 3:
            saturation = self._uniform(n, 1 - s, 1 + s).view(shape).to(x.dtype)
            grey = x.mean(dim=1, keepdim=True)
            x = (x - grey) * saturation + grey
        return x

    def _mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        soft = F.one_hot(y, self.num_classes).to(x.dtype) if y.dim() == 1 else y.to(x.dtype)
        if self.rng.random() >= self.mix_prob:
            return x, soft
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or self.rng.random() < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(self.rng.beta(alpha, alpha))
        x_partner, y_partner = x.roll(1, 0), soft.roll(1, 0)
        if use_cutmix:
            h, w = x.shape[-2:]
            cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
            half_h, half_w = int(h * math.sqrt(1 - lam)) // 2, int(w * math.sqrt(1 - lam)) // 2
            y0, y1 = max(cy - half_h, 0), min(cy + half_h, h)
            x0, x1 = max(cx - half_w, 0), min(cx + half_w, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x_partner[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
        else:
            x = x * lam + x_partner * (1 - lam)
        return x, soft * lam + y_partner * (1 - lam)
