"""User data sets: what a data callable may return, what is inferred, and every way it can be wrong."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import raytune_opt
from raytune_opt import registry
from raytune_opt.recipe import bundle as bundle_mod
from raytune_opt.recipe.bundle import DataBundle, as_bundle, load_bundle, materialize, train_labels
from raytune_opt.recipe.errors import DataError
from raytune_opt.spec import schema
from tests._user_code import user_module


def _pair(n=20, classes=3, shape=(5,)):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.arange(n) % classes
    return TensorDataset(x, y), TensorDataset(x[:6], y[:6])


class _Listed(Dataset):
    """A plain map-style Dataset (no tensors attribute), with torchvision's ``targets``."""

    def __init__(self, x, y, label_type=int):
        self.x, self.y, self.label_type = x, y, label_type
        self.targets = [int(v) for v in y]
        self.reads = 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], self.label_type(self.y[i])


def test_a_train_val_pair_is_a_bundle_with_everything_inferred():
    train, val = _pair(classes=4)
    b = as_bundle((train, val), "m:f")
    assert (b.num_classes, b.task, b.class_names) == (4, "classification", ("0", "1", "2", "3"))
    assert b.input_example.shape == (1, 5) and b.input_shape == (5,) and b.in_channels is None
    assert raytune_opt.DataBundle is DataBundle  # the public name


def test_labels_come_from_a_targets_attribute_without_reading_the_inputs():
    x, y = torch.randn(30, 2, 4, 4), torch.arange(30) % 5
    train = _Listed(x, y)
    b = as_bundle(DataBundle(train=train, val=_Listed(x[:5], y[:5])), "m:f")
    assert b.num_classes == 5 and b.in_channels == 2 and b.input_shape == (2, 4, 4)
    assert train.reads == 1  # the first sample only (its input is the example)
    del train.targets
    assert torch.equal(train_labels(train), y)  # ... else by iterating it


def test_materialize_draws_a_seeded_sample():
    x, y = torch.arange(100.0).view(100, 1), torch.arange(100) % 2
    a, b = materialize(_Listed(x, y), limit=10, seed=3), materialize(TensorDataset(x, y), limit=10, seed=3)
    assert torch.equal(a[0], b[0]) and len(a[0]) == 10 and torch.equal(a[0].flatten().long() % 2, a[1])
    assert torch.equal(materialize(_Listed(x, y))[0], x)


@pytest.mark.parametrize("returned, message", [
    (lambda: {"train": 1}, "returned a dict, not a DataBundle, a (train, val) pair or a (train, val, test) triple"),
    (lambda: (*_pair(), None, None), "returned a 4-item tuple"),
    (lambda: (3, _pair()[1]), "train is an int, not a torch Dataset"),
    (lambda: ([1, 2], _pair()[1]), "a train sample is an int (1), not an (input, label) pair"),
    (lambda: (_pair()[0], TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))),
     "the val split is empty"),
    (lambda: (TensorDataset(torch.zeros(4, 5)), _pair()[1]), "a train sample is a 1-item tuple, not an (input, label) pair"),
    (lambda: (_Listed([[1.0]] * 4, torch.zeros(4)), _pair()[1]), "a train input is a 1-item list, not a tensor"),
    (lambda: (TensorDataset(torch.zeros(4, 5), torch.zeros(4)), _Listed(torch.zeros(4, 5), torch.zeros(4), str)),
     "a val label is a str ('tensor(0.)'), not a number"),  # float train labels: a regression
    (lambda: DataBundle(*_pair(), task="regression", num_classes=3), "a regression has one output"),
    (lambda: DataBundle(TensorDataset(torch.zeros(4, 5), torch.zeros(4, 2)), _pair()[1], task="regression"),
     "a train label is a torch.float32 tensor of shape (2,), not a number"),
    (lambda: DataBundle(*_pair(), task="ranking"), "task must be one of classification, regression"),
    (lambda: DataBundle(*_pair(classes=3), num_classes=2), "label 2 is out of range for num_classes=2"),
    (lambda: DataBundle(*_pair(classes=3), class_names=("a", "b")), "2 class_names for 3 classes"),
    (lambda: DataBundle(*_pair(), input_example=[1, 2]), "input_example must be a batch tensor"),
    (lambda: (TensorDataset(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long)),) * 2,
     "num_classes must be an integer of at least 2 (got 1)"),
])
def test_what_a_data_callable_returns_is_checked(returned, message):
    with pytest.raises(DataError, match=".*".join(map(_escape, message.split(".*")))) as info:
        as_bundle(returned(), "pkg.data:load")
    assert str(info.value).startswith("data.dataset pkg.data:load")
    assert "\n" not in str(info.value)


