"""search.warm_start from an experiment on S3 (a real S3-compatible server on loopback): read
into raytune-opt's own mirror under the cache, as data, and nowhere else."""

from __future__ import annotations

from pathlib import Path

from raytune_opt import warm_start
from raytune_opt.spec import load_spec
from tests.test_warm_start import DIGITS, LR, _configs, _earlier, _score


def _upload(s3, local: Path, prefix: str) -> None:
    for f in local.rglob("*"):
        if f.is_file():
            s3.client().upload_file(str(f), s3.bucket, f"{prefix}/{f.relative_to(local).as_posix()}")


def test_an_s3_experiment_is_read_into_the_mirror_and_told(s3_env, tmp_path, monkeypatch):
    spec = load_spec(DIGITS, [LR, "name=before", "search.algorithm=optuna"])
    earlier = _earlier(tmp_path / "before", spec, _configs(spec, 5), _score, stopped={0})
    _upload(s3_env, earlier, "old/before")
    uri = f"s3://{s3_env.bucket}/old/before"
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    today = load_spec(DIGITS, [LR, "search.algorithm=optuna", f"search.warm_start=[{uri}]"])
    warm = warm_start.load(today)
    assert warm.lines == [f"warm start: 5 of 5 trial(s) of {uri} kept"]
    assert [t.state for t in warm.told].count("pruned") == 1 and {t.experiment for t in warm.told} == {uri}
    mirror = tmp_path / "cache" / "s3" / s3_env.bucket / "old" / "before"
    assert (mirror / "results.csv").is_file() and (mirror / "spec.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["before", "cache"]


def test_a_missing_s3_experiment_is_refused_in_one_line(s3_env):
    uri = f"s3://{s3_env.bucket}/old/nothing_here"
    today = load_spec(DIGITS, [LR, "search.algorithm=optuna", f"search.warm_start=[{uri}]"])
    import pytest

    from raytune_opt.errors import UsageError

    with pytest.raises(UsageError) as err:
        warm_start.load(today)
    assert str(err.value).startswith(f"search.warm_start {uri}: not a raytune-opt experiment") and "\n" not in str(err.value)
