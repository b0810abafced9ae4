"""The csv data set and regression: encoding, the split, every refusal, and the loop's
regression metrics against scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raytune_opt.recipe.bundle import load_bundle
from raytune_opt.recipe.errors import DataError, RecipeConfigError
from raytune_opt.recipe.loop import REGRESSION_KEYS, regression_metrics, train
from raytune_opt.recipe.session import LocalSession

EXAMPLES = Path(__file__).resolve().parents[2] / "search_spaces" / "examples"


def _table(tmp_path, text: str, name: str = "t.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_text_columns_are_one_hot_and_numbers_standardised_on_the_training_rows(tmp_path):
    rows = "".join(f"{i},{'red' if i % 3 else 'blue'},{i * 0.5 + 1}\n" for i in range(40))
    path = _table(tmp_path, "size,colour,y\n" + rows)
    b = load_bundle({"dataset": "csv", "path": path, "target": "y", "val_fraction": 0.25}, 0)
    assert b.task == "regression" and b.num_classes == 1 and b.class_names == ()
    assert b.info["features"] == ["size", "colour=blue", "colour=red"] and b.input_shape == (3,)
    x_train, y_train = b.train.tensors
    assert len(b.train) == 30 and len(b.val) == 10 and y_train.dtype == torch.float32
    assert x_train[:, 0].mean().abs() < 1e-5 and (x_train[:, 0].std(unbiased=False) - 1).abs() < 1e-4
    assert set(x_train[:, 1:].sum(1).tolist()) == {1.0}  # one category per row
    # A text target classifies, stratified by class; data.task may say otherwise for integers.
    path = _table(tmp_path, "a,label\n" + "".join(f"{i},{'cat' if i % 2 else 'dog'}\n" for i in range(20)), "c.csv")
    b = load_bundle({"dataset": "csv", "path": path, "target": "label"}, 0)
    assert (b.task, b.num_classes, b.class_names) == ("classification", 2, ("cat", "dog"))
    assert sorted(b.val.tensors[1].tolist()) == [0, 0, 1, 1]
    path = _table(tmp_path, "a,n\n" + "".join(f"{i},{i % 3}\n" for i in range(20)), "i.csv")
    assert load_bundle({"dataset": "csv", "path": path, "target": "n"}, 0).task == "classification"
    assert load_bundle({"dataset": "csv", "path": path, "target": "n", "task": "regression"}, 0).task == "regression"


def test_parquet_reads_as_csv_does(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(10.0), "b": ["x", "y"] * 5, "y": np.arange(10) % 2})
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    a, b = (load_bundle({"dataset": "csv", "path": str(tmp_path / f"t.{ext}"), "target": "y"}, 0)
            for ext in ("parquet", "csv"))
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and a.class_names == b.class_names


@pytest.mark.parametrize("text, cfg, message", [
    (None, {}, "data.path {path}: no such file"),
    ("a,b\n1,2\n", {"target": "y"}, "data.target 'y' is not a column of {path} (columns: a, b)"),
    ("a,b,y\n1,2,3\n", {"target": "y", "features": ["a", "c"]}, "data.features 'c' is not a column"),
    ("a,y\n1,2\n,3\n4,5\n", {"target": "y"}, "column 'a' has 1 missing value(s) (first at line(s) 3); fill or drop"),
    ("id,y\n" + "".join(f"u{i},{i % 2}\n" for i in range(150)), {"target": "y"},
     "column 'id' has 150 distinct text values"),
    ("a,y\n1,x\n2,x\n3,x\n", {"target": "y"}, "the target column 'y' has one value ('x')"),
    ("a,y\n1,x\n2,z\n", {"target": "y", "task": "regression"}, "which cannot be regressed"),
    ("a,y\n1,1.5\n", {"target": "y"}, "1 rows cannot be split"),
    ("a,y\n1,0\n2,1\n3,0\n", {"target": "y", "features": ["y"]}, "data.features lists the target 'y'"),
])
def test_every_bad_table_is_one_line_naming_the_column_and_the_fix(tmp_path, text, cfg, message):
    path = _table(tmp_path, text) if text is not None else str(tmp_path / "missing.csv")
    with pytest.raises(DataError) as info:
        load_bundle({"dataset": "csv", "path": path, "target": "y", **cfg}, 0)
    assert message.format(path=path) in str(info.value) and "\n" not in str(info.value)


def test_regression_metrics_match_scikit_learn():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(0)
    y, pred = rng.normal(5, 2, 200), rng.normal(5, 2, 200)
    err = pred - y
    sums = torch.tensor([200.0, (err ** 2).sum(), np.abs(err).sum(), y.sum(), (y ** 2).sum()], dtype=torch.float64)
    ours = regression_metrics(sums)
    assert ours["val_rmse"] == pytest.approx(mean_squared_error(y, pred) ** 0.5)
    assert ours["val_mae"] == pytest.approx(mean_absolute_error(y, pred))
    assert ours["val_r2"] == pytest.approx(r2_score(y, pred)) and ours["support"] == 200


def test_the_diabetes_example_trains_a_regression(tmp_path):
    from raytune_opt.spec import load_spec

    spec = load_spec(EXAMPLES / "diabetes_regression.yaml")  # 40 epochs, about a second
    session = LocalSession(str(tmp_path))
    final = train(spec.data, session)
    reports = session.reports
    assert set(reports[0]) == set(REGRESSION_KEYS) | {"best_val_rmse", "stop_reason"}
    # 0.28 on the 282 rows left once the test split (20%) is held out (0.3+ on all 353 before)
    assert reports[-1]["val_rmse"] < reports[0]["val_rmse"] and final["val_r2"] > 0.2, final
    assert final["val_loss"] == pytest.approx(final["val_rmse"] ** 2)  # val_loss is plain MSE
    # The same data with a classification loss or metric is a clear trial error.
    for override in ({"train": {**spec.data["train"], "loss": {"name": "cross_entropy"}}},
                     {"search": {"metric": "val_accuracy", "mode": "max"}}):
        with pytest.raises(RecipeConfigError, match="the data set holds a regression task"):
            train({**spec.data, **override}, LocalSession(str(tmp_path / "x")))


def test_run_stops_before_ray_on_a_bad_table(tmp_path, capsys):
    from raytune_opt.cli import main

    (tmp_path / "t.csv").write_text("a,y\n1,2\n,3\n4,5\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("data: {dataset: csv, path: t.csv, target: y, task: regression}\nmodel: {name: tabular_mlp}\n"
                    "train: {loss: {name: mse}}\nsearch: {metric: val_rmse, mode: min}\npromote: {enabled: false}\n")
    assert main(["run", str(spec), "--storage", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "column 'a' has 1 missing value(s)" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_test_rows_come_from_test_fraction_or_a_marking_column_never_a_feature(tmp_path):
    rows = "".join(f"{i},{i % 2},{'test' if i >= 32 else 'train'}\n" for i in range(40))
    path = _table(tmp_path, "a,label,part\n" + rows)
    marked = load_bundle({"dataset": "csv", "path": path, "target": "label", "test_column": "part",
                          "val_fraction": 0.25, "test_fraction": 0.2}, 0)
    assert len(marked.test) == 8 and len(marked.val) == 8 and len(marked.train) == 24
    assert marked.info["features"] == ["a"]  # the marking column is not a feature
    assert sorted(marked.test.tensors[0][:, 0].tolist()) == sorted(marked.test.tensors[0][:, 0].tolist())
    drawn = load_bundle({"dataset": "csv", "path": path, "target": "label", "features": ["a"],
                         "val_fraction": 0.25, "test_fraction": 0.2}, 0)
    again = load_bundle({"dataset": "csv", "path": path, "target": "label", "features": ["a"],
                         "val_fraction": 0.25, "test_fraction": 0.2}, 0)
    assert len(drawn.test) == 8 and torch.equal(drawn.test.tensors[1], again.test.tensors[1])  # seeded, stable
    assert sorted(drawn.test.tensors[1].tolist()) == [0] * 4 + [1] * 4  # stratified
    off = load_bundle({"dataset": "csv", "path": path, "target": "label", "features": ["a"], "val_fraction": 0.25,
                       "test_fraction": 0.0}, 0)
    assert off.test is None and len(off.val) == 10
    for column, fragment in (("nope", "data.test_column 'nope' is not a column"),
                             ("label", "data.test_column 'label' is also the target")):
        with pytest.raises(DataError, match=fragment):
            load_bundle({"dataset": "csv", "path": path, "target": "label", "test_column": column}, 0)
    bad = _table(tmp_path, "a,label,part\n" + "".join(f"{i},{i % 2},maybe\n" for i in range(10)), "bad.csv")
    with pytest.raises(DataError, match="holds 'maybe' at line 2"):
        load_bundle({"dataset": "csv", "path": bad, "target": "label", "test_column": "part"}, 0)
