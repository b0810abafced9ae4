"""`raytune-opt promote` on directories it cannot promote: exit 2, one line, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raytune_opt.cli import main
from raytune_opt.promote.export import parity


def _run(capsys, *argv) -> tuple[int, str]:
    rc = main(["promote", *map(str, argv)])
    err = capsys.readouterr().err
    return rc, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_directory_that_is_not_an_experiment(tmp_path, capsys):
    rc, err = _run(capsys, tmp_path)
    line = _one_line(err)
    assert rc == 2 and str(tmp_path) in line and "not a raytune-opt experiment (holds no spec.yaml)" in line
    assert "STORAGE/NAME" in line
    rc, err = _run(capsys, tmp_path / "nope")
    assert rc == 2 and "does not exist" in _one_line(err)


def test_an_experiment_without_a_successful_trial(experiment, capsys):
    (experiment / "best.json").unlink()
    rc, err = _run(capsys, experiment)
    line = _one_line(err)
    assert rc == 2 and str(experiment) in line and "no successful trial to promote (no best.json" in line
    assert "1 error, 1 ok" in line and "raytune-opt run" in line


def test_an_experiment_whose_best_checkpoint_is_gone(experiment, capsys):
    best = json.loads((experiment / "best.json").read_text())
    Path(best["checkpoint"]).unlink()
    rc, err = _run(capsys, experiment)
    line = _one_line(err)
    assert rc == 2 and best["checkpoint"] in line and "is missing" in line


def test_a_best_json_that_disagrees_with_results_csv(experiment, capsys):
    best = json.loads((experiment / "best.json").read_text())
    best["trial_id"] = "bbbb0002"
    (experiment / "best.json").write_text(json.dumps(best))
    rc, err = _run(capsys, experiment)
    assert rc == 2 and "results.csv's best by val_accuracy (max) is trial aaaa0001" in _one_line(err)


def test_a_moved_experiment_finds_its_checkpoint(experiment, tmp_path):
    from raytune_opt.promote.select import select_source

    best = json.loads((experiment / "best.json").read_text())
    best["checkpoint"] = "/elsewhere/exp/" + "/".join(best["checkpoint"].split("/")[-3:])
    (experiment / "best.json").write_text(json.dumps(best))
    assert select_source(experiment).checkpoint.is_relative_to(experiment)


def test_unknown_target(experiment, capsys):
    rc, err = _run(capsys, experiment, "--targets", "onnx,tflite")
    assert rc == 2 and "unknown target tflite" in _one_line(err)


def test_parity_allows_top1_flips_only_on_near_ties():
    # The second sample is a near tie: margin 5e-5 <= 2 * atol.
    ref = np.array([[1.0, 0.0, 0.0], [0.5, 0.50005, 0.0]], np.float32)
    flipped_tie = ref.copy()
    flipped_tie[1] = [0.50004, 0.50001, 0.0]
    p = parity(ref, flipped_tie, atol=1e-4)
    assert p.ok and p.top1_agreement == 0.5 and p.agreement_required == 0.5
    flipped_clear = ref.copy()
    flipped_clear[0] = [0.0, 1.0, 0.0]
    p = parity(ref, flipped_clear, atol=10.0)  # within a huge atol every sample is a near tie
    assert p.ok
    p = parity(ref, flipped_clear, atol=1e-4)
    assert not p.ok and "max |ONNX - PyTorch|" in p.reason


@pytest.mark.parametrize("damage, fragment", [
    (("best.json", '{"trial_id": "aaaa00'), "best.json: unreadable or truncated"),
    (("best.json", "[1, 2]"), "best.json: unreadable or truncated"),
    (("best.json", '{"trial_id": "aaaa0001", "value": "high", "metric": "val_accuracy", "mode": "max"}'),
     "best.json: unreadable or truncated"),
    (("spec.yaml", "search: {metric: [unclosed\n"), "spec.yaml: unreadable (ParserError)"),
    (("spec.yaml", "search: {}\npromote: {}\n"), "spec.yaml: not a resolved raytune-opt spec"),
])
def test_damaged_experiment_files_are_one_line(experiment, capsys, damage, fragment):
    name, text = damage
    (experiment / name).write_text(text)
    rc, err = _run(capsys, experiment)
    assert rc == 2 and fragment in _one_line(err)
