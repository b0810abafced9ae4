"""The built-in ``csv`` data set: one table (CSV or Parquet), one row per sample.

``data.target`` is the column to predict: text, booleans or integers classify (the classes
are its sorted distinct values), floats regress (``data.task`` decides otherwise). The
features are ``data.features`` or every other column: text columns are one-hot encoded
(the categories of the whole table, so a category seen only in validation still has its
column), numeric ones standardised with the training split's mean and standard deviation.
The split is seeded (stratified by class for a classification). Missing values are refused,
not imputed: which to fill, and how, is the user's choice.

The test rows are split off first: the rows ``data.test_column`` marks (true, 1, "test"...), or
else a seeded ``data.test_fraction`` of the rows (0: none); validation is ``data.val_fraction``
of the rest. The test column is never a feature.
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
        task: str | None = None, val_fraction: float = 0.2, test_fraction: float = 0.0, test_column: str | None = None,
        seed: int = 0) -> DataBundle:
    """The table at ``path`` as a :class:`DataBundle` of float32 feature rows.

    ``test_column`` (a column of booleans, 0/1, or text where "test" marks a test row) picks
    the test rows; else ``test_fraction`` of the rows are drawn (seeded; 0: no test split).

    Raises:
        DataError: a missing or unreadable file, a target, feature or test column that is not
            a column, a column that cannot be encoded, missing values, a table too small to split.
    """
    table = _read(path)
    columns = list(table.columns)
    if target not in columns:
        raise DataError(f"data.target {target!r} is not a column of {path} (columns: {_names(columns)}); set "
                        f"data.target to one of them")
    marked = None
    if test_column is not None:
        marked = _test_rows(table, test_column, target, features, path)
    if features is None:
        features = [c for c in columns if c not in (target, test_column)]
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
    if marked is None:
        n_test = int(round(n * float(test_fraction))) if test_fraction else 0
        if test_fraction and (n_test < 1 or n - n_test < 3):
            raise DataError(f"{path}: {n} rows cannot be split with data.test_fraction {test_fraction}; add rows or "
                            f"change data.test_fraction (0: no test split)")
    else:
        n_test = int(marked.sum())
    n_val = int(round((n - n_test) * float(val_fraction)))
    if n_val < 1 or n - n_test - n_val < 2:
        raise DataError(f"{path}: {n - n_test} rows cannot be split with data.val_fraction {val_fraction}; add rows "
                        f"or change data.val_fraction")
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
    labels = y.numpy() if task == "classification" else None
    if marked is not None:
        test_idx, rest = np.flatnonzero(marked), np.flatnonzero(~marked)
    elif n_test:
        rest, test_idx = _split(labels, n, n_test, seed)
    else:
        rest, test_idx = np.arange(n), np.zeros(0, dtype=np.int64)
    train_pos, val_pos = _split(None if labels is None else labels[rest], len(rest), n_val, seed)
    train_idx, val_idx = rest[train_pos], rest[val_pos]
    x, encoded = _encode(table, features, train_idx, path)
    bundle = DataBundle(train=TensorPairs(x[train_idx], y[train_idx]), val=TensorPairs(x[val_idx], y[val_idx]),
                        test=TensorPairs(x[test_idx], y[test_idx]) if len(test_idx) else None,
                        num_classes=len(names) if task == "classification" else 1, task=task,
                        input_example=x[train_idx[:1]], class_names=names,
                        info={"layout": "NF", "features": encoded})
    return bundle


_TEST_MARKS = {True: True, False: False, 1: True, 0: False, "test": True, "train": False, "true": True,
               "false": False, "1": True, "0": False, "yes": True, "no": False}


def _test_rows(table, column: str, target: str, features: list | None, path) -> np.ndarray:
    """The rows ``column`` marks as test rows, as a boolean mask."""
    if column not in table.columns:
        raise DataError(f"data.test_column {column!r} is not a column of {path} (columns: "
                        f"{_names(list(table.columns))}); set it to the column that marks the test rows")
    if column == target or (features is not None and column in features):
        raise DataError(f"data.test_column {column!r} is also the target or a feature; mark the test rows in a "
                        f"column of its own")
    values = table[column].tolist()
    marks = [_TEST_MARKS.get(v.strip().lower() if isinstance(v, str) else v) for v in values]
    bad = [i for i, m in enumerate(marks) if m is None]
    if bad:
        raise DataError(f"{path}: data.test_column {column!r} holds {values[bad[0]]!r} at line {bad[0] + 2}; mark a "
                        f"test row with true, 1 or test, any other row with false, 0 or train")
    mask = np.asarray(marks, dtype=bool)
    if not mask.any():
        raise DataError(f"{path}: data.test_column {column!r} marks no row as a test row; mark some with true, 1 or "
                        f"test, or leave data.test_column out")
    return mask


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