def _escape(text):
    import re

    return re.escape(text)


USER = '''
import torch
from torch.utils.data import TensorDataset
from raytune_opt import DataBundle

CALLS = []


def load(n: int, seed: int, scale: float = 1.0):
    CALLS.append((n, seed, scale))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g) * scale
    y = (x[:, 0] > 0).long()
    return DataBundle(train=TensorDataset(x, y), val=TensorDataset(x[:4], y[:4]), class_names=("neg", "pos"))


def fraction(val_fraction):
    x, y = torch.randn(10, 2), torch.arange(10) % 2
    k = int(10 * val_fraction)
    return TensorDataset(x[k:], y[k:]), TensorDataset(x[:k], y[:k])


def broken(**kwargs):
    return {}["missing"]
'''


@pytest.fixture
def user_pkg(tmp_path):
    yield from user_module(tmp_path, "udata", USER)
    bundle_mod._MEMO.clear()


def test_a_user_data_callable_gets_its_args_and_the_injected_names_it_asks_for(user_pkg):
    directory, name = user_pkg
    b = load_bundle({"dataset": f"{name}:load", "args": {"n": 40, "scale": 2.0}, "val_fraction": 0.5}, 7,
                    [str(directory)])
    mod = importlib.import_module(name)
    assert mod.CALLS == [(40, 7, 2.0)]  # seed injected; val_fraction not (the signature does not name it)
    assert b.class_names == ("neg", "pos") and b.num_classes == 2
    again = load_bundle({"dataset": f"{name}:load", "args": {"n": 40, "scale": 2.0}, "val_fraction": 0.5}, 7)
    assert again is b and len(mod.CALLS) == 1  # kept for the next trial in this process
    b = load_bundle({"dataset": f"{name}:fraction", "val_fraction": 0.3}, 0, [str(directory)])
    assert len(b.val) == 3 and len(b.train) == 7


def test_user_data_errors_are_one_line_naming_the_callable(user_pkg):
    directory, name = user_pkg
    with pytest.raises(DataError) as info:
        load_bundle({"dataset": f"{name}:broken"}, 0, [str(directory)])
    msg = str(info.value)
    assert msg.startswith(f"data.dataset {name}:broken raised KeyError: 'missing' (at {directory / name}.py:")
    assert "\n" not in msg and isinstance(info.value.__cause__, KeyError)  # a trial's error keeps the traceback
    with pytest.raises(DataError, match=r"cannot import 'nope_pkg.data:load' \(No module named 'nope_pkg'\)"):
        load_bundle({"dataset": "nope_pkg.data:load"}, 0)
    with pytest.raises(DataError, match="data.args.seed is given by the spec"):
        load_bundle({"dataset": f"{name}:load", "args": {"n": 4, "seed": 1}}, 0, [str(directory)])
    with pytest.raises(DataError, match="'mnist2d' is not a data set; use one of digits, mnist1d"):
        load_bundle({"dataset": "mnist2d"}, 0)


