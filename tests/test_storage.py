"""Where experiments and caches live: the endpoint and cache inputs a user controls (fast, no S3 server)."""

from __future__ import annotations

import pytest

from raytune_opt import _cache, storage
from raytune_opt.cli import main
from raytune_opt.errors import UsageError


@pytest.mark.parametrize("url", ["notaurl", "ftp://h", "http://", "http://h:0", "http://h:99999", "http://a b",
                                 "http://u@h", "http://h/path"])
def test_a_bad_endpoint_is_a_problem_not_an_assert(url):
    assert storage.endpoint_problem(url)
    with pytest.raises(UsageError, match=r"storage.endpoint_url .*must be http\(s\)://HOST\[:PORT\]"):
        storage.s3_filesystem(url)  # once an AssertionError: nothing had checked a flag or a variable


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000", "https://s3.example.com", "http://minio:9000/"])
def test_good_endpoints_pass(url):
    assert storage.endpoint_problem(url) is None


@pytest.mark.parametrize("argv, env, fragment", [
    (["promote", "s3://bucket/x", "--endpoint-url", "notaurl"], {}, "--endpoint-url 'notaurl': must be http(s)"),
    (["promote", "/some/dir", "--endpoint-url", "notaurl"], {}, "--endpoint-url 'notaurl'"),
    (["promote", "s3://bucket/x"], {"AWS_ENDPOINT_URL": "notaurl"}, "$AWS_ENDPOINT_URL 'notaurl'"),
    (["promote", "s3://bucket/x"], {"AWS_ENDPOINT_URL_S3": "ftp://x", "AWS_ENDPOINT_URL": "http://ok:1"},
     "$AWS_ENDPOINT_URL_S3 'ftp://x'"),
    (["run", "search_spaces/digits_cnn.yaml", "--storage", "s3://bkt/p"], {"AWS_ENDPOINT_URL": "http://h:70000"},
     "$AWS_ENDPOINT_URL 'http://h:70000'"),
])
def test_endpoints_from_flags_and_variables_are_one_line_exit_2(argv, env, fragment, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(storage.Path(__file__).resolve().parents[1])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(fragment), err


def test_one_cache_root_holds_the_data_cache_and_the_s3_mirror(tmp_path, monkeypatch):
    from raytune_opt.recipe.data import cache_root

    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" / "data"
    assert storage.mirror_dir("s3://bucket/a/b") == tmp_path / "c" / "s3" / "bucket" / "a" / "b"
    monkeypatch.delenv("RAYTUNE_OPT_CACHE")
    assert storage.mirror_dir("s3://bucket/a").parents[2] == cache_root().parent == _cache.cache_root()


def test_a_cache_that_cannot_be_created_names_the_variable(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "file"))
    with pytest.raises(UsageError, match=r"^\$RAYTUNE_OPT_CACHE='.*file': cannot create .*; set RAYTUNE_OPT_CACHE"):
        storage.mirror_dir("s3://bucket/a")
