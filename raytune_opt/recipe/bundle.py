"""What a data set callable returns, and how a trial gets one from the spec's ``data`` section.

A data set callable (a built-in registered in :data:`raytune_opt.registry.DATASETS`, or a
user's ``"module:callable"``) returns a :class:`DataBundle`, or simply a ``(train, val)``
pair (or a ``(train, val, test)`` triple) of torch Datasets from which :func:`as_bundle`
infers the rest. Every sample is an ``(input, label)`` pair; a classification label is a
class index. The test split is never given to a trial: it is measured once, after the sweep,
on the chosen model (and on every promoted artifact).

A user callable is called with ``data.args`` as keyword arguments plus whichever of
:data:`raytune_opt.registry.DATA_INJECTED` (``seed``, ``val_fraction``, ``test_fraction``) its
signature names;
a built-in gets the ``data`` section keys its entry lists. The result of the last call is
kept per process (Tune reuses a trial's actor for the next trial; the built-ins also keep a
node-wide decoded cache, :mod:`raytune_opt.recipe.data`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from raytune_opt import registry
from raytune_opt.errors import describe_raised
from raytune_opt.recipe.errors import DataError
from raytune_opt.recipe.models import in_channels_of
from raytune_opt.spec.view import view

__all__ = ["DataBundle", "TensorPairs", "TASKS", "as_bundle", "collate", "load_bundle", "make_loader", "materialize",
           "train_labels"]

TASKS = ("classification", "regression")
_MEMO: dict[tuple, "DataBundle"] = {}


@dataclass(frozen=True)
class DataBundle:
    """A data set as a trial uses it.

    Attributes:
        train, val: torch Datasets of ``(input, label)`` samples. A ``TensorDataset`` of
            (inputs, labels) is sliced a batch at a time (the fastest path).
        num_classes: classes of a classification task; None: one more than the largest
            label of any split. A regression has one output (1).
        task: ``"classification"`` (labels are class indices) or ``"regression"`` (labels
            are numbers). None: the spec's ``data.task``, else the first label's type (an
            integer classifies, a float regresses).
        input_example: a batch of inputs (batch first) with the shape and dtype the model
            takes; ONNX export traces with it. None: the first training sample's input.
        class_names: one name per class (the report and the promotion manifest); None:
            ``"0"``, ``"1"``...
        info: facts for the promotion manifest (``layout``, ``normalize``), free-form.
        collate_fn: how a list of samples becomes a batch (e.g. padding sequences of
            different lengths); None: PyTorch's default collate.
        test: a torch Dataset held out from the search: trials never see it; the chosen
            model and every promoted artifact are measured on it once the sweep is over.
            None: no test split (the figures reported are then validation figures).
    """

    train: Any
    val: Any
    num_classes: int | None = None
    task: str | None = None
    input_example: Any = None
    class_names: Sequence[str] | None = None
    info: dict = field(default_factory=dict)
    collate_fn: Callable | None = None
    test: Any = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's input shape, e.g. (C, H, W), (C, L) or (features,)."""
        return tuple(self.input_example.shape[1:])

    @property
    def in_channels(self) -> int | None:
        """The channels of a channels-first sample (one with two or more dims), else None."""
        return in_channels_of(self.input_shape)


class TensorPairs(TensorDataset):
    """Inputs and labels in memory; a DataLoader fetches a whole batch at a time (no
    per-sample loop), and the loop slices them directly when it can."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__(x, y)

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices)
        return tuple(t[index] for t in self.tensors)


def collate(batch):
    """PyTorch's default collate, except that a batch :class:`TensorPairs` fetched whole passes as is."""
    return batch if isinstance(batch, tuple) else default_collate(batch)


def make_loader(data: DataBundle, split: str, batch_size: int, **kwargs) -> DataLoader:
    """A DataLoader over ``data``'s ``split`` with the bundle's collate (``kwargs`` go to DataLoader)."""
    return DataLoader(getattr(data, split), batch_size=int(batch_size), collate_fn=data.collate_fn or collate,
                      **kwargs)


