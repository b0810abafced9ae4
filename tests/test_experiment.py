"""The experiment directory's owner (raytune_opt/experiment.py): the run record written and
read back, a damaged one refused in one line, and no other module naming its files or
reaching into the sweep for them; the sweep knows nothing of the report."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from raytune_opt import experiment, storage
from raytune_opt.errors import UsageError
from raytune_opt.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raytune_opt"
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"


def _written(tmp_path: Path, overrides=("name=rec", "train.epochs=2"), dry_run: bool = False) -> tuple[Path, object]:
    spec = load_spec(DIGITS, list(overrides))
    loc = storage.Location(str(tmp_path / "rec"), tmp_path / "rec")
    experiment.write_inputs(loc, spec, DIGITS.read_text(), dry_run)
    return loc.local, spec


def test_the_run_record_reads_back_what_was_written(tmp_path):
    exp, spec = _written(tmp_path, dry_run=True)
    assert sorted(p.name for p in exp.iterdir()) == sorted([experiment.RUN_INPUT, experiment.RUN_META, experiment.SPEC])
    meta = experiment.read_record(exp)
    assert meta["format"] == experiment.RUN_FORMAT
    assert (meta["overrides"], meta["dry_run"], meta["spec_sha256"]) == (["name=rec", "train.epochs=2"], True,
                                                                        spec.sha256())
    assert meta["storage"] == str(exp) and meta["code_dirs"] == list(spec.code_dirs)
    assert experiment.code_dirs_of(exp) == list(spec.code_dirs)
    assert experiment.recorded_storage(exp) == str(exp)
    # The spec the record names rebuilds to the same settings (what resume checks).
    assert load_spec(exp / experiment.RUN_INPUT, meta["overrides"]).sha256() == spec.sha256()


@pytest.mark.parametrize("damage, line", [
    ('{"format": "raytune-opt/exp', "{meta}: unreadable or truncated; the experiment cannot be resumed"),
    ('[1, 2]', "{meta}: unreadable or truncated; the experiment cannot be resumed"),
    ('{"format": "raytune-opt/experiment/v0", "overrides": [], "dry_run": false, "spec_sha256": "x"}',
     "{meta}: written by another raytune-opt version (format 'raytune-opt/experiment/v0', this one reads "
     "'raytune-opt/experiment/v1'); start a new sweep"),
    ('{"format": "raytune-opt/experiment/v1", "overrides": [1], "dry_run": false, "spec_sha256": "x"}',
     "{meta}: overrides must be a list of strings (got [1]); the run record is damaged: restore it from a copy, "
     "or start a new sweep with 'raytune-opt run'"),
])
def test_a_damaged_run_record_is_refused_in_one_line(tmp_path, damage, line):
    exp, _ = _written(tmp_path)
    (exp / experiment.RUN_META).write_text(damage)
    with pytest.raises(UsageError) as info:
        experiment.read_record(exp)
    assert str(info.value) == line.format(meta=exp / experiment.RUN_META)
    assert experiment.code_dirs_of(exp) == []  # unreadable: no directory to import from


def test_a_directory_without_a_record_is_not_an_experiment(tmp_path):
    with pytest.raises(UsageError, match="not a directory"):
        experiment.read_record(tmp_path / "missing")
    with pytest.raises(UsageError, match=r"not a raytune-opt experiment \(no raytune_opt_run.json\)"):
        experiment.read_record(tmp_path)
    assert experiment.code_dirs_of(tmp_path) == []


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _imported(tree: ast.AST) -> set[str]:
    """Every module a file imports, at its top or inside a function ("pkg.mod" and "pkg.mod.name")."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return out


def test_the_sweep_does_not_know_the_report():
    imported = _imported(ast.parse((PACKAGE / "sweep.py").read_text()))
    assert not {m for m in imported if m == "raytune_opt.report" or m.startswith("raytune_opt.report.")}, imported


def test_the_layout_has_one_owner():
    """No module but experiment.py writes the run record's or the results' file names, and
    none takes them from the sweep."""
    names = {experiment.RUN_META, experiment.RUN_INPUT, experiment.RESULTS, experiment.BEST}
    found = []
    for path, tree in _modules():
        if path.name == "experiment.py" and path.parent == PACKAGE:
            continue
        found += [f"{path.relative_to(ROOT)}:{n.lineno} {n.value}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and n.value in names]
        found += [f"{path.relative_to(ROOT)} imports {m}" for m in _imported(tree)
                  if m in {f"raytune_opt.sweep.{n}" for n in ("RUN_META", "RUN_INPUT", "code_dirs_of")}]
    assert not found, found


def test_the_layout_module_imports_neither_torch_nor_ray():
    probe = ("import sys, raytune_opt.experiment; "
             "print(any(m.split('.')[0] in ('torch', 'ray') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
