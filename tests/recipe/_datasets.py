"""Tiny data sets in the on-disk formats the recipe reads, written by the tests themselves."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """A tiny CIFAR-10 in torchvision's on-disk format (5 batches + batches.meta)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for b in range(1, 6):
        labels = [int(i % 10) for i in range(per_batch)]
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"batch"}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    return folder


def write_cifar100(root: Path, n: int = 300, seed: int = 0) -> Path:
    """A tiny CIFAR-100 in torchvision's on-disk format (train + meta)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": data, b"fine_labels": [i % 100 for i in range(n)],
                     b"coarse_labels": [i % 20 for i in range(n)]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    return folder


def write_imagefolder(root: Path, classes=("cat", "dog"), per_class: int = 5, size: int = 12) -> Path:
    """A tiny ImageFolder of PNGs, one sub-folder per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)
            pixels[..., c % 3] = 255  # each class has a colour, so it is learnable
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root