def as_bundle(result: Any, label: str, task: str | None = None) -> DataBundle:
    """Check what a data set callable returned and fill in what it left out.

    Args:
        result: a :class:`DataBundle`, a ``(train, val)`` pair, a ``(train, val, test)`` triple, a
            LightningDataModule (its loaders' data sets), or a dict of a Hugging Face Trainer's
            data sets (``train_dataset``, ``eval_dataset``...).
        label: the callable, for messages (``mypkg.data:load``).
        task: the spec's ``data.task`` (None: the bundle's, else its labels': an integer
            classifies, a float regresses).

    Raises:
        DataError: not a bundle or a pair, a split that is not a non-empty Dataset of
            ``(input, label)`` pairs, labels that do not fit the task (class indices below
            num_classes; numbers for a regression), or a task other than the spec's.
    """
    fix_return = ("return raytune_opt.DataBundle(train=..., val=..., test=...) or a (train, val) pair or a "
                  "(train, val, test) triple of torch Datasets")
    if isinstance(result, (tuple, list)) and len(result) in (2, 3):
        result = DataBundle(train=result[0], val=result[1], test=result[2] if len(result) == 3 else None)
    if _is_datamodule(result):  # a LightningDataModule (train.loop: lightning): the data sets of its loaders
        from raytune_opt.integrations.lightning import datamodule_bundle

        result = datamodule_bundle(result, label)
    if isinstance(result, dict) and "train_dataset" in result:  # train.loop: hf_trainer: the Trainer's data
        from raytune_opt.integrations.hf import trainer_data_bundle

        result = trainer_data_bundle(result, label)
    if not isinstance(result, DataBundle):
        kind = _describe(result) if isinstance(result, (tuple, list)) else _a(type(result).__name__)
        raise DataError(f"data.dataset {label} returned {kind}, not a DataBundle, a (train, val) pair or a "
                        f"(train, val, test) triple; {fix_return}")
    splits = ("train", "val") if result.test is None else ("train", "val", "test")
    first = {name: _first_sample(getattr(result, name), name, label) for name in splits}
    if result.task is not None and task is not None and result.task != task:
        raise DataError(f"data.dataset {label}: its DataBundle says task {result.task!r} but data.task is {task!r}; "
                        f"remove data.task or make them agree")
    task = result.task or task or ("classification" if _is_index(first["train"][1]) else "regression")
    if task not in TASKS:
        raise DataError(f"data.dataset {label}: task must be one of {', '.join(TASKS)} (got {task!r}); set "
                        f"DataBundle(task=...) accordingly")
    if task == "regression":
        return _regression(result, first, label)
    for name, (_, y) in first.items():
        if not _is_index(y):
            raise DataError(f"data.dataset {label}: a {name} label is {_describe(y)}, not a class index; "
                            f"return integer labels (0 .. num_classes-1), or set data.task: regression")
    num_classes = result.num_classes
    if num_classes is None or isinstance(result.train, TensorDataset):
        top = max(int(train_labels(getattr(result, name)).max()) for name in splits)
        if num_classes is None:
            num_classes = top + 1
        elif top >= num_classes:
            raise DataError(f"data.dataset {label}: label {top} is out of range for num_classes={num_classes}; "
                            f"labels run from 0 to num_classes-1")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise DataError(f"data.dataset {label}: num_classes must be an integer of at least 2 (got {num_classes!r})")
    names = result.class_names
    if names is None:
        names = tuple(str(i) for i in range(num_classes))
    elif len(names) != num_classes:
        raise DataError(f"data.dataset {label}: {len(names)} class_names for {num_classes} classes; give one "
                        f"name per class")
    return replace(result, num_classes=num_classes, task=task, input_example=_example(result, first, label),
                   class_names=tuple(str(n) for n in names))


def _is_datamodule(obj: Any) -> bool:
    """Whether ``obj`` looks like a LightningDataModule (without importing Lightning)."""
    return all(callable(getattr(obj, name, None)) for name in ("prepare_data", "setup", "train_dataloader",
                                                                "val_dataloader"))


def _regression(result: DataBundle, first: dict, label: str) -> DataBundle:
    """A regression bundle: one numeric target per sample, one output."""
    for name, (_, y) in first.items():
        if not _is_number(y):
            raise DataError(f"data.dataset {label}: a {name} label is {_describe(y)}, not a number; a regression "
                            f"takes one number per sample")
    if result.num_classes not in (None, 1):
        raise DataError(f"data.dataset {label}: a regression has one output (got num_classes={result.num_classes!r}); "
                        f"leave num_classes out")
    return replace(result, num_classes=1, task="regression", input_example=_example(result, first, label),
                   class_names=())


def _example(result: DataBundle, first: dict, label: str):
    example = result.input_example
    if example is None:
        return torch.as_tensor(first["train"][0]).unsqueeze(0)
    if not isinstance(example, torch.Tensor) or example.dim() < 1:
        raise DataError(f"data.dataset {label}: input_example must be a batch tensor (batch first) (got "
                        f"{_describe(example)}); pass e.g. train[0][0].unsqueeze(0)")
    return example


