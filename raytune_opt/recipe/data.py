"""Load a data set once per node, split it with a seed, and normalize it.

Decoding (unpickling CIFAR batches, reading PNGs) is the slow part, and every trial on a
node would otherwise repeat it for every worker. So the first process decodes the images
to uint8 ``.npy`` files in a node-local cache directory (written atomically), and every
process memory-maps them: processes on one node share the page cache instead of each
holding a decoded copy. A per-process dict caches the split, normalized tensors on top.

The cache directory is ``data/`` under raytune-opt's cache root (``$RAYTUNE_OPT_CACHE``, see
:mod:`raytune_opt._cache`); each data set gets a sub-directory named by a hash of its kind,
its root, the image size and the sizes and modification times of its source files, so
changed data is decoded again.

The per-process memo keeps only the most recent data set: Tune reuses a trial's actor for
the next trial, and a sweep that tunes ``data.image_size`` would otherwise keep a float copy
of the whole data set per size in every actor.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raytune_opt import _atomic, _cache
from raytune_opt.recipe.errors import DataError

__all__ = ["Data", "DataError", "load_data", "cache_root"]

_CACHE_FORMAT = 1  # bump when the cached layout changes
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MEMO: dict[tuple, "Data"] = {}


@dataclass(frozen=True)
class Data:
    """A split, normalized data set. Images are float32 NCHW, labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of the training split, in raw pixel units
    std: tuple[float, ...]


def cache_root() -> Path:
    """The node-local directory that holds decoded data sets (created if missing).

    Raises:
        UsageError: it cannot be created (``$RAYTUNE_OPT_CACHE`` names a file...).
    """
    return _cache.cache_dir("data")


def load_data(data_cfg: dict, seed: int) -> Data:
    """Load, split and normalize the data set that ``data_cfg`` (the spec's ``data``) names.

    The split (stratified when every class has at least two samples) and hence the
    normalization statistics depend only on the data and ``seed``.

    Args:
        data_cfg: the spec's ``data`` section (``dataset``, ``root``, ``download``,
            ``val_fraction``, ``image_size``; ``loader_workers`` is the loop's business).
        seed: seed of the train/validation split.

    Raises:
        DataError: the data is missing, empty, in the wrong format, corrupt, has a
            single class, or is too small to split.
    """
    dataset = data_cfg.get("dataset", "digits")
    val_fraction = float(data_cfg.get("val_fraction", 0.2))
    if not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction must be between 0 and 1 (got {val_fraction}); set e.g. 0.2")
    image_size = data_cfg.get("image_size") or 224
    root = data_cfg.get("root")
    if dataset != "digits":
        if not root:
            raise DataError(f"data.root is not set but data.dataset is {dataset!r}; set data.root to the "
                            f"directory that holds the data")
        root = str(Path(root).expanduser().resolve())
    key = (dataset, root, image_size if dataset == "imagefolder" else None, val_fraction, int(seed))
    data = _MEMO.get(key)
    if data is None:
        x, y, class_names = _decoded(dataset, root, image_size, bool(data_cfg.get("download", False)))
        data = _split_and_normalize(x, y, class_names, val_fraction, int(seed), where=root or dataset)
        _MEMO.clear()  # one data set per process (see the module docstring)
        _MEMO[key] = data
    return data


# --- decoding into the node cache ----------------------------------------------------------

def _decoded(dataset: str, root: str | None, image_size: int, download: bool):
    """uint8 NCHW images (memory-mapped), int64 labels and class names, decoded at most once per node."""
    if dataset == "digits":
        return _cached("digits", "", [], _decode_digits)
    if dataset in ("cifar10", "cifar100"):
        folder, files = _cifar_files(dataset, root, download)
        return _cached(dataset, root, files, lambda: _decode_cifar(dataset, folder))
    if dataset == "imagefolder":
        files = _imagefolder_files(root)
        return _cached(f"imagefolder-{image_size}", root, files,
                       lambda: _decode_imagefolder(root, files, image_size))
    raise DataError(f"data.dataset {dataset!r} is not known; use one of digits, cifar10, cifar100, imagefolder")


