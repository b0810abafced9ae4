"""The compact live view, driven with the calls Tune makes (a real sweep prints it in test_run_cli's
slow test): 80 columns, plain lines without a terminal, one line per finished trial."""

from __future__ import annotations

from pathlib import Path

from raytune_opt.live import LiveView
from raytune_opt.spec import load_spec
from tests.test_tracking import FakeTrial, _epochs

ROOT = Path(__file__).resolve().parents[1]


def _sweep(view: LiveView) -> None:
    ok, stopped, bad = (FakeTrial("aaa01", {"train.optimizer.lr": 0.01, "model.dropout": 0.25}),
                        FakeTrial("bbb02", {}), FakeTrial("ccc03", {}))
    view.setup()
    for t in (ok, stopped, bad):
        view.on_trial_start(0, [], t)
    for t, epochs in ((ok, _epochs(3)), (stopped, _epochs(2, None)), (bad, _epochs(1, None))):
        for r in epochs:
            t.last_result = r
            view.on_trial_result(0, [], t, r)
    view.on_trial_complete(0, [], stopped)
    view.on_trial_complete(0, [], ok)
    view.on_trial_error(0, [], bad)
    view.on_experiment_end([ok, stopped, bad])


def test_without_a_terminal_it_prints_plain_lines_that_fit_80_columns(capsys):
    spec = load_spec(ROOT / "search_spaces" / "digits_cnn.yaml", ["name=" + "n" * 70])
    _sweep(LiveView(spec, "/some/where/" + "x" * 90, total=3, tty=False))
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\x1b" not in out and "\r" not in out
    assert all(len(line) <= 80 for line in lines), [len(line) for line in lines]
    assert lines[0].startswith("sweep nnn") and lines[1].startswith("storage: /some/where/")
    assert "trial bbb02 stopped at epoch 2: val_accuracy 0.7000" in lines
    assert "trial aaa01 finished at epoch 3: val_accuracy 0.8000" in lines
    assert "trial ccc03 errored at epoch 1" in lines
    # The best so far, with its config, each time another trial takes the lead.
    best = [line for line in lines if line.startswith("  best so far")]
    assert best == ["  best so far 0.8000 aaa01: dropout=0.25 lr=0.01"], lines
    assert lines[-1].startswith("done 3/3 (1 ok 1 stop 1 err 0 run) | best 0.8000 aaa01 | 0m")


def test_on_a_terminal_the_status_is_one_bar_updated_in_place(capsys, monkeypatch):
    spec = load_spec(ROOT / "search_spaces" / "digits_cnn.yaml")
    monkeypatch.setattr("raytune_opt.live.TTY_STATUS_EVERY_S", 0.0)
    _sweep(LiveView(spec, "/tmp/x", total=3, tty=True))
    out = capsys.readouterr().out
    assert "\r" in out  # tqdm redraws its line
    assert "trial bbb02 stopped at epoch 2: val_accuracy 0.7000" in out
    assert out.count("trial aaa01 finished") == 1


def test_a_resumed_sweep_counts_the_trials_that_ended_before_it(capsys):
    spec = load_spec(ROOT / "search_spaces" / "digits_cnn.yaml")
    view = LiveView(spec, "/tmp/x", total=3, tty=False)
    done = FakeTrial("aaa01", {"train.optimizer.lr": 0.02}, status="TERMINATED",
                     last_result=_epochs(3)[-1])
    cut = FakeTrial("bbb02", {}, status="TERMINATED", last_result=_epochs(1, None)[-1])
    again = FakeTrial("ccc03", {})
    view.setup()
    view.on_step(0, [done, cut, again])
    view.on_trial_start(0, [done, cut, again], again)
    for r in _epochs(2):
        again.last_result = r
        view.on_trial_result(0, [], again, r)
    view.on_trial_complete(0, [], again)
    view.on_experiment_end([done, cut, again])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("done 3/3 (2 ok 1 stop 0 err 0 run) | best 0.8000 aaa01"), lines
