"""Load a data set once per node, split it with a seed, and normalize it.

Decoding (unpickling CIFAR batches, reading PNGs, generating mnist1d) is the slow part, and
every trial on a node would otherwise repeat it for every worker. So the first process
decodes the images to uint8 (mnist1d's signals: float32) ``.npy`` files in a node-local
cache directory (written atomically), and every
process memory-maps them: processes on one node share the page cache instead of each
holding a decoded copy. A per-process dict caches the split, normalized tensors on top.

Three splits. The test split comes first: a data set with a test set of its own (CIFAR's
``test_batch``, mnist1d's 1,000 test signals, an ImageFolder's ``test/`` directory) uses it;
the others hold out ``data.test_fraction`` of their samples (seeded, stratified), before
the train/validation split divides the rest. ``data.test_fraction: 0`` turns it off (the
train/validation split is then the one of versions without a test split). The split's
indices are cached beside the decoded arrays, keyed by the sizes and the seed, so every
process and every node (and a resumed sweep) gets the same three splits. The test split is
for the final, once-only measurement of the chosen model: trials never see it.

The cache directory is ``data/`` under raytune-opt's cache root (``$RAYTUNE_OPT_CACHE``, see
:mod:`raytune_opt._cache`); each data set gets a sub-directory named by a hash of its kind,
its root, the image size and the sizes and modification times of its source files, so
changed data is decoded again.

The per-process memo keeps only the most recent data set: Tune reuses a trial's actor for
the next trial, and a sweep that tunes ``data.image_size`` would otherwise keep a float copy
of the whole data set per size in every actor.

Images are (N, C, H, W); the 1-D signals of ``mnist1d`` are (N, C, L) with C = 1.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raytune_opt import _atomic, _cache, progress
from raytune_opt.recipe.errors import DataError
from raytune_opt.spec.view import view

__all__ = ["Data", "DataError", "load_data", "cache_root", "digits", "mnist1d", "cifar10", "cifar100", "imagefolder"]

_CACHE_FORMAT = 2  # bump when the cached layout changes (2: a data set's own test set, x_test/y_test.npy)
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MEMO: dict[tuple, "Data"] = {}


@dataclass(frozen=True)
class Data:
    """A split, normalized data set: float32 NCHW images or NCL signals, int64 labels.

    ``image_size`` is the side of the square images, or the length of the signals.
    """

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
    x_test: torch.Tensor | None = None  # the test split (None: data.test_fraction 0)
    y_test: torch.Tensor | None = None

    @property
    def spatial_dims(self) -> int:
        """2 for images, 1 for signals."""
        return self.x_train.dim() - 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape: (C, H, W) or (C, L)."""
        return tuple(self.x_train.shape[1:])

    def to_bundle(self):
        """This data set as the :class:`~raytune_opt.recipe.bundle.DataBundle` every loop takes."""
        from raytune_opt.recipe.bundle import DataBundle, TensorPairs

        signals = self.spatial_dims == 1
        what = "signal" if signals else "pixels"
        return DataBundle(
            train=TensorPairs(self.x_train, self.y_train), val=TensorPairs(self.x_val, self.y_val),
            test=None if self.x_test is None else TensorPairs(self.x_test, self.y_test),
            num_classes=self.num_classes, task="classification", input_example=self.x_train[:1],
            class_names=self.class_names,
            info={"layout": "NCL" if signals else "NCHW",
                  "normalize": {"mean": list(self.mean), "std": list(self.std),
                                "note": f"input = ({what} - mean) / std, per channel, in the data set's raw "
                                        f"{'signal' if signals else 'pixel'} units"}})


# The built-in data sets, as registered in raytune_opt.registry.DATASETS: each reads the data
# section keys its entry lists and returns a DataBundle, as a user's data set callable does.
# test_fraction defaults to 0 here (no test split: what a recipe recorded before the key
# existed gets the split it trained on); a spec's data.test_fraction defaults to 0.2.

def digits(*, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0):
    """scikit-learn's 8x8 digits (its test split: ``test_fraction`` of the images)."""
    return load_data({"dataset": "digits", "val_fraction": val_fraction, "test_fraction": test_fraction},
                     seed).to_bundle()


def mnist1d(*, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0):
    """mnist1d's 1-D signals (generated by its package; its test split: the package's 1,000 test signals)."""
    return load_data({"dataset": "mnist1d", "val_fraction": val_fraction, "test_fraction": test_fraction},
                     seed).to_bundle()


