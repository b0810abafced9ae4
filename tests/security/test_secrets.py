"""Secrets in settings and outputs (issue 25, section 6): a password or token in a URI (the
MLflow tracking URI, an S3 endpoint, a Ray address) is redacted wherever it is printed or
written — the resolved spec that ``validate`` prints, ``spec.yaml``, ``spec.input.yaml``, the
run record, ``mlflow_run.json``, ``warnings.log``, error and warning lines — and kept whole
only in the memory of the process that uses it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from raytune_opt import redact
from raytune_opt.cli import main
from raytune_opt.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "search_spaces" / "digits_cnn.yaml"
SECRET = "s3cr3t-PW-1234"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files_under(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text(errors="replace") for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("text, shown", [
    ("http://alice:pw@h:5000", "http://alice:***@h:5000"),
    ("postgresql+psycopg2://u:pw@db:5432/ml", "postgresql+psycopg2://u:***@db:5432/ml"),
    ("https://ghp_token@host/x", "https://***@host/x"),
    ("ray://u:pw@head:10001", "ray://u:***@head:10001"),
    ("https://b.s3/x?X-Amz-Signature=abc&X-Amz-Credential=k&part=1", "https://b.s3/x?X-Amz-Signature=***&X-Amz-Credential=***&part=1"),
    ("override 'tracking.mlflow.tracking_uri=http://u:pw@h'", "override 'tracking.mlflow.tracking_uri=http://u:***@h'"),
    ("sqlite:///tmp/mlflow.db", "sqlite:///tmp/mlflow.db"),
    ("mail me at a@b.com, key=value", "mail me at a@b.com, key=value"),
])
def test_redact_hides_credentials_and_keeps_the_rest(text, shown):
    assert redact.redact(text) == shown
    assert redact.redact(shown) == shown  # idempotent: a redacted file read back stays as it is


def test_the_whole_uri_lives_in_memory_only_where_it_is_used():
    whole = f"http://alice:{SECRET}@127.0.0.1:5000"
    shown = redact.redact(whole)
    assert redact.usable(shown) == "http://127.0.0.1:5000"  # read back from a file: credentials from the env
    assert redact.lost_credentials(shown)
    redact.remember(whole)
    assert redact.usable(shown) == whole and not redact.lost_credentials(shown)


def test_validate_prints_the_resolved_spec_without_the_password(capsys):
    uri = f"http://alice:{SECRET}@127.0.0.1:{_closed_port()}"
    assert main(["validate", str(DIGITS), f"tracking.mlflow.tracking_uri={uri}"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "tracking_uri: 'http://alice:***@127.0.0.1:" in out


def test_an_unreachable_tracker_with_a_password_is_one_redacted_line(tmp_path, capsys):
    pytest.importorskip("mlflow")
    uri = f"http://alice:{SECRET}@127.0.0.1:{_closed_port()}"
    code = main(["run", str(DIGITS), f"tracking.mlflow.tracking_uri={uri}", "name=t", "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert SECRET not in err and "tracking.mlflow.tracking_uri http://alice:***@127.0.0.1:" in err


def test_a_bad_value_with_a_password_is_redacted_in_the_error(capsys):
    assert main(["validate", str(DIGITS), f"storage.endpoint_url=http://bob:{SECRET}@minio:9000"]) == 2
    err = capsys.readouterr().err
    assert SECRET not in err and "bob:***@minio" in err


def test_the_experiment_files_keep_no_password_and_the_spec_resumes_to_the_same_hash(tmp_path):
    from raytune_opt import experiment, storage

    uri = f"http://alice:{SECRET}@127.0.0.1:5000"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(DIGITS.read_text() + f"\n# a comment that names {uri}\n")
    spec = load_spec(spec_file, [f"tracking.mlflow.tracking_uri={uri}", "name=sec"])
    loc = storage.Location(str(tmp_path / "out" / "sec"), tmp_path / "out" / "sec")
    experiment.write_inputs(loc, spec, spec_file.read_text(), dry_run=False)
    files = _files_under(loc.local)
    assert set(files) >= {"spec.yaml", experiment.RUN_INPUT, experiment.RUN_META}
    assert not [name for name, text in files.items() if SECRET in text]
    assert "http://alice:***@127.0.0.1:5000" in files["spec.yaml"]
    # resume rebuilds the spec from the redacted files: the same settings, the same hash
    meta = json.loads(files[experiment.RUN_META])
    again = load_spec(loc.local / experiment.RUN_INPUT, meta["overrides"])
    assert again.sha256() == spec.sha256() == meta["spec_sha256"]


def test_a_failing_trackers_warning_and_warnings_log_keep_no_password(tmp_path, capsys):
    pytest.importorskip("mlflow")
    from raytune_opt.tracking.mlflow import MLflowCallback

    # A tracker that fails: its warning line and its traceback in warnings.log.
    bad = f"http://alice:{SECRET}@127.0.0.1:{_closed_port()}"
    cb = MLflowCallback(bad, "sec", load_spec(DIGITS), tmp_path)
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cb.setup()
    err = capsys.readouterr().err
    assert "MLflow logging to http://alice:***@" in err and SECRET not in err
    assert (tmp_path / "warnings.log").is_file() and SECRET not in (tmp_path / "warnings.log").read_text()
    # mlflow_run.json of a tracker that works: tests/test_tracking.py's real server, whose URI carries a password.
