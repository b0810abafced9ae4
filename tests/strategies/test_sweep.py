"""A ZeRO-stage sweep with ASHA through the real sweep on an embedded local Ray (slow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from raytune_opt import report
from raytune_opt.recipe.checkpoint import load_model
from raytune_opt.spec import load_spec
from raytune_opt.sweep import run_sweep
from tests._chromium import BROWSER, page_check
from tests.test_report import SECTIONS

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "search_spaces" / "digits_deepspeed.yaml"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("warm", [pytest.param(False, marks=pytest.mark.exhaustive), True], ids=["per-trial", "warm"])
def test_a_zero_stage_sweep_with_asha_completes_and_keeps_every_ranks_shard(local_ray, tmp_path, warm):
    # ZeRO 1 (optimizer state sharded) and 3 (parameters too); stage 2 trains in
    # test_zero_training.py (each 2-worker trial here costs ~45 s of start-up on 2 cores).
    # Warm: both stages in one slot, a new DeepSpeed engine per trial on the group the slot keeps.
    spec = load_spec(SPEC, ["train.epochs=2", "promote.enabled=false", "name=zero",
                            f"resources.warm_workers={str(warm).lower()}",
                            "space={train.deepspeed.zero_optimization.stage: {grid: [1, 3]}}"])
    outcome = run_sweep(spec, storage=str(tmp_path), verbose=0, callbacks=report.callbacks)
    report.after_sweep(outcome.location)  # as the CLI and the API do
    with open(outcome.exp_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert outcome.exit_code == 0 and len(rows) == 2
    assert {r["config.train.deepspeed.zero_optimization.stage"] for r in rows} == {"1", "3"}
    assert all(r["status"] in ("ok", "stopped") for r in rows), rows
    # Ray Train's persisted checkpoint of every trial that finished holds both ranks' shards
    # (each rank reported its own files; Train merged them) and the consolidated weights.
    for train_run in (outcome.exp_dir / "train").iterdir():
        ckpts = sorted(p for p in train_run.glob("checkpoint_*") if p.is_dir())
        assert ckpts, train_run
        files = {p.relative_to(ckpts[-1]).as_posix() for p in ckpts[-1].rglob("*") if p.is_file()}
        assert {"last.pt", "zero/latest"} <= files, files
        assert any("pp_rank_0_" in f for f in files) and any("pp_rank_1_" in f for f in files), files
    best = json.loads((outcome.exp_dir / "best.json").read_text())
    model, ckpt = load_model(best["checkpoint"])  # best.pt: plain PyTorch, no DeepSpeed needed
    assert ckpt["zero"]["world_size"] == 2 and ckpt["metrics"]["val_accuracy"] > 0.8
    # The sweep's report: every trial, and the best trial's section from the consolidated best.pt.
    page = (outcome.exp_dir / "report.html").read_text()
    for sid in SECTIONS:
        assert f'id="{sid}"' in page, sid
    leaderboard = page[page.index('id="leaderboard"'):page.index('id="history"')]
    assert leaderboard.count("<tr class=") == 2 and "confusion matrix (validation set)" in page
    if BROWSER:  # one searched key, two trials: no contour or importance to draw, and no promotion
        check = page_check(outcome.exp_dir / "report.html")
        assert check["errors"] == [], check["errors"]
        for name in ("leaderboard", "history", "curves", "losses", "best"):
            sec = check["sections"][name]
            assert sec["empty"] == 0 and sec["drawn"] == sec["charts"], (name, sec)


def test_the_deepspeed_spec_passes_a_dry_run(local_ray, tmp_path, capsys):
    # One worker per trial: DeepSpeed on a one-rank group of its own, in reused Tune actors
    # (each trial must leave the process ready for the next one).
    from raytune_opt.cli import main

    rc = main(["run", str(SPEC), "--dry-run", "--storage", str(tmp_path)])
    assert rc == 0, capsys.readouterr().out
    with open(next(tmp_path.iterdir()) / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["status"] == "ok" and r["epochs"] == "1" for r in rows), rows