def _cached(kind: str, root: str, files: list[Path], decode):
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    digest = hashlib.sha256(json.dumps([_CACHE_FORMAT, kind, root, stamp]).encode()).hexdigest()[:16]
    folder = cache_root() / f"{kind}-{digest}"
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        x, y, class_names = decode()
        assert x.dtype == np.uint8 and x.ndim == 4 and len(x) == len(y), (x.dtype, x.shape, y.shape)
        folder.mkdir(parents=True, exist_ok=True)
        with _atomic.open_atomic(folder / "x.npy") as f:
            np.save(f, np.ascontiguousarray(x))
        with _atomic.open_atomic(folder / "y.npy") as f:
            np.save(f, y.astype(np.int64))
        # meta.json is written last: its presence means the arrays beside it are complete.
        _atomic.write_bytes(meta_path, json.dumps({"class_names": list(class_names), "source": root, "kind": kind}).encode())
    meta = json.loads(meta_path.read_text())
    x = np.load(folder / "x.npy", mmap_mode="r")
    y = np.load(folder / "y.npy")
    return x, y, tuple(meta["class_names"])


def _decode_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16, so uint8 holds them exactly.
    x = bunch.images.astype(np.uint8)[:, None, :, :]
    return x, bunch.target.astype(np.int64), tuple(str(n) for n in bunch.target_names)


def _check_root(root: str, what: str) -> Path:
    path = Path(root)
    if not path.exists():
        raise DataError(f"{root}: data.root does not exist; point data.root at the {what}")
    if not path.is_dir():
        raise DataError(f"{root}: data.root is not a directory; point data.root at the {what}")
    if not any(path.iterdir()):
        raise DataError(f"{root}: data.root is empty; put the {what} there")
    return path


def _cifar_files(dataset: str, root: str, download: bool) -> tuple[Path, list[Path]]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if dataset == "cifar10" else CIFAR100
    what = f"directory that holds {cls.base_folder}/ (torchvision's {dataset} format)"
    if download:
        Path(root).mkdir(parents=True, exist_ok=True)
        try:
            cls(root, train=True, download=True)
        except Exception as exc:  # network and archive errors come in many types
            raise DataError(f"{root}: downloading {dataset} failed ({exc}); check the network or copy "
                            f"{cls.base_folder}/ there and set data.download false") from None
    path = _check_root(root, what)
    folder = path / cls.base_folder
    if not folder.is_dir():
        raise DataError(f"{root}: no {cls.base_folder}/ inside, so this is not torchvision's {dataset} format; "
                        f"point data.root at the {what} (or set data.download true)")
    names = [name for name, _md5 in cls.train_list] + [cls.meta["filename"]]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}; the {dataset} copy is incomplete, "
                        f"copy it again (or delete it and set data.download true)")
    return folder, [folder / n for n in names]


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _unpickle(path: Path, dataset: str) -> dict:
    try:
        with open(path, "rb") as f:
            # The CIFAR batches are pickles by design; unlike torchvision we only let
            # containers and numpy arrays out of them.
            return _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # truncated pickles raise EOFError, UnpicklingError, ValueError...
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); the file is truncated or "
                        f"corrupt, copy the {dataset} data again") from None


