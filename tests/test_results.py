"""results.csv / best.json: content, best-trial selection, and atomic writes on a full disk."""

from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest

from raytune_opt import results
from raytune_opt.results import TrialRow


def _row(tid: str, acc: float, epochs: int, status: str = "ok") -> TrialRow:
    hist = [{"epoch": e, "val_accuracy": acc * e / epochs} for e in range(1, epochs + 1)]
    return TrialRow(trial_id=tid, status=status, stop_reason="completed", config={"train.optimizer.lr": 0.1},
                    epochs=epochs, seconds=1.0, train_seconds=0.5, best=results.best_epoch(hist, "val_accuracy", "max"),
                    last=hist[-1], checkpoint=f"/x/{tid}", history=hist)


def test_ties_go_to_fewer_epochs_and_failures_never_win():
    rows = [_row("a", 0.9, 6), _row("b", 0.9, 3), _row("c", 0.95, 4, status="diverged"),
            TrialRow("d", "error", "error: X", {}, 0, 0.0, 0.0)]
    assert results.select_best(rows, "val_accuracy", "max").trial_id == "b"
    assert results.select_best(rows[2:], "val_accuracy", "max") is None


def test_results_files(tmp_path):
    rows = [_row("a", 0.9, 2), _row("b", 0.8, 2)]
    best = results.write_results(tmp_path, rows, ["train.optimizer.lr"], "val_accuracy", "max", "abc")
    assert best.trial_id == "a"
    with open(tmp_path / "results.csv") as f:
        recs = list(csv.DictReader(f))
    assert [r["trial_id"] for r in recs] == ["a", "b"] and recs[0]["config.train.optimizer.lr"] == "0.1"
    b = json.loads((tmp_path / "best.json").read_text())
    assert b["checkpoint"] == "/x/a/best.pt" and b["spec_sha256"] == "abc" and b["value"] == 0.9
    assert (tmp_path / "history" / "a.csv").read_text().count("\n") == 3


@pytest.fixture
def full_disk(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_leaves_the_previous_results_intact(full_disk):
    rows = [_row("a", 0.9, 2)]
    results.write_results(full_disk, rows, ["train.optimizer.lr"], "val_accuracy", "max", "abc")
    before = {p.name: p.read_bytes() for p in full_disk.iterdir() if p.is_file()}
    with open(full_disk / "filler", "wb", buffering=0) as f:  # fill the disk to the last block
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    many = [_row(f"t{i:03d}", 0.5 + i / 1000, 20) for i in range(200)]
    with pytest.raises(OSError):
        results.write_results(full_disk, many, ["train.optimizer.lr"], "val_accuracy", "max", "def")
    after = {p.name: p.read_bytes() for p in full_disk.iterdir() if p.is_file() and p.name != "filler"}
    assert after == before  # no half-written results.csv / best.json, no temporary files left
    assert not [p for p in full_disk.rglob("*.tmp")]
    os.remove(full_disk / "filler")


def test_a_metric_of_a_user_loop_gets_its_columns_and_picks_the_best(tmp_path):
    def row(tid, auc):
        hist = [{"epoch": 1, "val_auc": auc / 2}, {"epoch": 2, "val_auc": auc}]
        return TrialRow(trial_id=tid, status="ok", stop_reason="completed", config={}, epochs=2, seconds=1.0,
                        train_seconds=0.5, best=results.best_epoch(hist, "val_auc", "max"), last=hist[-1],
                        checkpoint=f"/x/{tid}", history=hist)

    best = results.write_results(tmp_path, [row("a", 0.7), row("b", 0.8)], [], "val_auc", "max", "abc")
    assert best.trial_id == "b"
    with open(tmp_path / "results.csv") as f:
        recs = list(csv.DictReader(f))
    assert recs[1]["best_val_auc"] == "0.8" and recs[1]["best_val_accuracy"] == ""
    assert "best_val_rmse" not in recs[0]  # a recipe metric nobody reported gets no column
