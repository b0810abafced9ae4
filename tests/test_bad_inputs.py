"""The bad-input corpus beyond spec files (those are tests/spec/bad/): CLI flags and
overrides, data directories, checkpoints, experiment directories and cluster addresses.

Every case must exit 2 with one clear line naming what and where, print no traceback, and
leave what was written before it untouched. The cases in :data:`CONSOLE` (one or more of each
kind, and every one that involves Ray or the network) run the real console script in a fresh
process, as a user would; the others call ``cli.main`` in this process (a fresh interpreter
costs ~3 s of imports a case), where an exception escaping it fails the test as a traceback would.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~40 fresh CLI processes: a few minutes; CI runs it

ROOT = Path(__file__).resolve().parents[1]
DIGITS = "search_spaces/digits_cnn.yaml"
CIFAR = "search_spaces/cifar10_resnet18.yaml"
IMAGES = "search_spaces/imagefolder_mobilenetv3.yaml"


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "raytune_opt", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def _setup(kind: str, tmp: Path) -> Path:
    """Build the on-disk input a case needs; return the path the case names."""
    if kind == "empty_dir":
        (tmp / "empty").mkdir()
        return tmp / "empty"
    if kind == "cifar_wrong_format":
        (tmp / "cifar").mkdir()
        (tmp / "cifar" / "readme.txt").write_text("not cifar")
        return tmp / "cifar"
    if kind == "cifar_truncated":
        folder = tmp / "cifar" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "batches.meta"]:
            (folder / name).write_bytes(pickle.dumps({b"data": b"x" * 100})[:20])
        return tmp / "cifar"
    if kind == "one_class":
        from PIL import Image

        (tmp / "images" / "cat").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i, i, i)).save(tmp / "images" / "cat" / f"{i}.png")
        return tmp / "images"
    if kind == "not_images":
        (tmp / "images" / "a").mkdir(parents=True)
        (tmp / "images" / "b").mkdir(parents=True)
        (tmp / "images" / "a" / "x.txt").write_text("hi")
        return tmp / "images"
    if kind == "a_file":
        (tmp / "file.txt").write_text("keep")
        return tmp / "file.txt"
    if kind == "truncated_run_record":
        (tmp / "exp").mkdir()
        (tmp / "exp" / "raytune_opt_run.json").write_text('{"format": "raytune-opt/exp')
        (tmp / "exp" / "spec.input.yaml").write_text((ROOT / DIGITS).read_text())
        return tmp / "exp"
    if kind == "other_version":
        (tmp / "exp").mkdir()
        (tmp / "exp" / "raytune_opt_run.json").write_text(json.dumps(
            {"format": "raytune-opt/experiment/v0", "overrides": [], "dry_run": False, "spec_sha256": "x"}))
        (tmp / "exp" / "spec.input.yaml").write_text((ROOT / DIGITS).read_text())
        return tmp / "exp"
    if kind == "no_tune_state":
        from raytune_opt.spec import load_spec

        spec = load_spec(ROOT / DIGITS)
        (tmp / "exp").mkdir()
        (tmp / "exp" / "raytune_opt_run.json").write_text(json.dumps(
            {"format": "raytune-opt/experiment/v1", "overrides": [], "dry_run": False, "spec_sha256": spec.sha256()}))
        (tmp / "exp" / "spec.input.yaml").write_text((ROOT / DIGITS).read_text())
        return tmp / "exp"
    if kind == "truncated_checkpoint":
        exp = tmp / "exp"
        (exp / "trial_1" / "ckpt").mkdir(parents=True)
        from raytune_opt.spec import load_spec

        spec = load_spec(ROOT / DIGITS)
        (exp / "spec.yaml").write_text(spec.to_yaml())
        (exp / "trial_1" / "ckpt" / "best.pt").write_bytes(b"PK\x03\x04truncated")
        (exp / "results.csv").write_text("trial_id,status,epochs,best_val_accuracy\nt1,ok,3,0.9\n")
        (exp / "best.json").write_text(json.dumps({
            "trial_id": "t1", "metric": "val_accuracy", "mode": "max", "value": 0.9, "config": {}, "metrics": {},
            "epochs": 3, "checkpoint": str(exp / "trial_1" / "ckpt" / "best.pt"), "spec_sha256": spec.sha256()}))
        return exp
    if kind == "huge_spec":
        (tmp / "huge.yaml").write_bytes(b"# padding\n" * 200_000)
        return tmp / "huge.yaml"
    raise AssertionError(kind)


# (id, setup kind or None, arguments with {p} for the prepared path and {t} for tmp_path, fragment)
CASES = [
    # CLI flags and arguments
    ("no-subcommand", None, [], "required"),
    ("unknown-subcommand", None, ["train"], "invalid choice"),
    ("unknown-flag", None, ["run", DIGITS, "--fast"], "unrecognized arguments"),
    ("validate-missing-file", None, ["validate", "{t}/nope.yaml"], "file not found"),
    ("validate-a-directory", None, ["validate", "{t}"], "is a directory"),
    ("run-missing-file", None, ["run", "{t}/nope.yaml"], "file not found"),
    ("submit-without-address", None, ["submit", DIGITS], "--address"),
    ("submit-follow-and-no-wait", None, ["submit", DIGITS, "--address", "http://127.0.0.1:8265", "--follow",
                                         "--no-wait"], "not allowed with"),
    # overrides
    ("override-without-equals", None, ["validate", DIGITS, "train.epochs"], "must be key=value"),
    ("override-unknown-key", None, ["validate", DIGITS, "train.epoch=3"], "did you mean 'epochs'"),
    ("override-bad-yaml", None, ["validate", DIGITS, "train.epochs=[1,"], "not valid YAML"),
    ("override-wrong-type", None, ["run", DIGITS, "train.epochs=many"], "must be an integer"),
    ("override-after-a-flag-checked", None, ["validate", DIGITS, "--quiet", "train.epochs=many"],
     "must be an integer"),
    ("stray-word-after-a-flag", None, ["run", DIGITS, "--dry-run", "train.epochs"], "must be key=value"),
    ("resume-with-override", None, ["resume", "{t}", "name=x"], "resume takes no key=value overrides"),
    ("promote-with-override", None, ["promote", "{t}", "name=x"], "promote takes no key=value overrides"),
    ("override-empty-key", None, ["validate", DIGITS, "=3"], "not a dotted key"),
    ("override-bad-domain", None, ["validate", DIGITS, "space.model.dropout={uniform: [0.5, 0.1]}"],
     "low must be below high"),
    ("override-too-many-cpus", None, ["run", DIGITS, "resources.cpus_per_worker=4096"], "this machine has"),
    ("storage-is-a-file", "a_file", ["run", DIGITS, "--storage", "{p}"], "cannot write the experiment"),
    # data directories (checked before Ray starts)
    ("cifar-root-missing", None, ["run", CIFAR, "data.root={t}/none", "--dry-run", "--storage", "{t}/o"], "none"),
    ("cifar-root-empty", "empty_dir", ["run", CIFAR, "data.root={p}", "--dry-run", "--storage", "{t}/o"], "empty"),
    ("cifar-wrong-format", "cifar_wrong_format", ["run", CIFAR, "data.root={p}", "--dry-run", "--storage", "{t}/o"],
     "cifar-10-batches-py"),
    ("cifar-truncated", "cifar_truncated", ["run", CIFAR, "data.root={p}", "--dry-run", "--storage", "{t}/o"],
     "truncated or corrupt"),
    ("cifar-root-is-a-file", "a_file", ["run", CIFAR, "data.root={p}", "--dry-run", "--storage", "{t}/o"],
     "file.txt"),
    ("imagefolder-one-class", "one_class", ["run", IMAGES, "data.root={p}", "--dry-run", "--storage", "{t}/o"],
     "one class"),
    ("imagefolder-no-images", "not_images", ["run", IMAGES, "data.root={p}", "--dry-run", "--storage", "{t}/o"],
     "images"),
    # checkpoints
    ("truncated-checkpoint", "truncated_checkpoint", ["promote", "{p}", "--targets", "onnx"], "best.pt"),
    # experiment directories
    ("promote-not-an-experiment", "empty_dir", ["promote", "{p}"], "not"),
    ("promote-missing-dir", None, ["promote", "{t}/nowhere"], "nowhere"),
    ("promote-a-file", "a_file", ["promote", "{p}"], "file.txt"),
    ("resume-not-an-experiment", "empty_dir", ["resume", "{p}"], "not a raytune-opt experiment"),
    ("resume-missing-dir", None, ["resume", "{t}/nowhere"], "not a directory"),
    ("resume-truncated-record", "truncated_run_record", ["resume", "{p}"], "unreadable or truncated"),
    ("resume-other-version", "other_version", ["resume", "{p}"], "another raytune-opt version"),
    ("resume-no-tune-state", "no_tune_state", ["resume", "{p}"], "experiment state is missing"),
    # file contents the YAML reader refuses, and endpoints (storage.py once asserted on them)
    ("spec-too-large", "huge_spec", ["validate", "{p}"], "too large for a spec"),
    ("promote-endpoint-not-a-url", None, ["promote", "s3://bucket/x", "--endpoint-url", "notaurl"],
     "--endpoint-url 'notaurl': must be http(s)://HOST[:PORT]"),
    ("promote-endpoint-bad-port", None, ["promote", "s3://bucket/x", "--endpoint-url", "http://h:99999"],
     "must be http(s)://HOST[:PORT]"),
    # cluster addresses
    ("submit-gcs-address", None, ["submit", DIGITS, "--address", "127.0.0.1:6379"], "not a Ray dashboard URL"),
    ("submit-ray-client-address", None, ["submit", DIGITS, "--address", "ray://127.0.0.1:10001"],
     "not a Ray dashboard URL"),
    ("submit-no-host", None, ["submit", DIGITS, "--address", "http://"], "not a Ray dashboard URL"),
    ("submit-unreachable", None, ["submit", DIGITS, "--address", "http://127.0.0.1:9", "--no-wait"],
     "did not take the job"),
    ("submit-spec-outside-working-dir", None, ["submit", "{t}/nope.yaml", "--address", "http://127.0.0.1:9"],
     "nope.yaml"),
    ("run-unreachable-cluster", None, ["run", DIGITS, "--address", "127.0.0.1:9", "--storage", "{t}/o"],
     "cannot join the Ray cluster"),
]


# Run through the console script in a fresh process (see the module docstring).
CONSOLE = {"no-subcommand", "unknown-flag", "override-bad-yaml", "storage-is-a-file", "cifar-truncated",
           "imagefolder-no-images", "truncated-checkpoint", "resume-no-tune-state", "spec-too-large",
           "promote-endpoint-not-a-url", "submit-unreachable", "run-unreachable-cluster"}


def _in_process(argv: list[str], monkeypatch, capsys) -> subprocess.CompletedProcess:
    from raytune_opt.cli import main

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


def test_corpus_size():
    spec_cases = len(list((ROOT / "tests" / "spec" / "bad").glob("*.yaml")))
    assert len(CASES) + spec_cases >= 60
    assert CONSOLE <= {c[0] for c in CASES}  # a renamed case must not slip out of the console-script runs


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_bad_input_exits_2_with_one_clear_line(case, tmp_path, monkeypatch, capsys):
    name, kind, args, fragment = case
    prepared = _setup(kind, tmp_path) if kind else None
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    argv = [a.replace("{p}", str(prepared)).replace("{t}", str(tmp_path)) for a in args]
    proc = _cli(*argv) if name in CONSOLE else _in_process(argv, monkeypatch, capsys)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert len(err) == 1, proc.stderr
    assert fragment in err[0], err[0]
    after = {p: p.read_bytes() for p in before}
    assert after == before  # nothing written earlier changed