def cifar10(*, root: str | None = None, download: bool = False, val_fraction: float = 0.2,
            test_fraction: float = 0.0, seed: int = 0):
    """CIFAR-10 in torchvision's on-disk format under ``root`` (its test split: ``test_batch`` when present)."""
    return load_data({"dataset": "cifar10", "root": root, "download": download, "val_fraction": val_fraction,
                      "test_fraction": test_fraction}, seed).to_bundle()


def cifar100(*, root: str | None = None, download: bool = False, val_fraction: float = 0.2,
             test_fraction: float = 0.0, seed: int = 0):
    """CIFAR-100 in torchvision's on-disk format under ``root`` (its test split: ``test`` when present)."""
    return load_data({"dataset": "cifar100", "root": root, "download": download, "val_fraction": val_fraction,
                      "test_fraction": test_fraction}, seed).to_bundle()


def imagefolder(*, root: str | None = None, image_size: int | None = None, val_fraction: float = 0.2,
                test_fraction: float = 0.0, seed: int = 0):
    """One sub-folder of images per class under ``root``, resized to ``image_size`` (its test split:
    ``root/test/CLASS/`` when there is a ``test`` directory)."""
    return load_data({"dataset": "imagefolder", "root": root, "image_size": image_size,
                      "val_fraction": val_fraction, "test_fraction": test_fraction}, seed).to_bundle()


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
            ``val_fraction``, ``test_fraction``, ``image_size``; ``loader_workers`` is the
            loop's business).
        seed: seed of the test and train/validation splits.

    Raises:
        DataError: the data is missing, empty, in the wrong format, corrupt, has a
            single class, or is too small to split.
    """
    data_view = view(("data",), data_cfg)
    dataset = data_view.dataset
    val_fraction = float(data_view.val_fraction)
    if not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction must be between 0 and 1 (got {val_fraction}); set e.g. 0.2")
    # Absent (a caller of an older version): no test split, the split it always had.
    test_fraction = float(data_cfg.get("test_fraction") or 0.0)
    if not 0 <= test_fraction < 1:
        raise DataError(f"data.test_fraction must be at least 0 and below 1 (got {test_fraction}); set e.g. 0.2, "
                        f"or 0 for no test split")
    image_size = data_cfg.get("image_size") or 224
    root = data_cfg.get("root")
    from raytune_opt.registry import DATASETS

    entry = DATASETS.get(dataset)
    if entry is None or "keys" not in entry.meta:
        raise DataError(f"data.dataset {dataset!r} is not a built-in data set; use one of "
                        f"{', '.join(n for n in DATASETS if 'keys' in DATASETS[n].meta)}")
    if entry.meta["needs_root"]:
        if not root:
            raise DataError(f"data.root is not set but data.dataset is {dataset!r}; set data.root to the "
                            f"directory that holds the data")
        root = str(Path(root).expanduser().resolve())
    key = (dataset, root, image_size if dataset == "imagefolder" else None, val_fraction, test_fraction, int(seed))
    data = _MEMO.get(key)
    if data is None:
        x, y, class_names, folder, own_test = _decoded(dataset, root, image_size, bool(data_view.download))
        data = _split_and_normalize(x, y, class_names, val_fraction, int(seed), where=root or dataset, cache=folder,
                                    test_fraction=test_fraction, own_test=own_test)
        _MEMO.clear()  # one data set per process (see the module docstring)
        _MEMO[key] = data
    return data


# --- decoding into the node cache ----------------------------------------------------------

def _decoded(dataset: str, root: str | None, image_size: int, download: bool):
    """uint8 NCHW images (memory-mapped), int64 labels, class names, the cache folder they
    are in, and the data set's own test set ((x, y), or None), decoded at most once per node."""
    if dataset == "digits":
        return _cached("digits", "", [], _decode_digits)
    if dataset == "mnist1d":
        from importlib.metadata import version

        # The package's version is in the key: another version may generate other signals.
        return _cached(f"mnist1d-{version('mnist1d')}", "", [], _generate_mnist1d)
    if dataset in ("cifar10", "cifar100"):
        folder, files = _cifar_files(dataset, root, download)
        return _cached(dataset, root, files, lambda: _decode_cifar(dataset, folder))
    if dataset == "imagefolder":
        files = _imagefolder_files(root)
        return _cached(f"imagefolder-{image_size}", root, files,
                       lambda: _decode_imagefolder(root, files, image_size))
    raise DataError(f"data.dataset {dataset!r} is not known; use one of digits, mnist1d, cifar10, cifar100, "
                    f"imagefolder")


