"""The report: report.html and optuna.journal.log from finished, running and resumed experiments.

The page is checked in a real headless Chromium (skipped where Debian's chromium is absent):
loaded from file://, no console errors, every chart in every section drew marks. The real
sweeps' reports are checked in tests/test_sweep.py and tests/test_resume.py (their sweeps
write report.html when they end).
"""

from __future__ import annotations

import re
import time

import pytest

from raytune_opt.cli import main
from raytune_opt.report import REPORT, write_report
from raytune_opt.report import data as report_data
from raytune_opt.report.study import JOURNAL, build_study
from tests._chromium import BROWSER, needs_chromium, page_check
from tests._experiments import make_experiment

SECTIONS = ("leaderboard", "history", "curves", "losses", "parallel", "slices", "contour", "importance", "best",
            "promotion")


def assert_page_draws(page, expect_none=()) -> dict:
    """Every chart of every section drew something; only ``expect_none`` sections say 'no data'."""
    check = page_check(page)
    assert check["errors"] == [], check["errors"]
    assert set(check["sections"]) == set(SECTIONS)
    for name, sec in check["sections"].items():
        assert sec["empty"] == 0, (name, sec)
        if name in expect_none:
            assert sec["none"] >= 1, (name, sec)
            continue
        assert sec["none"] == 0, (name, sec)
        assert sec["drawn"] == sec["charts"], (name, sec)
        assert sec["charts"] > 0 or name == "leaderboard", (name, sec)
    assert check["sections"]["leaderboard"]["table_rows"] > 0
    return check


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("rep"), 12)
    return exp, write_report(exp)


def _journal_states(exp) -> list[str]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name=None, storage=JournalStorage(JournalFileBackend(str(exp / JOURNAL))))
    return [t.state.name for t in study.trials]


def test_a_finished_experiment_gets_every_section_and_an_optuna_journal(finished):
    exp, page = finished
    text = page.read_text()
    assert page == exp / REPORT
    for sid in SECTIONS:
        assert f'id="{sid}"' in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing fetched: opens offline
    assert "<script src" not in text and "<link" not in text
    leaderboard = text[text.index('id="leaderboard"'):text.index('id="history"')]
    assert leaderboard.count("<tr class=") == 12
    assert "stopped by asha at epoch" in leaderboard and "st-error" in leaderboard
    states = _journal_states(exp)
    rows = {t.trial_id: t.status for t in report_data.load(exp).trials}
    assert len(states) == 12
    assert states.count("PRUNED") == list(rows.values()).count("stopped") > 0
    assert states.count("COMPLETE") == list(rows.values()).count("ok")
    assert states.count("FAIL") == 2  # the errored and the diverged trial
    assert "confusion matrix" in text and "val_confusion" not in text


def test_conditional_keys_get_a_distribution_only_where_active(finished):
    exp, _ = finished
    loaded = report_data.load(exp)
    study = build_study(loaded)
    for t, ft in zip(loaded.trials, study.trials):
        assert set(ft.distributions) == set(t.config)
        assert ("train.optimizer.momentum" in ft.params) == (t.config["train.optimizer.name"] == "sgd")
        assert ("model.dropout" in ft.params) == (t.config["model.name"] == "mlp")


@needs_chromium
def test_the_page_draws_every_section_in_chromium(finished):
    _, page = finished
    check = assert_page_draws(page)
    assert check["sections"]["slices"]["charts"] == 7  # one per searched key of the conditional spec
    assert check["sections"]["importance"]["charts"] == 2  # fANOVA and PED-ANOVA


def test_a_sweep_still_running_is_read_from_tunes_trial_files(tmp_path):
    exp = make_experiment(tmp_path, 8, name="running", finished=False)
    assert not (exp / "results.csv").exists()
    page = write_report(exp)
    loaded = report_data.load(exp)
    assert len(loaded.trials) == 8 and not loaded.finished
    assert {t.status for t in loaded.trials} >= {"unfinished", "error"}
    assert "results.csv not written yet" in page.read_text()
    assert _journal_states(exp).count("RUNNING") == sum(t.status == "unfinished" for t in loaded.trials)