def load_bundle(data_cfg: dict, seed: int, dirs: Sequence[str] = ()) -> DataBundle:
    """The data set that ``data_cfg`` (the spec's ``data`` section) names.

    Args:
        data_cfg: ``dataset``, ``args`` and the built-ins' keys (``root``, ``val_fraction``...).
        seed: the sweep's seed (the built-ins' train/validation split).
        dirs: directories to import a user callable from before the current directory and ``sys.path``.

    Raises:
        DataError: the data set is unknown, does not import, raises, or returns something
            :func:`as_bundle` refuses. The user callable's own exception is kept as the cause
            (a trial's error keeps its traceback).
    """
    data = view(("data",), data_cfg)
    name = data.dataset
    entry = registry.DATASETS.get(name)
    if entry is not None and "keys" in entry.meta:  # a built-in: it reads data section keys
        kwargs = {k: data_cfg[k] for k in entry.meta["keys"] if k in data_cfg}
        bundle = entry.load()(**kwargs, seed=int(seed))
        if data.task and bundle.task != data.task:
            raise DataError(f"data.dataset {name} holds a {bundle.task} task but data.task is {data.task!r}; "
                            f"remove data.task")
        return bundle
    if entry is None and not registry.is_import_path(name):
        raise DataError(f"data.dataset {name!r} is not a data set; use one of {', '.join(registry.DATASETS)}, or "
                        f"a 'module:callable' import path")
    target = registry.DATASETS.target_of(name)
    args = dict(data.args)
    injected_values = {"seed": int(seed), "val_fraction": float(data.val_fraction),
                       "test_fraction": float(data_cfg.get("test_fraction") or 0.0)}
    key = (target, repr(sorted(args.items())), repr(sorted(injected_values.items())), data.task)
    if key in _MEMO:
        return _MEMO[key]
    try:
        fn = registry.import_target(target, dirs)
    except registry.ImportTargetError as exc:
        raise DataError(f"data.dataset: {exc}; {exc.fix}") from None
    clash = sorted(set(args) & set(registry.DATA_INJECTED))
    if clash:
        raise DataError(f"data.dataset {target}: data.args.{clash[0]} is given by the spec; remove it from data.args")
    sig = registry.signature_of(fn)
    injected = {k: v for k, v in injected_values.items() if sig is not None and k in sig.names}
    try:
        result = fn(**args, **injected)
    except Exception as exc:  # the user's code: one line naming where it raised; the cause keeps the rest
        raise DataError(f"data.dataset {target} raised {describe_raised(exc)}; fix the data callable (raytune-opt "
                        f"validate --smoke SPEC runs it, and one batch through the model)") from exc
    bundle = as_bundle(result, target, data_cfg.get("task"))
    _MEMO.clear()  # one data set per process
    _MEMO[key] = bundle
    return bundle


def train_labels(dataset: Any) -> torch.Tensor:
    """Every label of ``dataset`` as one int64 tensor (read from a TensorDataset or a
    ``targets`` attribute without loading the inputs; otherwise by iterating it)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long().flatten()
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values):
            try:
                labels = torch.as_tensor(values)
            except (TypeError, ValueError, RuntimeError):
                break
            if labels.dim() == 1 and len(labels) == len(dataset):
                return labels.long()
            break
    return materialize(dataset)[1].long().flatten()


def materialize(dataset: Any, limit: int | None = None, seed: int = 0,
                collate_fn: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of ``dataset`` (or of ``limit`` samples drawn with ``seed``) as two tensors."""
    indices = None
    if limit is not None and len(dataset) > limit:
        g = torch.Generator().manual_seed(int(seed))
        indices = torch.randperm(len(dataset), generator=g)[:limit].sort().values
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        x, y = dataset.tensors
        return (x, y) if indices is None else (x[indices], y[indices])
    if indices is not None:
        indices = indices.tolist()
    source = dataset if indices is None else torch.utils.data.Subset(dataset, indices)
    xs, ys = [], []
    for x, y in DataLoader(source, batch_size=256, shuffle=False, collate_fn=collate_fn or collate):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys)


def _first_sample(dataset: Any, split: str, label: str) -> tuple:
    if not (isinstance(dataset, Dataset) or (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"))):
        raise DataError(f"data.dataset {label}: {split} is {_a(type(dataset).__name__)}, not a torch Dataset; "
                        f"give a map-style Dataset (e.g. TensorDataset(inputs, labels))")
    try:
        n = len(dataset)
    except TypeError:
        n = None
    if not n:
        raise DataError(f"data.dataset {label}: the {split} split is empty; give it at least one sample")
    sample = dataset[0]
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        raise DataError(f"data.dataset {label}: a {split} sample is {_describe(sample)}, not an (input, label) "
                        f"pair; make __getitem__ return (input, label)")
    if not isinstance(sample[0], torch.Tensor):
        raise DataError(f"data.dataset {label}: a {split} input is {_describe(sample[0])}, not a tensor; "
                        f"return torch tensors")
    return tuple(sample)


def _is_number(y: Any) -> bool:
    if isinstance(y, bool):
        return False
    if isinstance(y, (int, float)):
        return True
    if isinstance(y, torch.Tensor):
        return y.numel() == 1 and y.dim() <= 1 and not y.is_complex() and y.dtype != torch.bool
    return False


def _is_index(y: Any) -> bool:
    if isinstance(y, bool):
        return False
    if isinstance(y, int):
        return y >= 0
    if isinstance(y, torch.Tensor):
        return y.dim() == 0 and not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool
    return False


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {len(value)}-item {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return f"{_a(type(value).__name__)} ({value!r})" if isinstance(value, (int, float, str)) else \
        _a(type(value).__name__)
