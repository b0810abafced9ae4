"""`raytune-opt run`: refusals before Ray starts (fast, no cluster), and the default sweep as a
user sees it (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raytune_opt.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_a_spec_whose_data_is_missing_says_so_before_ray_starts(tmp_path, capsys):
    missing = tmp_path / "no_such_cifar"
    rc = main(["run", str(ROOT / "search_spaces" / "cifar10_resnet18.yaml"), f"data.root={missing}",
               "--dry-run", "--storage", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and str(missing) in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()  # nothing written


def test_run_refuses_to_overwrite_an_existing_sweep(tmp_path, capsys):
    exp = tmp_path / "digits_cnn"
    exp.mkdir()
    (exp / "results.csv").write_text("trial_id\nkeep-me\n")
    rc = main(["run", str(ROOT / "search_spaces" / "digits_cnn.yaml"), "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "already has results" in err and "name=" in err
    assert (exp / "results.csv").read_text() == "trial_id\nkeep-me\n"


def test_local_run_checks_that_a_trial_fits_this_machine(tmp_path, capsys):
    rc = main(["run", str(ROOT / "search_spaces" / "digits_cnn.yaml"), "resources.num_workers=4096",
               "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "resources.cpus_per_worker" in err and "this machine has" in err


def test_a_deepspeed_run_without_the_extra_is_refused_at_validation(tmp_path, capsys, monkeypatch):
    from raytune_opt import _imports

    real = _imports.is_available
    monkeypatch.setattr(_imports, "is_available", lambda module: module != "deepspeed" and real(module))
    rc = main(["run", str(ROOT / "search_spaces" / "digits_cnn.yaml"), "train.strategy=deepspeed",
               "--storage", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pip install 'raytune-opt[deepspeed]'" in err[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_unwritable_storage_is_a_clear_error(tmp_path, capsys):
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    for storage in (a_file, "/proc/raytune_opt_cannot_write_here"):
        rc = main(["run", str(ROOT / "search_spaces" / "digits_cnn.yaml"), "--storage", str(storage)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "cannot write the experiment" in err[0], err
    assert a_file.read_text() == "x"


@pytest.mark.slow
def test_the_default_sweep_prints_a_short_80_column_log_and_reports_everything(local_ray, monkeypatch, capfd):
    """The README's first command, in-process on the session's Ray: what a user reads and gets."""
    import shutil
    import tempfile

    from tests._chromium import BROWSER
    from tests.test_report import SECTIONS, assert_page_draws

    monkeypatch.chdir(ROOT)
    storage = Path(tempfile.mkdtemp(prefix="rto", dir="/tmp"))  # as short as a user's results/ path
    try:
        rc = main(["run", "search_spaces/digits_cnn.yaml", "--storage", str(storage)])
        out = capfd.readouterr().out
        lines = out.splitlines()
        assert rc == 0, out
        assert "\x1b" not in out and "\r" not in out  # no terminal here: plain lines
        assert len(lines) <= 61 and max(len(line) for line in lines) <= 80, out  # 61: the test line
        assert lines[0] == "raytune-opt sweep: search_spaces/digits_cnn.yaml (spec sha256 " + lines[0][-13:]
        assert lines[1].startswith("sweep digits_cnn: 16 trials, optuna (tpe), scheduler asha")
        assert sum(line.startswith("trial ") for line in lines) == 16  # one line per finished trial
        assert any(line.startswith("  best so far ") for line in lines)
        assert any(line.startswith("best: trial ") for line in lines)
        said = " ".join(out.split())  # lines wrap at 80 columns
        assert "test: test_accuracy=" in said and "on 359 samples no trial saw" in said, out
        assert any(line.startswith("int8") and " ok " in line for line in lines), out  # the promotion table
        assert any("val acc" in line and "test acc" in line for line in lines), out
        exp = storage / "digits_cnn"
        # The best trial, and every promoted artifact, measured on the test split...
        best = json.loads((exp / "best.json").read_text())
        assert best["test"]["trial_id"] == best["trial_id"] and best["test"]["samples"] == 359
        assert set(best["test"]["metrics"]) == {"test_accuracy", "test_precision", "test_recall", "test_f1",
                                                "test_loss"}
        arts = json.loads((exp / "promotion" / "manifest.json").read_text())["artifacts"]
        assert all(0 < a["test_accuracy"] <= 1 for a in arts if a["name"] in ("pytorch", "onnx", "int8")), arts
        assert [a["test_accuracy"] for a in arts if a["name"] == "pytorch"] == [
            pytest.approx(best["test"]["metrics"]["test_accuracy"])]
        # ... which no trial saw: nothing a trial reported names it.
        assert not [c for c in (exp / "results.csv").read_text().splitlines()[0].split(",") if "test_" in c]
        for history in (exp / "history").glob("*.csv"):
            assert "test_" not in history.read_text().splitlines()[0], history
        page = storage / "digits_cnn" / "report.html"
        assert f"report: {page}" in lines
        text = page.read_text()
        assert "Validation and test" in text
        for sid in SECTIONS:
            assert f'id="{sid}"' in text, sid
        if BROWSER:
            assert_page_draws(page)  # every section drawn, promotion included
    finally:
        shutil.rmtree(storage, ignore_errors=True)


@pytest.mark.slow
def test_the_user_data_example_runs_to_promotion_and_promotes_again_from_anywhere(local_ray, tmp_path, monkeypatch,
                                                                                    capfd):
    """search_spaces/examples/text_user_data.yaml: the user's data and model (token ids, int64) are
    found next to the spec by the driver and by every trial, and promotion exports and quantizes
    them; a later `promote` from another directory finds them through the experiment's record."""
    import shutil
    import sys

    # The user's project, written by the test into a directory of its own (nothing on sys.path).
    project = tmp_path / "project"
    shutil.copytree(ROOT / "search_spaces" / "examples" / "user_text", project / "user_text")
    shutil.copy(ROOT / "search_spaces" / "examples" / "text_user_data.yaml", project)
    monkeypatch.chdir(tmp_path)  # not the spec's directory: found through it all the same
    spec = project / "text_user_data.yaml"
    rc = main(["run", str(spec), "train.epochs=2", "search.num_samples=2", "--storage", str(tmp_path / "out")])
    out = capfd.readouterr().out
    assert rc == 0, out
    exp = tmp_path / "out" / "text_user_data"
    manifest = json.loads((exp / "promotion" / "manifest.json").read_text())
    assert manifest["input"]["dtype"] == "int64" and manifest["input"]["shape"] == ["batch", 24]
    assert manifest["input"]["class_names"] == ["sports", "politics", "science", "music"]
    status = {a["name"]: a["status"] for a in manifest["artifacts"]}
    assert status["onnx"] == "ok" and status["int8"] == "ok", status
    # The example's own test set (DataBundle(test=...), 20% of 2,000 documents) measured the best trial.
    assert json.loads((exp / "best.json").read_text())["test"]["samples"] == 400
    assert "on 400 samples no trial saw" in " ".join(out.split())
    for name in [m for m in sys.modules if m == "user_text" or m.startswith("user_text.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.chdir("/")
    # By hand, the user's own model is promoted only when they say they trust the experiment.
    assert main(["promote", str(exp)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names your own model user_text.models:BagOfEmbeddings" in err[0], err
    assert "user_text" not in sys.modules
    assert main(["promote", str(exp), "--trust-code"]) == 0, capfd.readouterr()


@pytest.mark.slow
def test_the_regression_example_runs_to_promotion(local_ray, tmp_path, capfd):
    """search_spaces/examples/diabetes_regression.yaml end to end: a CSV table, a regression
    metric, and promotion's metric gate (INT8 judged on the relative change of val_rmse)."""
    import json

    spec = ROOT / "search_spaces" / "examples" / "diabetes_regression.yaml"
    rc = main(["run", str(spec), "train.epochs=10", "search.num_samples=2", "--storage", str(tmp_path)])
    out = capfd.readouterr().out
    assert rc == 0, out
    exp = tmp_path / "diabetes_regression"
    best = json.loads((exp / "best.json").read_text())
    manifest = json.loads((exp / "promotion" / "manifest.json").read_text())
    assert manifest["source"]["trial_id"] == best["trial_id"] and manifest["settings"]["gate"]["metric"] == "rmse"
    arts = {a["name"]: a for a in manifest["artifacts"]}
    assert arts["onnx"]["status"] == "ok" and arts["onnx"]["fp32_score"] == pytest.approx(best["value"])
    assert arts["int8"]["status"] in ("ok", "rejected") and arts["int8"]["metric"] == "rmse", arts["int8"]
    assert "rmse" in out  # the printed table names the metric it gates on
    page = (exp / "report.html").read_text()
    board = page[page.index('id="leaderboard"'):page.index('id="history"')]
    assert "best val_rmse" in board and "best val_r2" in board and "best val_accuracy" not in board


@pytest.mark.slow
def test_the_pareto_example_runs_two_objectives_with_a_constraint_to_a_front_and_a_selected_promotion(
        local_ray, tmp_path, capfd):
    """search_spaces/digits_pareto.yaml: val_accuracy against latency_ms by NSGA-II, a parameter
    bound that keeps the big models from training, pareto.csv, and promote.select's rule."""
    import csv
    import json

    from raytune_opt import objectives

    spec = ROOT / "search_spaces" / "digits_pareto.yaml"
    rc = main(["run", str(spec), "train.epochs=2", "search.num_samples=8", "search.constraints={params: {max: 2.0e+4}}",
               "--storage", str(tmp_path)])
    out = capfd.readouterr().out
    assert rc == 0, out
    exp = tmp_path / "digits_pareto"
    with open(exp / "results.csv") as f:
        rows = list(csv.DictReader(f))
    infeasible = [r for r in rows if r["status"] == "infeasible"]
    # The seeded sampler proposes models over 20k parameters (width 64 or 128, or 32 with 3 blocks).
    assert infeasible, [(r["config.model.width"], r["config.model.depth"]) for r in rows]
    for r in infeasible:  # never trained: no epoch, its size measured, the reason said
        assert r["epochs"] == "0" and r["stop_reason"].startswith("infeasible: params") and \
            float(r["best_params"] or r["last_params"]) > 2.0e4, r
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(float(r["best_params"]) <= 2.0e4 and float(r["best_latency_ms"]) > 0 for r in ok)
    with open(exp / "pareto.csv") as f:
        front = list(csv.DictReader(f))
    objs = [("val_accuracy", "max"), ("latency_ms", "min")]
    point = {r["trial_id"]: {m: float(r[f"best_{m}"]) for m, _ in objs} for r in ok}
    ids = [r["trial_id"] for r in front]
    assert ids and set(ids) <= set(point)
    for tid, p in point.items():  # the front is exactly the non-dominated feasible trials
        dominated = any(objectives.dominates(q, p, objs) for t, q in point.items() if t != tid)
        assert (tid in ids) == (not dominated), (tid, p)
    best = json.loads((exp / "best.json").read_text())
    assert best["pareto"] == ids and [o["metric"] for o in best["objectives"]] == ["val_accuracy", "latency_ms"]
    manifest = json.loads((exp / "promotion" / "manifest.json").read_text())
    chosen = manifest["source"]
    assert chosen["rule"]["select"]["where"] == {"latency_ms": {"max": 1.0}}
    assert "val_accuracy" in chosen["rule"]["why"] and "latency_ms max 1" in chosen["rule"]["why"]
    fast = [t for t, p in point.items() if p["latency_ms"] <= 1.0]
    assert chosen["trial_id"] == max(fast, key=lambda t: point[t]["val_accuracy"])
    # The test split measures the promoted point, not the best trial by the first metric (issue 27).
    test = best["test"]
    assert test["trial_id"] == chosen["trial_id"] and test["selected_by"] == "promote.select", test
    assert test["val"]["val_accuracy"] == pytest.approx(point[chosen["trial_id"]]["val_accuracy"], abs=1e-6)
    assert f"samples no trial saw (trial {chosen['trial_id']}, promote.select's)" in " ".join(out.split())
    arts = {a["name"]: a for a in manifest["artifacts"]}  # pruned, then exported and quantized
    assert arts["prune"]["status"] in ("ok", "rejected") and arts["prune"]["params"] < arts["pytorch"]["params"], arts
    assert arts["onnx"]["status"] == "ok" and arts["int8"]["status"] in ("ok", "rejected")
    if arts["prune"]["status"] == "ok":  # the chain converted the pruned model
        assert arts["onnx"]["from_step"] == "prune" and arts["onnx"]["params"] == arts["prune"]["params"]
    page = exp / "report.html"
    section = page.read_text().split('id="pareto"')[1].split("</section>")[0]
    assert f"the {len(ids)} trial(s) no other beats" in section and f"{len(infeasible)} infeasible" in section
    from tests._chromium import BROWSER, page_check

    if BROWSER is not None:
        drawn = page_check(page)["sections"]["pareto"]
        assert drawn["charts"] == drawn["drawn"] == 1 and drawn["none"] == 0, drawn