def _decode_cifar(dataset: str, folder: Path):
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if dataset == "cifar10" else CIFAR100
    label_key = b"labels" if dataset == "cifar10" else b"fine_labels"
    xs, ys = [], []
    for name, _md5 in cls.train_list:
        path = folder / name
        batch = _unpickle(path, dataset)
        data, labels = batch.get(b"data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or labels is None or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                or len(labels) != len(data):
            raise DataError(f"{path}: not a {dataset} batch (needs {label_key!r} and uint8 N x 3072 b'data'); "
                            f"the file is corrupt or from another data set, copy the {dataset} data again")
        xs.append(data.astype(np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    meta_path = folder / cls.meta["filename"]
    meta = _unpickle(meta_path, dataset)
    names = meta.get(cls.meta["key"].encode())
    if names is None:
        raise DataError(f"{meta_path}: has no {cls.meta['key']!r}; the file is corrupt, copy the {dataset} data again")
    return np.concatenate(xs), np.concatenate(ys), tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _imagefolder_files(root: str) -> list[Path]:
    path = _check_root(root, "directory with one sub-folder of images per class")
    classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [f for d in classes for f in sorted(d.rglob("*")) if f.suffix.lower() in _IMAGE_EXTENSIONS]
    if not files:
        raise DataError(f"{root}: no images in class sub-folders (looked for {', '.join(_IMAGE_EXTENSIONS)}); "
                        f"put each class's images in data.root/CLASS_NAME/")
    return files


def _decode_imagefolder(root: str, files: list[Path], image_size: int):
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    try:
        folder = ImageFolder(root, allow_empty=True)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{root}: {exc}; put each class's images in data.root/CLASS_NAME/") from None
    resize = v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True)])
    x = np.empty((len(folder.samples), 3, image_size, image_size), dtype=np.uint8)
    y = np.empty(len(folder.samples), dtype=np.int64)
    for i, (file, label) in enumerate(folder.samples):
        try:
            with Image.open(file) as img:
                x[i] = resize(img.convert("RGB")).numpy()
        except Exception as exc:  # PIL raises many types for truncated/foreign files
            raise DataError(f"{file}: cannot be decoded as an image ({type(exc).__name__}: {exc}); "
                            f"replace or delete the file") from None
        y[i] = label
    return x, y, tuple(folder.classes)


# --- split and normalize -------------------------------------------------------------------

def _split_and_normalize(x: np.ndarray, y: np.ndarray, class_names: tuple, val_fraction: float, seed: int,
                         where: str) -> Data:
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{where}: only one class ({class_names[int(present[0])] if len(present) else 'none'}) "
                        f"was found; a classifier needs at least two, add another class")
    n_val = int(round(len(y) * val_fraction))
    if n_val < 1 or len(y) - n_val < 1:
        raise DataError(f"{where}: {len(y)} samples cannot be split with data.val_fraction {val_fraction}; "
                        f"add data or change data.val_fraction")
    train_idx, val_idx = _split_indices(y, n_val, seed)
    # Sorted indices read the memory map sequentially; the loader shuffles anyway.
    train_idx.sort()
    val_idx.sort()
    x_train = torch.from_numpy(np.asarray(x[train_idx], dtype=np.float32))
    x_val = torch.from_numpy(np.asarray(x[val_idx], dtype=np.float32))
    mean = x_train.mean(dim=(0, 2, 3))
    std = x_train.std(dim=(0, 2, 3)).clamp_min(1e-6)  # a constant channel must not divide by zero
    shape = (1, -1, 1, 1)
    x_train.sub_(mean.view(shape)).div_(std.view(shape))
    x_val.sub_(mean.view(shape)).div_(std.view(shape))
    return Data(
        x_train=x_train, y_train=torch.from_numpy(y[train_idx].astype(np.int64)),
        x_val=x_val, y_val=torch.from_numpy(y[val_idx].astype(np.int64)),
        num_classes=len(class_names), in_channels=x.shape[1], image_size=x.shape[2],
        class_names=tuple(class_names), mean=tuple(mean.tolist()), std=tuple(std.tolist()),
    )


def _split_indices(y: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    counts = counts[counts > 0]
    stratify = y if counts.min() >= 2 and len(counts) <= n_val <= len(y) - len(counts) else None
    indices = np.arange(len(y))
    train_idx, val_idx = train_test_split(indices, test_size=n_val, random_state=seed, stratify=stratify)
    return np.asarray(train_idx), np.asarray(val_idx)