def _cached(kind: str, root: str, files: list[Path], decode):
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    digest = hashlib.sha256(json.dumps([_CACHE_FORMAT, kind, root, stamp]).encode()).hexdigest()[:16]
    folder = cache_root() / f"{kind}-{digest}"
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        with progress.step(f"data: decoding {kind} into {folder} (once per node)"):
            x, y, class_names, *test = decode()
        # uint8 images (N, C, H, W) or float32 signals (N, C, L); a test set of its own alike.
        assert x.dtype in (np.uint8, np.float32) and x.ndim in (3, 4) and len(x) == len(y), (x.dtype, x.shape, y.shape)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"x": x, "y": y.astype(np.int64)}
        if test:
            assert test[0].dtype == x.dtype and test[0].shape[1:] == x.shape[1:] and len(test[0]) == len(test[1])
            arrays.update(x_test=test[0], y_test=test[1].astype(np.int64))
        for name, array in arrays.items():
            with _atomic.open_atomic(folder / f"{name}.npy") as f:
                np.save(f, np.ascontiguousarray(array))
        # meta.json is written last: its presence means the arrays beside it are complete.
        _atomic.write_bytes(meta_path, json.dumps({"class_names": list(class_names), "source": root, "kind": kind,
                                                   "own_test": bool(test)}).encode())
    meta = json.loads(meta_path.read_text())
    x = np.load(folder / "x.npy", mmap_mode="r")
    y = np.load(folder / "y.npy")
    own_test = None
    if meta.get("own_test"):
        own_test = (np.load(folder / "x_test.npy", mmap_mode="r"), np.load(folder / "y_test.npy"))
    return x, y, tuple(meta["class_names"]), folder, own_test


def _decode_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16, so uint8 holds them exactly.
    x = bunch.images.astype(np.uint8)[:, None, :, :]
    return x, bunch.target.astype(np.int64), tuple(str(n) for n in bunch.target_names)


def _generate_mnist1d():
    """mnist1d's 4,000 training signals (40 points, 10 classes) as (N, 1, 40) float32.

    Generated procedurally from the templates the package ships, by ``make_dataset`` with
    the package's default arguments, seed 42 included: the data set is then the standard
    MNIST-1D every published figure uses, the same for every spec seed (the spec's seed
    splits it and initialises the models, as for digits), so trials with different seeds
    compare on one task and a node caches one copy. The package's download path is never
    used. Its 1,000 test signals are the test split; validation is the seeded split of the
    training signals, as for every data set.
    """
    import random

    from raytune_opt import _imports

    mnist1d = _imports.require("mnist1d.data", "data.dataset mnist1d")
    # make_dataset seeds Python's and NumPy's global generators itself; the caller's
    # streams must not depend on whether this node had the data cached already.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = mnist1d.make_dataset(mnist1d.get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.asarray(data["x"], dtype=np.float32)[:, None, :]
    y = np.asarray(data["y"], dtype=np.int64)
    x_test = np.asarray(data["x_test"], dtype=np.float32)[:, None, :]
    y_test = np.asarray(data["y_test"], dtype=np.int64)
    return x, y, tuple(str(i) for i in range(10)), x_test, y_test


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
    # The test batch, when there, is the test split; without it one is split off the training batches.
    names += [name for name, _md5 in cls.test_list if (folder / name).is_file()]
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

    def read(names):
        xs, ys = [], []
        for name in names:
            path = folder / name
            batch = _unpickle(path, dataset)
            data, labels = batch.get(b"data"), batch.get(label_key)
            if not isinstance(data, np.ndarray) or labels is None or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                    or len(labels) != len(data):
                raise DataError(f"{path}: not a {dataset} batch (needs {label_key!r} and uint8 N x 3072 b'data'); "
                                f"the file is corrupt or from another data set, copy the {dataset} data again")
            xs.append(data.astype(np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(labels, dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    x, y = read([name for name, _md5 in cls.train_list])
    test_names = [name for name, _md5 in cls.test_list if (folder / name).is_file()]
    test = read(test_names) if test_names else ()
    meta_path = folder / cls.meta["filename"]
    meta = _unpickle(meta_path, dataset)
    names = meta.get(cls.meta["key"].encode())
    if names is None:
        raise DataError(f"{meta_path}: has no {cls.meta['key']!r}; the file is corrupt, copy the {dataset} data again")
    return (x, y, tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names), *test)


def _imagefolder_test_dir(root: str | Path) -> Path | None:
    """``root/test`` when it holds class sub-folders: the ImageFolder's own test split (then not a class)."""
    test = Path(root) / "test"
    if not test.is_dir():
        return None
    return test if any(d.is_dir() and not d.name.startswith(".") for d in test.iterdir()) else None


def _imagefolder_files(root: str) -> list[Path]:
    path = _check_root(root, "directory with one sub-folder of images per class")
    test = _imagefolder_test_dir(path)
    classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".") and d != test)
    files = [f for d in classes for f in sorted(d.rglob("*")) if f.suffix.lower() in _IMAGE_EXTENSIONS]
    if not files:
        raise DataError(f"{root}: no images in class sub-folders (looked for {', '.join(_IMAGE_EXTENSIONS)}); "
                        f"put each class's images in data.root/CLASS_NAME/")
    if test is not None:
        names = {d.name for d in classes}
        foreign = sorted(d.name for d in test.iterdir() if d.is_dir() and not d.name.startswith(".")
                         and d.name not in names)
        if foreign:
            raise DataError(f"{test}/{foreign[0]}: a test class with no training images (classes: "
                            f"{', '.join(sorted(names))}); name the test sub-folders after data.root's classes")
        files += sorted(f for f in test.rglob("*") if f.suffix.lower() in _IMAGE_EXTENSIONS)
    return files


