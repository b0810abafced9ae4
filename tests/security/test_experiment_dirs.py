"""Issue 25, section 7: what `run` may overwrite, what `report` reads and writes, and records
of the wrong shape.

- `run` into an existing non-empty directory (or S3 prefix) that holds no run record is
  refused, naming it, and nothing there changes.
- `report s3://...` works on a machine without the local mirror.
- `report --out FILE` writes FILE and nothing in the experiment (optuna.journal.log included).
- A best.json or promotion manifest with a field of the wrong kind ends in one line (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from raytune_opt.cli import main
from tests._experiments import make_experiment

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "search_spaces" / "digits_cnn.yaml"


class RayWouldStart(Exception):
    pass


@pytest.fixture
def no_ray(monkeypatch, tmp_path):
    """`run` stops where Ray would start (a refusal must come before)."""
    from raytune_opt import ray_runtime

    def start(*args, **kwargs):
        raise RayWouldStart

    monkeypatch.setattr(ray_runtime, "start", start)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _tree(root: Path) -> dict:
    """Every file under root: its bytes' hash and its mtime."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_run_into_a_non_empty_directory_that_is_no_experiment_is_refused(no_ray, tmp_path, capsys):
    target = tmp_path / "results" / "victim"
    (target / "history").mkdir(parents=True)
    (target / "best.json").write_text('{"mine": true}')
    (target / "history" / "notes.csv").write_text("a,b\n")
    before = _tree(target)
    argv = ["run", str(SPEC), "--dry-run", "--storage", str(tmp_path / "results"), "name=victim"]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert line.startswith(f"{target}: is not empty and is not a raytune-opt experiment"), line
    assert "name=NEW_NAME" in line
    assert _tree(target) == before


def test_run_into_an_empty_directory_goes_on(no_ray, tmp_path):
    (tmp_path / "results" / "fresh").mkdir(parents=True)
    with pytest.raises(RayWouldStart):
        main(["run", str(SPEC), "--dry-run", "--storage", str(tmp_path / "results"), "name=fresh"])


def test_run_into_a_non_empty_s3_prefix_that_is_no_experiment_is_refused(no_ray, s3_env, capsys):
    s3 = s3_env
    s3.client().put_object(Bucket=s3.bucket, Key="runs/victim/best.json", Body=b'{"mine": true}')
    before = {k for k in s3.keys("runs/") if not k.endswith("/")}
    assert main(["run", str(SPEC), "--dry-run", "--storage", f"s3://{s3.bucket}/runs", "name=victim"]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"s3://{s3.bucket}/runs/victim: is not empty and is not a raytune-opt experiment"), line
    assert {k for k in s3.keys("runs/") if not k.endswith("/")} == before
    assert s3.client().get_object(Bucket=s3.bucket, Key="runs/victim/best.json")["Body"].read() == b'{"mine": true}'


def test_report_of_an_s3_experiment_without_a_local_mirror(s3_env, tmp_path, capsys):
    from pyarrow import fs

    from raytune_opt import storage

    s3 = s3_env
    exp = make_experiment(tmp_path / "elsewhere", 6, name="remote")
    uri = f"s3://{s3.bucket}/exp/remote"
    fs.copy_files(str(exp), uri[len("s3://"):], source_filesystem=fs.LocalFileSystem(),
                  destination_filesystem=storage.s3_filesystem(s3.endpoint))
    assert not (tmp_path / "cache").exists()  # this machine has never seen it
    assert main(["report", uri, "--endpoint-url", s3.endpoint]) == 0, capsys.readouterr().err
    assert "exp/remote/report.html" in s3.keys("exp/remote/")


def test_report_out_writes_nothing_in_the_experiment(tmp_path, capsys):
    exp = make_experiment(tmp_path / "results", 6)
    assert main(["report", str(exp)]) == 0  # the journal and the page, as after a sweep
    assert (exp / "optuna.journal.log").is_file()
    before = _tree(exp)
    out = tmp_path / "view" / "page.html"
    assert main(["report", str(exp), "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.is_file()
    assert _tree(exp) == before  # optuna.journal.log's bytes and mtime included


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    return make_experiment(tmp_path_factory.mktemp("records"), 6)


def _set(doc: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    doc[last] = value


@pytest.mark.parametrize("rel, field, value", [
    ("best.json", "trial_id", 5),
    ("best.json", "config", [1]),
    ("best.json", "metrics", 3),
    ("best.json", "checkpoint", 7),
    ("promotion/manifest.json", "artifacts", {"a": 1}),
    ("promotion/manifest.json", "source", [1]),
    ("promotion/manifest.json", "artifacts.0.name", 3),
    ("promotion/manifest.json", "artifacts.1.latency_ms.batch_1.p50_ms", "fast"),
])
def test_report_of_a_record_with_a_field_of_the_wrong_kind_is_one_line(promoted, rel, field, value, tmp_path,
                                                                        capsys):
    exp = tmp_path / "exp"
    shutil.copytree(promoted, exp)
    doc = json.loads((exp / rel).read_text())
    _set(doc, field, value)
    (exp / rel).write_text(json.dumps(doc))
    assert main(["report", str(exp), "--out", str(tmp_path / "page.html")]) == 2
    line = _one_line(capsys)
    shown = field.replace(".0.", "[0].").replace(".1.", "[1].")
    assert line.startswith(f"{exp / rel}: {shown} must be"), line


@pytest.mark.parametrize("field, value", [("checkpoint", 7), ("config", [1]), ("epochs", "six")])
def test_promote_of_a_best_json_with_a_field_of_the_wrong_kind_is_one_line(promoted, field, value, tmp_path,
                                                                           capsys):
    exp = tmp_path / "exp"
    shutil.copytree(promoted, exp)
    best = json.loads((exp / "best.json").read_text())
    best[field] = value
    (exp / "best.json").write_text(json.dumps(best))
    assert main(["promote", str(exp), "--targets", "onnx"]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"{exp / 'best.json'}: {field} must be"), line
