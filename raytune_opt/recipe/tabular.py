"""The built-in ``csv`` data set: one table (CSV or Parquet), one row per sample.

``data.target`` is the column to predict: text, booleans or integers classify (the classes
are its sorted distinct values), floats regress (``data.task`` decides otherwise). The
features are ``data.features`` or every other column: text columns are one-hot encoded
(the categories of the whole table, so a category seen only in validation still has its
column), numeric ones standardised with the training split's mean and standard deviation.
The split is seeded (stratified by class for a classification). Missing values are refused,
not imputed: which to fill, and how, is the user's choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raytune_opt.recipe.bundle import DataBundle, TensorPairs
from raytune_opt.recipe.errors import DataError

__all__ = ["csv", "MAX_CATEGORIES"]

# A text column with more distinct values than this is an identifier or free text, not a category.
MAX_CATEGORIES = 100


def csv(*, path: str | None = None, target: str | None = None, features: list | None = None,
        task: str | None = None, val_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """The table at ``path`` as a :class:`DataBundle` of float32 feature rows.

    Raises:
        DataError: a missing or unreadable file, a target or feature that is not a column, a
            column that cannot be encoded, missing values, a table too small to split.
    """
    table = _read(path)
    columns = list(table.columns)
    if target not in columns:
        raise DataError(f"data.target {target!r} is not a column of {path} (columns: {_names(columns)}); set "
                        f"data.target to one of them")
    if features is None:
        features = [c for c in columns if c != target]
    missing = [f for f in features if f not in columns]
    if missing:
        raise DataError(f"data.features {missing[0]!r} is not a column of {path} (columns: {_names(columns)}); "
                        f"fix data.features")
    if target in features:
        raise DataError(f"data.features lists the target {target!r}; remove it from data.features")
    if not features:
        raise DataError(f"{path} has no feature column besides the target {target!r}; add columns or set "
                        f"data.features")
    for col in [target, *features]:
        n = int(table[col].isna().sum())
        if n:
            rows = ", ".join(str(i + 2) for i in np.flatnonzero(table[col].isna().to_numpy())[:3])
            raise DataError(f"{path}: column {col!r} has {n} missing value(s) (first at line(s) {rows}); fill or "
                            f"drop them (raytune-opt does not impute)")
    y_raw = table[target]
    numeric_target = y_raw.dtype.kind in "fiu"
    task = task or ("regression" if y_raw.dtype.kind == "f" else "classification")
    if task == "regression" and not numeric_target:
        raise DataError(f"{path}: the target column {target!r} holds {y_raw.dtype} values, which cannot be "
                        f"regressed; use a numeric column, or data.task: classification")
    n = len(table)
    n_val = int(round(n * float(val_fraction)))
    if n_val < 1 or n - n_val < 2:
        raise DataError(f"{path}: {n} rows cannot be split with data.val_fraction {val_fraction}; add rows or "
                        f"change data.val_fraction")
    if task == "classification":
        classes = sorted(y_raw.unique().tolist(), key=str)
        if len(classes) < 2:
            raise DataError(f"{path}: the target column {target!r} has one value ({classes[0]!r}); a classifier "
                            f"needs at least two")
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[v] for v in y_raw.tolist()], dtype=torch.long)
        names = tuple(str(c) for c in classes)
    else:
        y = torch.tensor(y_raw.to_numpy(dtype=np.float64), dtype=torch.float32)
        names = ()
    train_idx, val_idx = _split(y.numpy() if task == "classification" else None, n, n_val, seed)
    x, encoded = _encode(table, features, train_idx, path)
    bundle = DataBundle(train=TensorPairs(x[train_idx], y[train_idx]), val=TensorPairs(x[val_idx], y[val_idx]),
                        num_classes=len(names) if task == "classification" else 1, task=task,
                        input_example=x[train_idx[:1]], class_names=names,
                        info={"layout": "NF", "features": encoded})
    return bundle


def _read(path: str | None):
    import pandas as pd

    if not path:
        raise DataError("data.path is not set; set it to the CSV or Parquet file")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.path {path}: no such file; check the path (relative paths start from the directory "
                        f"raytune-opt runs in)")
    parquet = p.suffix.lower() in (".parquet", ".pq")
    try:
        table = pd.read_parquet(p) if parquet else pd.read_csv(p)
    except Exception as exc:  # pandas' and pyarrow's many parser errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"data.path {path}: cannot be read as a {'Parquet' if parquet else 'CSV'} table ({first}); "
                        f"check the file") from None
    if table.empty:
        raise DataError(f"data.path {path}: the table has no rows; give it data")
    return table


def _split(y, n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation indices; stratified when every class has two or more rows."""
    rng = np.random.default_rng(seed)
    if y is not None and np.bincount(y).min() >= 2:
        from sklearn.model_selection import train_test_split

        train_idx, val_idx = train_test_split(np.arange(n), test_size=n_val, random_state=seed, stratify=y)
    else:
        order = rng.permutation(n)
        val_idx, train_idx = order[:n_val], order[n_val:]
    return np.sort(train_idx), np.sort(val_idx)


def _encode(table, features: list, train_idx: np.ndarray, path) -> tuple[torch.Tensor, list[str]]:
    """float32 feature matrix: numeric columns standardised on the training rows, text ones one-hot."""
    blocks, names = [], []
    for col in features:
        values = table[col]
        if values.dtype.kind in "fiub":
            v = values.to_numpy(dtype=np.float64)
            mean, std = v[train_idx].mean(), v[train_idx].std()
            blocks.append(((v - mean) / (std if std > 1e-12 else 1.0))[:, None])
            names.append(str(col))
            continue
        if values.dtype.kind not in "OUS" and str(values.dtype) != "category":
            raise DataError(f"{path}: column {col!r} holds {values.dtype} values, which cannot be encoded; convert "
                            f"it to numbers or text, or leave it out of data.features")
        categories = sorted(values.astype(str).unique().tolist())
        if len(categories) > MAX_CATEGORIES:
            raise DataError(f"{path}: column {col!r} has {len(categories)} distinct text values (more than "
                            f"{MAX_CATEGORIES}: an identifier or free text, not a category); leave it out of "
                            f"data.features")
        codes = values.astype(str).map({c: i for i, c in enumerate(categories)}).to_numpy()
        blocks.append(np.eye(len(categories))[codes])
        names += [f"{col}={c}" for c in categories]
    return torch.from_numpy(np.concatenate(blocks, axis=1).astype(np.float32)), names


def _names(columns: list) -> str:
    shown = ", ".join(map(str, columns[:12]))
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > 12 else "")