@pytest.mark.parametrize("name", list(registry.DATASETS))
def test_every_registered_data_set_is_a_keyword_callable_returning_a_bundle(name, tmp_path, monkeypatch):
    """One conformance test over the registry: the built-ins load the way a user's callable does
    (those that need files get tiny ones in the format they read)."""
    from tests.recipe._datasets import write_cifar10, write_cifar100, write_imagefolder

    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    entry = registry.DATASETS[name]
    cfg = {"dataset": name}
    if name == "csv":
        (tmp_path / "t.csv").write_text("a,b,label\n" + "".join(f"{i},{'xy'[i % 2]},{'pq'[i % 2]}\n"
                                                                   for i in range(12)))
        cfg.update(path=str(tmp_path / "t.csv"), target="label")
    if entry.meta["needs_root"]:
        root = tmp_path / "data"
        if name == "imagefolder":
            write_imagefolder(root, classes=("a", "b"), per_class=6, size=12)
            cfg["image_size"] = 8
        else:
            (write_cifar10 if name == "cifar10" else write_cifar100)(root)
        cfg["root"] = str(root)
    b = load_bundle(cfg, 0)
    assert isinstance(b, DataBundle) and b.task == "classification" and b.num_classes >= 2
    assert len(b.class_names) == b.num_classes and len(b.train) > len(b.val) > 0
    x, y = b.train[0]
    assert tuple(x.shape) == b.input_shape and b.input_example.dtype == torch.float32
    assert len(b.input_shape) == 1 + entry.meta["inputs"]
    assert set(entry.meta["keys"]) <= set(schema.SPEC.fields["data"].fields)  # data section keys


# --- the test split of a user's data set ----------------------------------------------------

def test_a_user_test_set_comes_as_a_triple_or_a_bundle_field_and_is_checked():
    train, val = _pair(classes=3)
    test = TensorDataset(torch.randn(7, 5), torch.arange(7) % 3)
    for result in ((train, val, test), DataBundle(train=train, val=val, test=test)):
        b = as_bundle(result, "m:f")
        assert b.test is test and b.num_classes == 3
    assert as_bundle((train, val), "m:f").test is None  # none given: no test split
    assert as_bundle(DataBundle(train=train, val=val), "m:f").test is None
    # Its labels count for num_classes, and are checked as the other splits' are.
    wide = TensorDataset(torch.randn(4, 5), torch.tensor([0, 1, 2, 5]))
    assert as_bundle((train, val, wide), "m:f").num_classes == 6
    with pytest.raises(DataError, match="label 5 is out of range for num_classes=3"):
        as_bundle(DataBundle(train=train, val=val, test=wide, num_classes=3), "m:f")
    with pytest.raises(DataError, match="the test split is empty"):
        as_bundle((train, val, TensorDataset(torch.randn(0, 5), torch.zeros(0, dtype=torch.long))), "m:f")
    with pytest.raises(DataError, match=r"not a DataBundle, a \(train, val\) pair or a \(train, val, test\) triple"):
        as_bundle((train, val, test, test), "m:f")


TRIPLE = '''
import torch
from torch.utils.data import TensorDataset

SEEN = []


def load(seed, test_fraction):
    SEEN.append(test_fraction)
    x, y = torch.randn(30, 4), torch.arange(30) % 2
    return TensorDataset(x[:20], y[:20]), TensorDataset(x[20:25], y[20:25]), TensorDataset(x[25:], y[25:])
'''


def test_a_user_callable_gets_test_fraction_when_it_asks_and_a_trial_never_sees_the_test_set(tmp_path):
    from raytune_opt.recipe.context import TrialContext

    for directory, name in user_module(tmp_path, "utriple", TRIPLE):
        cfg = {"dataset": f"{name}:load", "test_fraction": 0.25}
        b = load_bundle(cfg, 0, [str(directory)])
        assert len(b.test) == 5 and importlib.import_module(name).SEEN == [0.25]
        ctx = TrialContext({"seed": 0, "data": cfg, "train": {"epochs": 1}}, None, None)
        assert ctx.data.test is None and len(ctx.data.val) == 5  # the trial's bundle has no test split
    bundle_mod._MEMO.clear()