@needs_chromium
def test_a_running_sweeps_page_draws_and_says_what_it_lacks(tmp_path):
    exp = make_experiment(tmp_path, 8, name="running", finished=False)
    assert_page_draws(write_report(exp), expect_none=("best", "promotion"))


def test_a_restarted_trial_supersedes_its_first_run_and_is_not_listed_twice(tmp_path):
    exp = make_experiment(tmp_path, 6, name="resumed", finished=False)
    first = exp / "trial_2"
    again = exp / "trial_2_ab12c"  # what Tune makes of a trial it restarts on resume
    again.mkdir()
    (again / "params.json").write_text((first / "params.json").read_text())
    progress = (first / "progress.csv").read_text().replace("t0002", "t0002x")
    (again / "progress.csv").write_text(progress)
    ids = [t.trial_id for t in report_data.load(exp).trials]
    assert ids.count("t0002x") == 1 and "t0002" not in ids and len(ids) == 6


def test_a_regression_promotion_is_shown_by_its_metric(tmp_path):
    from raytune_opt.promote import manifest

    exp = make_experiment(tmp_path, 3, name="regression", promoted=False)
    prom = exp / "promotion"
    prom.mkdir()
    lat = {"batch_1": {"p50_ms": 0.02, "p95_ms": 0.03}, "batch_64": {"p50_ms": 0.05, "p95_ms": 0.06}}
    for name in ("pytorch", "onnx", "int8"):
        (prom / f"{name}.bin").write_bytes(b"\0" * 30_000)
    arts = [manifest.artifact(name, status, path=prom / f"{name}.bin", root=prom, metric="rmse", score=score,
                              fp32_score=60.07, relative_change=(score - 60.07) / 60.07, latency_ms=lat, reason=reason)
            for name, status, score, reason in (
                ("pytorch", "ok", 60.07, ""), ("onnx", "ok", 60.07, ""),
                ("int8", "rejected", 66.0, "metric gate: INT8's rmse is worse than fp32's by more than "
                                           "promote.int8.max_relative_change=0.05 (relative)"))]
    manifest.write(prom, {"format": manifest.FORMAT, "status": "ok", "experiment": str(exp),
                          "source": {"trial_id": "t0001", "metric": "val_rmse", "value": 60.07}, "artifacts": arts})
    page = write_report(exp)
    section = page.read_text().split('id="promotion"')[1]
    assert "rmse (validation set)" in section and "accuracy (%)" not in section
    assert "66" in section and "max_relative_change=0.05" in section
    if BROWSER is not None:
        drawn = page_check(page)["sections"]["promotion"]
        assert drawn["charts"] == drawn["drawn"] == 4 and drawn["none"] == 0, drawn


def test_report_cli_writes_the_page_where_asked(finished, tmp_path, capsys):
    exp, _ = finished
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(exp), "--out", str(out)]) == 0
    assert out.is_file() and f"report: {out}" in capsys.readouterr().out