def _decode_imagefolder(root: str, files: list[Path], image_size: int):
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    from torchvision.transforms import v2

    test = _imagefolder_test_dir(root)
    try:  # as torchvision's ImageFolder(root) finds its classes and samples, less test/
        classes, class_to_idx = find_classes(root)
        if test is not None:
            classes = [c for c in classes if c != test.name]
            class_to_idx = {c: i for i, c in enumerate(classes)}
        samples = make_dataset(root, class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        test_samples = make_dataset(str(test), class_to_idx, IMG_EXTENSIONS, allow_empty=True) if test else []
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{root}: {exc}; put each class's images in data.root/CLASS_NAME/") from None
    resize = v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True)])

    def decode(samples, what):
        x = np.empty((len(samples), 3, image_size, image_size), dtype=np.uint8)
        y = np.empty(len(samples), dtype=np.int64)
        for i, (file, label) in enumerate(progress.items(samples, len(samples), what)):
            try:
                with Image.open(file) as img:
                    x[i] = resize(img.convert("RGB")).numpy()
            except Exception as exc:  # PIL raises many types for truncated/foreign files
                raise DataError(f"{file}: cannot be decoded as an image ({type(exc).__name__}: {exc}); "
                                f"replace or delete the file") from None
            y[i] = label
        return x, y

    x, y = decode(samples, "decoding images")
    own_test = decode(test_samples, "decoding test images") if test_samples else ()
    return (x, y, tuple(classes), *own_test)


# --- split and normalize -------------------------------------------------------------------

