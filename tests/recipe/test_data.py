"""Loading, caching, splitting and normalizing data; every kind of bad data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raytune_opt.errors import RaytuneOptError
from raytune_opt.recipe import data as data_mod
from raytune_opt.recipe.data import DataError, cache_root, load_data
from tests.recipe._datasets import write_cifar10, write_cifar100, write_imagefolder


def _cfg(**kw) -> dict:
    return {"dataset": "digits", "root": None, "download": False, "val_fraction": 0.2, "image_size": None, **kw}


def test_digits_shapes_split_and_normalization():
    d = load_data(_cfg(), seed=0)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == torch.float32
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 1, 8)
    assert (d.spatial_dims, d.input_shape) == (2, (1, 8, 8))
    assert len(d.y_train) + len(d.y_val) == 1797
    assert len(d.y_val) == round(1797 * 0.2)
    # Normalized with the training split's statistics.
    assert abs(d.x_train.mean().item()) < 1e-4 and abs(d.x_train.std().item() - 1) < 1e-2
    # Stratified: every class is in the validation split in proportion.
    counts = torch.bincount(d.y_val, minlength=10)
    assert counts.min() >= 33 and counts.max() <= 38


def test_split_is_deterministic_given_the_seed():
    a, b = load_data(_cfg(), seed=3), load_data(_cfg(val_fraction=0.2), seed=3)
    data_mod._MEMO.clear()  # force a fresh split from the node cache
    c = load_data(_cfg(), seed=3)
    assert torch.equal(a.y_val, c.y_val) and torch.equal(a.x_train, c.x_train)
    assert a is b  # the per-process cache
    other = load_data(_cfg(), seed=4)
    assert not torch.equal(a.y_val, other.y_val)


def test_decoded_once_into_the_node_cache_and_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    data_mod._MEMO.clear()
    root = tmp_path / "c10"
    write_cifar10(root)
    load_data(_cfg(dataset="cifar10", root=str(root)), seed=0)
    [folder] = list(cache_root().iterdir())
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "meta.json" and names[1].startswith("split-") and names[2:] == ["x.npy", "y.npy"], names
    assert np.load(folder / "x.npy", mmap_mode="r").dtype == np.uint8
    # A second process-level load must not decode again.
    data_mod._MEMO.clear()
    monkeypatch.setattr(data_mod, "_decode_cifar", lambda *a: pytest.fail("decoded twice"))
    assert load_data(_cfg(dataset="cifar10", root=str(root)), seed=0).num_classes == 10


def test_the_split_is_kept_beside_the_arrays_and_read_back_without_scikit_learn(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    data_mod._MEMO.clear()
    first = load_data(_cfg(), seed=5)
    [split] = list(cache_root().glob("digits-*/split-*-5.npz"))
    # What a Train worker does next: a fresh process, the node cache already filled.
    code = ("import sys; from raytune_opt.recipe.data import load_data; "
            "d = load_data({'dataset': 'digits', 'val_fraction': 0.2}, 5); "
            "print(int(d.y_val.sum()), len(d.y_val), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(int(first.y_val.sum())), str(len(first.y_val)), "False"]
    # A damaged split file is computed again (and rewritten), never trusted.
    split.write_bytes(b"not a zip")
    data_mod._MEMO.clear()
    again = load_data(_cfg(), seed=5)
    assert torch.equal(again.y_val, first.y_val) and torch.equal(again.x_train, first.x_train)
    with np.load(split) as f:
        assert len(f["val"]) == len(first.y_val)


def test_cifar10_and_cifar100_in_torchvision_format(tmp_path):
    write_cifar10(tmp_path / "a")
    d = load_data(_cfg(dataset="cifar10", root=str(tmp_path / "a")), seed=0)
    assert d.x_train.shape[1:] == (3, 32, 32) and d.num_classes == 10
    assert d.class_names[:2] == ("class0", "class1") and len(d.y_train) + len(d.y_val) == 100
    write_cifar100(tmp_path / "b")
    d = load_data(_cfg(dataset="cifar100", root=str(tmp_path / "b")), seed=0)
    assert d.num_classes == 100 and d.class_names[5] == "c5"


def test_imagefolder_resized(tmp_path):
    write_imagefolder(tmp_path / "img", classes=("a", "b", "c"), per_class=4)
    d = load_data(_cfg(dataset="imagefolder", root=str(tmp_path / "img"), image_size=16), seed=0)
    assert d.x_train.shape[1:] == (3, 16, 16) and d.class_names == ("a", "b", "c")
    assert len(d.y_train) + len(d.y_val) == 12


def _one_line_error(cfg: dict, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        load_data(cfg, seed=0)
    message = str(info.value)
    assert isinstance(info.value, RaytuneOptError)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_root(tmp_path):
    _one_line_error(_cfg(dataset="cifar10", root=str(tmp_path / "nope")), str(tmp_path / "nope"), "does not exist")


def test_root_not_set():
    _one_line_error(_cfg(dataset="imagefolder"), "data.root is not set")


def test_root_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    _one_line_error(_cfg(dataset="imagefolder", root=str(tmp_path / "f")), "not a directory")


def test_empty_root(tmp_path):
    _one_line_error(_cfg(dataset="cifar10", root=str(tmp_path)), "is empty")
    _one_line_error(_cfg(dataset="imagefolder", root=str(tmp_path)), "is empty")


def test_cifar_root_in_the_wrong_format(tmp_path):
    (tmp_path / "something").mkdir()
    _one_line_error(_cfg(dataset="cifar10", root=str(tmp_path)), "no cifar-10-batches-py/ inside")


def test_cifar_missing_batch(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_4").unlink()
    _one_line_error(_cfg(dataset="cifar10", root=str(tmp_path)), "missing data_batch_4")


def test_cifar_truncated_batch(tmp_path):
    folder = write_cifar10(tmp_path)
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    _one_line_error(_cfg(dataset="cifar10", root=str(tmp_path)), str(path), "truncated or corrupt")


def test_imagefolder_with_one_class(tmp_path):
    write_imagefolder(tmp_path, classes=("only",))
    _one_line_error(_cfg(dataset="imagefolder", root=str(tmp_path), image_size=8), "only one class", "only")


def test_imagefolder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    _one_line_error(_cfg(dataset="imagefolder", root=str(tmp_path)), "no images")


def test_imagefolder_with_a_corrupt_image(tmp_path):
    write_imagefolder(tmp_path)
    bad = Path(tmp_path / "dog" / "2.png")
    bad.write_bytes(bad.read_bytes()[:40])
    _one_line_error(_cfg(dataset="imagefolder", root=str(tmp_path), image_size=8), str(bad), "cannot be decoded")


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    import os
    import pickle

    from raytune_opt.recipe.data import DataError, _unpickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load"):
        _unpickle(path, "cifar10")


def test_a_process_keeps_one_decoded_data_set_however_many_image_sizes_its_trials_tune(tmp_path):
    # Tune reuses actors across trials: one per image size would pile up in each of them.
    write_imagefolder(tmp_path / "img", classes=("a", "b"), per_class=4)
    data_mod._MEMO.clear()
    sizes = (8, 12, 16)
    for size in sizes:
        d = load_data(_cfg(dataset="imagefolder", root=str(tmp_path / "img"), image_size=size), seed=0)
        assert d.image_size == size
        assert len(data_mod._MEMO) == 1
    again = load_data(_cfg(dataset="imagefolder", root=str(tmp_path / "img"), image_size=16), seed=0)
    assert again is d  # the most recent one is kept


# --- mnist1d: generated by the mnist1d package, never downloaded ---------------------------

def _mnist1d_folder() -> Path:
    [folder] = list(cache_root().glob("mnist1d-*"))
    return folder


def test_mnist1d_generated_once_offline_shaped_for_1d_models(monkeypatch):
    import random

    import mnist1d.data
    import requests

    data_mod._MEMO.clear()
    # The download path must never run (no network at run time).
    monkeypatch.setattr(requests, "get", lambda *a, **k: pytest.fail("mnist1d tried to download"))
    monkeypatch.setattr(mnist1d.data, "get_dataset", lambda *a, **k: pytest.fail("used the download path"))
    random.seed(123)
    np.random.seed(123)
    d = load_data(_cfg(dataset="mnist1d"), seed=0)
    # make_dataset seeds the global generators; ours must be where they were.
    assert random.random() == random.Random(123).random()
    assert np.random.rand() == np.random.RandomState(123).rand()
    assert d.x_train.shape == (3200, 1, 40) and d.x_val.shape == (800, 1, 40) and d.x_train.dtype == torch.float32
    assert (d.num_classes, d.in_channels, d.image_size, d.spatial_dims, d.input_shape) == (10, 1, 40, 1, (1, 40))
    assert d.class_names == tuple(str(i) for i in range(10))
    assert set(torch.unique(d.y_train).tolist()) == set(range(10))
    counts = torch.bincount(d.y_val, minlength=10)  # stratified: ~80 per class
    assert counts.min() >= 75 and counts.max() <= 85
    assert abs(d.x_train.mean().item()) < 1e-4 and abs(d.x_train.std().item() - 1) < 1e-2
    assert np.load(_mnist1d_folder() / "x.npy", mmap_mode="r").dtype == np.float32
    # Another process loads the node cache instead of generating again.
    data_mod._MEMO.clear()
    monkeypatch.setattr(data_mod, "_generate_mnist1d", lambda: pytest.fail("generated twice"))
    again = load_data(_cfg(dataset="mnist1d"), seed=0)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_val, d.y_val)


def test_mnist1d_generation_is_deterministic_and_the_seed_only_splits(monkeypatch):
    data_mod._MEMO.clear()
    load_data(_cfg(dataset="mnist1d"), seed=0)  # generated by the test above, or now
    folder = _mnist1d_folder()
    x, y, _, x_test, y_test = data_mod._generate_mnist1d()
    assert x_test.shape == (1000, 1, 40) and np.array_equal(y_test, np.load(folder / "y_test.npy"))
    assert np.array_equal(x, np.load(folder / "x.npy")) and np.array_equal(y, np.load(folder / "y.npy"))
    assert x.shape == (4000, 1, 40) and np.bincount(y).min() > 350  # the package's 4,000 training signals
    # The spec's seed splits the one generated set: no second generation, no second cache entry.
    monkeypatch.setattr(data_mod, "_generate_mnist1d", lambda: pytest.fail("the seed changed the generated data"))
    a, b = load_data(_cfg(dataset="mnist1d"), seed=0), load_data(_cfg(dataset="mnist1d"), seed=1)
    assert not torch.equal(a.y_val, b.y_val) and _mnist1d_folder() == folder


# --- the test split -------------------------------------------------------------------------

def _split_file(seed: int, n_test: int) -> Path:
    [path] = list(cache_root().glob(f"digits-*/split-t{n_test}-*-{seed}.npz"))
    return path


def test_digits_test_split_comes_first_disjoint_stratified_and_stable(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    data_mod._MEMO.clear()
    d = load_data(_cfg(test_fraction=0.2), seed=3)
    assert (len(d.y_test), len(d.y_val), len(d.y_train)) == (359, 288, 1150)  # 20% of all, then 20% of the rest
    assert torch.bincount(d.y_test, minlength=10).min() >= 33  # stratified
    with np.load(_split_file(3, 359)) as f:
        train, val, test = f["train"], f["val"], f["test"]
    assert len(np.unique(np.concatenate([train, val, test]))) == 1797  # disjoint, and all of it
    # Normalized with the training split's statistics, as validation is.
    assert abs(d.x_test.mean().item()) < 0.1 and d.x_test.dtype == torch.float32
    # The same split on a reload from the node cache, and in a fresh process (a second worker, a resume).
    data_mod._MEMO.clear()
    again = load_data(_cfg(test_fraction=0.2), seed=3)
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_val, d.y_val)
    code = ("from raytune_opt.recipe.data import load_data; "
            "d = load_data({'dataset': 'digits', 'val_fraction': 0.2, 'test_fraction': 0.2}, 3); "
            "print(float(d.x_test.sum()), int(d.y_test.sum()), int(d.y_val.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(float(d.x_test.sum())), str(int(d.y_test.sum())), str(int(d.y_val.sum()))]
    # Another seed, another split; test_fraction 0 (or absent): no test split, the split of old versions.
    assert not torch.equal(load_data(_cfg(test_fraction=0.2), seed=4).y_test, d.y_test)
    off, before = load_data(_cfg(test_fraction=0.0), seed=3), load_data(_cfg(), seed=3)
    assert off.x_test is None and off.to_bundle().test is None and len(off.y_val) == 359
    assert torch.equal(off.y_val, before.y_val) and torch.equal(off.x_train, before.x_train)
    assert d.to_bundle().test is not None and len(d.to_bundle().test) == 359


def test_a_test_fraction_too_large_for_the_data_is_one_line(tmp_path):
    write_imagefolder(tmp_path / "img", classes=("a", "b"), per_class=1)
    _one_line_error(_cfg(dataset="imagefolder", root=str(tmp_path / "img"), image_size=8, test_fraction=0.2),
                    "data.test_fraction 0.2", "0: no test split")


def test_cifar_uses_its_test_batch_when_there_else_splits_one_off(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    folder = write_cifar10(tmp_path / "a")
    rng = np.random.default_rng(1)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (30, 3072), dtype=np.uint8),
                     b"labels": [i % 10 for i in range(30)]}, f)
    d = load_data(_cfg(dataset="cifar10", root=str(tmp_path / "a"), test_fraction=0.2), seed=0)
    assert len(d.y_test) == 30 and len(d.y_train) + len(d.y_val) == 100  # the training batches stay whole
    data_mod._MEMO.clear()
    again = load_data(_cfg(dataset="cifar10", root=str(tmp_path / "a"), test_fraction=0.2), seed=0)
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_val, d.y_val)
    assert load_data(_cfg(dataset="cifar10", root=str(tmp_path / "a"), test_fraction=0.0), seed=0).x_test is None
    write_cifar100(tmp_path / "b")  # no test file: 20% of the training images are held out
    d = load_data(_cfg(dataset="cifar100", root=str(tmp_path / "b"), test_fraction=0.2), seed=0)
    assert len(d.y_test) == 60 and len(d.y_train) + len(d.y_val) == 240
    data_mod._MEMO.clear()
    again = load_data(_cfg(dataset="cifar100", root=str(tmp_path / "b"), test_fraction=0.2), seed=0)
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.x_train, d.x_train)


def test_imagefolder_uses_its_test_directory_when_there(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    root = write_imagefolder(tmp_path / "img", classes=("a", "b", "c"), per_class=4)
    write_imagefolder(tmp_path / "img" / "test", classes=("a", "c"), per_class=2)
    d = load_data(_cfg(dataset="imagefolder", root=str(root), image_size=16, test_fraction=0.2), seed=0)
    assert d.class_names == ("a", "b", "c")  # test/ is the test split, not a class
    assert len(d.y_train) + len(d.y_val) == 12 and d.y_test.tolist() == [0, 0, 2, 2]
    data_mod._MEMO.clear()
    again = load_data(_cfg(dataset="imagefolder", root=str(root), image_size=16, test_fraction=0.2), seed=0)
    assert torch.equal(again.x_test, d.x_test)
    write_imagefolder(root / "test", classes=("z",), per_class=1)
    data_mod._MEMO.clear()
    _one_line_error(_cfg(dataset="imagefolder", root=str(root), image_size=16, test_fraction=0.2),
                    "a test class with no training images")


def test_mnist1d_uses_its_own_test_signals():
    d = load_data(_cfg(dataset="mnist1d", test_fraction=0.2), seed=0)
    assert (len(d.y_test), len(d.y_train) + len(d.y_val)) == (1000, 4000)
    data_mod._MEMO.clear()  # read back from the node cache: the same test signals, whatever the seed
    assert torch.equal(load_data(_cfg(dataset="mnist1d", test_fraction=0.2), seed=1).y_test, d.y_test)
