"""Issue 25, section 3 (and 7's `s3://b//x`): an s3:// URI cannot climb out of the cache.

`raytune-opt resume 's3://../../../somewhere/victim'` once deleted a directory outside the
cache (the rmtree of the "stale mirror") and wrote raytune_opt_run.json into it: the server
normalizes the `..` away and finds the run record in the bucket `somewhere`, while the local
mirror was a path built from the same `..`. Every entry refuses such URIs now (the spec's
storage.path, the command line, the run record, $RAYTUNE_OPT_CACHE), and every rmtree, move
and overwrite checks that its path stays under its root (raytune_opt._paths.ensure_under).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from raytune_opt import storage
from raytune_opt.cli import main
from raytune_opt.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "search_spaces" / "digits_cnn.yaml"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("uri, fragment", [
    ("s3://../../../somewhere/victim", "bucket '..' is not a valid S3 bucket name"),
    ("s3://sweeps/../x", "a '..' segment"),
    ("s3://sweeps/a/../../x", "a '..' segment"),
    ("s3://sweeps/./x", "a '.' segment"),
    ("s3://sweeps//x", "an empty segment"),
    ("s3://b//x", "bucket 'b' is not a valid S3 bucket name"),
    ("s3:///x", "names no bucket"),
    ("s3://My_Bucket/x", "bucket 'My_Bucket'"),
    ("s3://192.168.0.1/x", "bucket '192.168.0.1'"),
    ("s3://a..b/x", "bucket 'a..b'"),
    ("s3://sweeps/a\nb", "control character"),
])
def test_split_s3_refuses_climbing_and_invalid_buckets(uri, fragment):
    with pytest.raises(UsageError) as info:
        storage.split_s3(uri)
    line = str(info.value)
    shown = uri if uri.isprintable() else repr(uri)
    assert "\n" not in line and line.startswith(f"{shown}: ") and fragment in line, line
    assert "; write" in line  # and the fix
    assert storage.root_problem(uri)


@pytest.mark.parametrize("uri, parts", [
    ("s3://sweeps/exp/name", ("sweeps", "exp/name")),
    ("s3://sweeps/exp/", ("sweeps", "exp")),
    ("s3://my-bucket.v2", ("my-bucket.v2", "")),
    ("s3://abc/a..b/c.d", ("abc", "a..b/c.d")),  # dots inside a segment are names, not climbing
])
def test_valid_uris_still_split(uri, parts):
    assert storage.split_s3(uri) == parts and storage.root_problem(uri) is None


@pytest.mark.parametrize("value", ["s3://../..", "s3://sweeps//x", "s3://sweeps/../../x"])
def test_validate_refuses_a_climbing_storage_path(value, capsys):
    assert main(["validate", str(SPEC), f"storage.path={value}", "--quiet"]) == 2
    line = _one_line(capsys)
    assert "storage.path:" in line and repr(value) in line, line


def test_the_traversal_resume_is_refused_before_anything_is_deleted_or_written(s3_env, tmp_path, capsys):
    s3 = s3_env
    client = s3.client()
    client.create_bucket(Bucket="somewhere")
    for name, body in (("raytune_opt_run.json", b'{"format": "raytune-opt/experiment/v1"}'),
                       ("spec.input.yaml", SPEC.read_bytes())):
        client.put_object(Bucket="somewhere", Key=f"victim/{name}", Body=body)
    uri = "s3://../../../somewhere/victim"
    # Where the mirror of that URI was: cache/s3/../../../somewhere/victim.
    victim = Path(os.path.normpath(tmp_path / "cache" / "s3" / "../../../somewhere/victim"))
    assert not victim.is_relative_to(tmp_path / "cache")
    victim.mkdir(parents=True)
    (victim / "thesis.tex").write_text("years of work")
    before = _tree(victim)
    assert main(["resume", uri, "--endpoint-url", s3.endpoint]) == 2
    assert _tree(victim) == before  # nothing deleted, nothing written
    line = _one_line(capsys)
    assert line.startswith(f"{uri}: bucket '..' is not a valid S3 bucket name"), line


@pytest.mark.parametrize("command", ["resume", "promote", "report"])
@pytest.mark.parametrize("uri", ["s3://sweeps//x", "s3://b//x"])
def test_an_empty_segment_is_one_line_in_resume_promote_and_report(command, uri, s3_env, capsys):
    # Once a pyarrow ArrowInvalid traceback ("Empty path component").
    assert main([command, uri, "--endpoint-url", s3_env.endpoint]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"{uri}: ") and ("empty segment" in line or "bucket 'b'" in line), line


def test_a_mirror_that_a_link_leads_out_of_the_cache_is_not_deleted(s3_env, tmp_path, capsys):
    """The rmtree of a stale mirror checks the resolved path, not the words of the URI."""
    s3 = s3_env
    s3.client().put_object(Bucket=s3.bucket, Key="linked/exp/raytune_opt_run.json", Body=b"{}")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "exp").mkdir(parents=True)
    (elsewhere / "exp" / "keep.txt").write_text("mine")
    (tmp_path / "cache" / "s3" / s3.bucket).mkdir(parents=True)
    (tmp_path / "cache" / "s3" / s3.bucket / "linked").symlink_to(elsewhere)
    assert main(["resume", f"s3://{s3.bucket}/linked/exp", "--endpoint-url", s3.endpoint]) == 2
    assert sorted(p.name for p in (elsewhere / "exp").iterdir()) == ["keep.txt"]
    assert (elsewhere / "exp" / "keep.txt").read_text() == "mine"
    line = _one_line(capsys)
    assert "is not inside" in line and str(elsewhere / "exp") in line, line


def test_a_run_record_with_a_climbing_storage_uri_is_refused(tmp_path):
    from raytune_opt.sweep import resume_sweep

    (tmp_path / "raytune_opt_run.json").write_text(json.dumps({"storage": "s3://sweeps/../../x"}))
    (tmp_path / "spec.input.yaml").write_text(SPEC.read_text())
    with pytest.raises(UsageError, match=r"raytune_opt_run.json: storage 's3://sweeps/../../x': the key has a '..' "
                                         r"segment.*the run record is damaged"):
        resume_sweep(tmp_path)


@pytest.mark.parametrize("field, value", [("overrides", 5), ("overrides", [1]), ("code_dirs", "x"),
                                          ("dry_run", "no"), ("storage", "s3://b//x")])
def test_a_run_record_field_of_the_wrong_kind_is_one_line(field, value, tmp_path):
    from raytune_opt.experiment import RUN_FORMAT
    from raytune_opt.sweep import resume_sweep

    record = {"format": RUN_FORMAT, "overrides": [], "dry_run": False, "spec_sha256": "x", field: value}
    (tmp_path / "raytune_opt_run.json").write_text(json.dumps(record))
    (tmp_path / "spec.input.yaml").write_text(SPEC.read_text())
    with pytest.raises(UsageError, match=rf"raytune_opt_run.json: {'storage' if field == 'storage' else field}.*"
                                         "the run record is damaged") as info:
        resume_sweep(tmp_path)
    assert "\n" not in str(info.value)


def test_a_relative_cache_is_refused_and_nothing_is_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", "rel/cache")
    with pytest.raises(UsageError, match=r"^\$RAYTUNE_OPT_CACHE='rel/cache': a relative path; set RAYTUNE_OPT_CACHE "
                                         "to an absolute directory") as info:
        storage.mirror_dir("s3://sweeps/exp/name")
    assert "\n" not in str(info.value) and not (tmp_path / "rel").exists()


def test_cache_values_that_are_fine(tmp_path, monkeypatch):
    from raytune_opt import _cache

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", "~/c")
    assert storage.mirror_dir("s3://sweeps/e/n") == tmp_path / "c" / "s3" / "sweeps" / "e" / "n"
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "x" / ".." / "c2"))  # resolved first
    assert storage.mirror_dir("s3://sweeps/e/n") == tmp_path / "c2" / "s3" / "sweeps" / "e" / "n"
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", "")  # empty: the default
    assert _cache.cache_root().name == "raytune_opt_cache"


def test_ensure_under(tmp_path):
    from raytune_opt._paths import ensure_under

    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path)
    assert ensure_under(root / "a" / "b", root, "x") == root / "a" / "b"
    for bad in (root / ".." / "x", root / "a" / ".." / "..", root / "out" / "x", root, root / "a" / ".."):
        with pytest.raises(UsageError, match=r"^the thing .* resolves to .*, which is not inside .*; refusing"):
            ensure_under(bad, root, "the thing")