def _split_and_normalize(x: np.ndarray, y: np.ndarray, class_names: tuple, val_fraction: float, seed: int,
                         where: str, cache: Path | None = None, test_fraction: float = 0.0,
                         own_test: tuple | None = None) -> Data:
    """Split off the test set (``test_fraction`` of the samples, unless the data set has its
    own test set ``own_test``; none when ``test_fraction`` is 0), then the validation set
    (``val_fraction`` of the rest); normalize all three with the training split's statistics."""
    present = np.unique(y)
    if len(present) < 2:
        raise DataError(f"{where}: only one class ({class_names[int(present[0])] if len(present) else 'none'}) "
                        f"was found; a classifier needs at least two, add another class")
    n_test = int(round(len(y) * test_fraction)) if test_fraction > 0 and own_test is None else 0
    if test_fraction > 0 and own_test is None and (n_test < 1 or len(y) - n_test < 2):
        raise DataError(f"{where}: {len(y)} samples cannot be split with data.test_fraction {test_fraction}; "
                        f"add data or change data.test_fraction (0: no test split)")
    n_val = int(round((len(y) - n_test) * val_fraction))
    if n_val < 1 or len(y) - n_test - n_val < 1:
        raise DataError(f"{where}: {len(y) - n_test} samples cannot be split with data.val_fraction {val_fraction}; "
                        f"add data or change data.val_fraction")
    train_idx, val_idx, test_idx = (_cached_split(cache, y, n_test, n_val, seed) if cache is not None
                                    else _three_way(y, n_test, n_val, seed))
    # Sorted indices read the memory map sequentially; the loader shuffles anyway.
    train_idx.sort()
    val_idx.sort()
    test_idx.sort()
    x_train = torch.from_numpy(np.asarray(x[train_idx], dtype=np.float32))
    x_val = torch.from_numpy(np.asarray(x[val_idx], dtype=np.float32))
    x_test = y_test = None
    if n_test:
        x_test, y_test = np.asarray(x[test_idx], dtype=np.float32), y[test_idx]
    elif own_test is not None and test_fraction > 0:
        # A copy: the memory-mapped arrays are read-only, and normalizing writes in place.
        x_test, y_test = np.array(own_test[0], dtype=np.float32), np.asarray(own_test[1])
    dims = (0, *range(2, x_train.dim()))  # every axis but the channels
    mean = x_train.mean(dim=dims)
    std = x_train.std(dim=dims).clamp_min(1e-6)  # a constant channel must not divide by zero
    shape = (1, -1) + (1,) * (x_train.dim() - 2)
    x_train.sub_(mean.view(shape)).div_(std.view(shape))
    x_val.sub_(mean.view(shape)).div_(std.view(shape))
    if x_test is not None:
        x_test = torch.from_numpy(x_test).sub_(mean.view(shape)).div_(std.view(shape))
        y_test = torch.from_numpy(y_test.astype(np.int64))
    return Data(
        x_train=x_train, y_train=torch.from_numpy(y[train_idx].astype(np.int64)),
        x_val=x_val, y_val=torch.from_numpy(y[val_idx].astype(np.int64)),
        num_classes=len(class_names), in_channels=x.shape[1], image_size=x.shape[2],
        class_names=tuple(class_names), mean=tuple(mean.tolist()), std=tuple(std.tolist()),
        x_test=x_test, y_test=y_test,
    )


def _cached_split(folder: Path, y: np.ndarray, n_test: int, n_val: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split's indices, computed once per node beside the decoded arrays.

    A Train worker that finds them there skips importing scikit-learn (~1.8 s of CPU here, on
    every rank of every trial: see benchmarks/ddp_startup.py). Keyed by the sizes and the
    seed; without a test split the file (and the split) is the one of earlier versions.
    """
    path = folder / (f"split-{n_val}-{seed}.npz" if not n_test else f"split-t{n_test}-{n_val}-{seed}.npz")
    try:
        with np.load(path) as f:
            test = f["test"].copy() if n_test else np.zeros(0, dtype=np.int64)
            return f["train"].copy(), f["val"].copy(), test
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # not there yet, or damaged: again
        pass
    train_idx, val_idx, test_idx = _three_way(y, n_test, n_val, seed)
    try:
        with _atomic.open_atomic(path) as f:
            np.savez(f, train=train_idx, val=val_idx, **({"test": test_idx} if n_test else {}))
    except OSError:  # a read-only cache still trains
        pass
    return train_idx, val_idx, test_idx


def _three_way(y: np.ndarray, n_test: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test indices: the test set is split off first, then the
    validation set from the rest (both seeded, stratified when the classes allow)."""
    if not n_test:
        train_idx, val_idx = _split_indices(y, n_val, seed)
        return train_idx, val_idx, np.zeros(0, dtype=np.int64)
    rest, test_idx = _split_indices(y, n_test, seed)
    train_pos, val_pos = _split_indices(y[rest], n_val, seed)
    return rest[train_pos], rest[val_pos], test_idx


def _split_indices(y: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    counts = counts[counts > 0]
    stratify = y if counts.min() >= 2 and len(counts) <= n_val <= len(y) - len(counts) else None
    indices = np.arange(len(y))
    train_idx, val_idx = train_test_split(indices, test_size=n_val, random_state=seed, stratify=stratify)
    return np.asarray(train_idx), np.asarray(val_idx)