def test_report_cli_refuses_a_directory_that_is_not_an_experiment(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a raytune-opt experiment" in err


@pytest.mark.parametrize("damage, fragment", [
    (("spec.yaml", "search: [unclosed\n"), "spec.yaml: unreadable (ParserError)"),
    (("spec.yaml", "- a list\n"), "spec.yaml: not a resolved raytune-opt spec"),
    (("results.csv", "trial_id,status\nt1\n"), "results.csv: unreadable (ValueError: line 2 does not have"),
    (("results.csv", "no,trial,columns\n1,2,3\n"), "results.csv: unreadable (KeyError"),
])
def test_report_cli_on_a_damaged_experiment_is_one_line_exit_2(tmp_path, capsys, damage, fragment):
    exp = make_experiment(tmp_path, 3, name="dmg")
    name, text = damage
    (exp / name).write_text(text)
    before = {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()}
    assert main(["report", str(exp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0], err
    assert {p.name: p.read_bytes() for p in exp.iterdir() if p.is_file()} == before  # nothing written


def test_a_broken_experiment_warns_once_and_never_fails_the_sweep(tmp_path, capsys):
    from raytune_opt import storage
    from raytune_opt.report import after_sweep

    exp = make_experiment(tmp_path, 4, name="broken")
    spec = (exp / "spec.yaml").read_text()
    (exp / "spec.yaml").write_text(spec.replace("loguniform:", "no_such_domain:"))  # the space no longer parses
    assert after_sweep(storage.from_uri(str(exp))) is None
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "warning: the report could not be written" in err
    assert "spec.yaml: its search space does not parse" in err and "no_such_domain" in err


def test_the_page_stays_small_and_escapes_what_it_shows(tmp_path):
    exp = make_experiment(tmp_path, 30, name="esc")
    csv_path = exp / "results.csv"
    csv_path.write_text(csv_path.read_text().replace("error: RuntimeError", "error: <script>alert(1)</script>"))
    text = write_report(exp).read_text()
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text
    assert len(text.encode()) < 1_000_000
    assert len(re.findall(r"<svg ", text)) >= 15


def test_a_refresh_that_fails_warns_once_keeps_the_traceback_and_tries_again(tmp_path, capsys):
    from raytune_opt.report.refresh import RefreshReport

    exp = tmp_path / "later"
    exp.mkdir()
    cb = RefreshReport(exp, every_s=0, max_share=1)
    cb.on_trial_complete(0, [], None)  # no spec.yaml yet: the page cannot be built
    cb.on_trial_error(0, [], None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"raytune-opt: warning: refreshing {exp / 'report.html'} "
                                               "failed (UsageError: "), err
    assert err[0].endswith(f"the sweep goes on (traceback in {exp / 'warnings.log'})")
    assert "Traceback (most recent call last)" in (exp / "warnings.log").read_text()
    make_experiment(tmp_path, 3, name="later")  # the experiment's files appear: the next refresh works
    cb.on_trial_complete(0, [], None)
    assert (exp / REPORT).is_file() and capsys.readouterr().err == ""


def test_the_refresh_takes_a_bounded_share_of_the_driver(tmp_path, monkeypatch):
    import raytune_opt.report
    from raytune_opt.report.refresh import RefreshReport

    builds = []
    # A build of 0.1 s, as one of a few thousand trials takes seconds: with a 5% share the
    # next may start 2 s later at the earliest, whatever every_s says.
    monkeypatch.setattr(raytune_opt.report, "write_report", lambda *a, **k: (builds.append(1), time.sleep(0.1)))
    cb = RefreshReport(tmp_path, every_s=0, max_share=0.05)
    for _ in range(3):
        cb.on_trial_complete(0, [], None)
    assert len(builds) == 1
    cb._next -= 2.0  # two seconds later
    cb.on_trial_complete(0, [], None)
    assert len(builds) == 2


def test_a_history_row_longer_than_its_header_does_not_stop_the_report(tmp_path):
    """A history appended to while it grew (a resumed trial's extra column) has unnamed values."""
    exp = make_experiment(tmp_path, 3)
    hist = sorted((exp / "history").glob("*.csv"))[0]
    last = hist.read_text().rstrip("\n").splitlines()[-1]
    hist.write_text(hist.read_text() + last + ",1\n")
    assert write_report(exp).is_file()
    trial = next(t for t in report_data.load(exp).trials if t.history and len(t.history) > 1)
    assert all(isinstance(k, str) for h in trial.history for k in h)


def test_importances_find_the_parameter_the_objective_depends_on():
    # fANOVA's trees are cut at depth 8 (report/study.py, for speed at 1,000 trials): on 300
    # trials of y = sin(3x) + 0.1z, x must still carry nearly all of the variance.
    import math
    import random

    import optuna
    from optuna.distributions import FloatDistribution

    from raytune_opt.report.study import importances

    rng = random.Random(0)
    dists = {"x": FloatDistribution(0, 2), "z": FloatDistribution(0, 2), "noise": FloatDistribution(0, 1)}
    study = optuna.create_study(direction="maximize")
    for _ in range(300):
        p = {k: rng.uniform(d.low, d.high) for k, d in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=p, distributions=dists,
                                                  value=math.sin(3 * p["x"]) + 0.1 * p["z"]))
    for name, imp in importances(study).items():
        assert isinstance(imp, dict) and list(imp)[0] == "x" and imp["x"] > 0.8, (name, imp)
        assert imp["noise"] < 0.05, (name, imp)
