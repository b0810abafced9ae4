"""The start-up marks benchmarks/ddp_startup.py reads (raytune_opt.timeline)."""

from __future__ import annotations

import os

from raytune_opt import timeline


def test_marks_go_to_the_named_file_in_order_and_nowhere_without_it(tmp_path, monkeypatch):
    monkeypatch.delenv(timeline.ENV, raising=False)
    timeline.mark("ignored")  # unset: nothing written anywhere
    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(timeline.ENV, str(path))
    timeline.mark("first", rank=0)
    timeline.mark("second", rank=1, epoch=2)
    marks = timeline.read(str(path))
    assert [m["event"] for m in marks] == ["first", "second"]
    assert marks[1]["rank"] == 1 and marks[1]["epoch"] == 2 and marks[0]["pid"] == os.getpid()
    assert marks[0]["t"] <= marks[1]["t"]


def test_a_path_that_cannot_be_written_never_fails_the_caller(tmp_path, monkeypatch):
    monkeypatch.setenv(timeline.ENV, str(tmp_path / "no" / "such" / "dir" / "t.jsonl"))
    timeline.mark("dropped")
    assert timeline.read(str(tmp_path / "no" / "such" / "dir" / "t.jsonl")) == []


def test_the_loop_marks_its_start_up_steps(tmp_path, monkeypatch):
    from raytune_opt.recipe.loop import train
    from raytune_opt.recipe.session import LocalSession
    from raytune_opt.spec import load_spec

    from tests.test_sweep import DIGITS

    path = tmp_path / "t.jsonl"
    monkeypatch.setenv(timeline.ENV, str(path))
    cfg = {k: v for k, v in load_spec(DIGITS, ["train.epochs=2", "train.limit_batches=2"]).data.items()
           if k != "space"}
    train(cfg, LocalSession(checkpoint_dir=str(tmp_path / "ckpt")))
    events = [m["event"] for m in timeline.read(str(path))]
    assert events == ["loop_start", "data_loaded", "model_built", "setup_done", "first_step", "reported",
                      "reported"], events


def test_a_timeline_path_that_cannot_be_written_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from raytune_opt.cli import main

    from tests.test_sweep import DIGITS

    bad = tmp_path / "missing" / "t.jsonl"
    monkeypatch.setenv(timeline.ENV, str(bad))
    assert main(["validate", str(DIGITS), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"$RAYTUNE_OPT_TIMELINE='{bad}': cannot append"), err
    assert "unset it" in err[0] and not bad.parent.exists()
