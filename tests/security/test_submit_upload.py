"""What `submit` sends to a cluster (issue 25, section 4): never secrets, VCS metadata,
virtual envs or caches; never / or $HOME; one line before it sends; `--show-upload` lists
it all without contacting the cluster; and the list is what Ray packages (fast: no cluster;
the real submit is in tests/cluster/test_jobs.py)."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

from raytune_opt import jobs
from raytune_opt.cli import main
from tests._procs import free_port

ROOT = Path(__file__).resolve().parents[2]
# What a user's project may hold besides its code: each must stay on this machine.
SECRETS = {".env": "AWS_SECRET_ACCESS_KEY=leaked\n", ".env.local": "TOKEN=leaked\n",
           ".ssh/id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\n", ".aws/credentials": "[default]\nkey=leaked\n",
           ".netrc": "machine x login u password leaked\n", "x.pem": "-----BEGIN CERTIFICATE-----\n",
           "k.key": "leaked\n", "deploy/id_ed25519": "leaked\n", ".docker/config.json": '{"auths": {}}\n'}
JUNK = {".git/HEAD": "ref: refs/heads/main\n", ".git/config": "[core]\n", ".venv/pyvenv.cfg": "home = /usr\n",
        ".venv/lib/site.py": "", "myenv/pyvenv.cfg": "home = /usr\n", "myenv/bin/activate": "",
        "__pycache__/train.cpython-311.pyc": "", "pkg/__pycache__/m.cpython-311.pyc": "",
        ".pytest_cache/README.md": "", "scratch.log": "ignored by .gitignore\n"}
# What the job needs: these, and nothing else, go.
PROJECT = {"spec.yaml": None, "train_helpers.py": "X = 1\n", "pkg/__init__.py": "", "pkg/m.py": "Y = 2\n",
           "data/small.csv": "a,b\n1,2\n", ".gitignore": "scratch.log\n"}


def make_project(base: Path, spec: Path = ROOT / "search_spaces" / "digits_cnn.yaml") -> Path:
    """A working directory with secrets, VCS metadata, virtual envs, caches, a .gitignore'd
    file and a link out of it beside the project's own files; the spec is a copy of ``spec``."""
    root = base / "project"
    for rel, text in {**SECRETS, **JUNK, **PROJECT}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            shutil.copy(spec, root / rel)
        else:
            (root / rel).write_text(text)
    outside = base / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("leaked\n")
    (root / "home_link").symlink_to(outside, target_is_directory=True)  # Ray would follow it
    return root


def _unused_address() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: any contact would fail


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if anything builds a Job SDK client."""
    import ray.job_submission

    class Client:
        def __init__(self, address):
            raise AssertionError(f"the cluster at {address} was contacted")

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


def _shown(out: str) -> tuple[set[str], dict[str, str]]:
    """--show-upload's output: the paths that go, and path -> reason for what is left out."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith("go to the cluster:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("left out"))
    sent = {line.split("  (")[0].strip() for line in lines[start + 1:end]}
    left = {line.split("  (")[0].strip(): line.split("  (")[1].split(":")[0] for line in lines[end + 1:]
            if line.startswith("  ")}
    return sent, left


def test_show_upload_lists_only_the_project_files_and_sends_nothing(tmp_path, monkeypatch, capsys, no_cluster):
    root = make_project(tmp_path)
    monkeypatch.chdir(root)
    rc = main(["submit", "spec.yaml", "--address", _unused_address(), "--show-upload"])
    out = capsys.readouterr().out
    assert rc == 0, out
    sent, left = _shown(out)
    assert sent == set(PROJECT)
    assert {left[p] for p in (".env", ".env.local", ".ssh/", ".aws/", ".netrc", "x.pem", "k.key",
                              "deploy/id_ed25519", ".docker/config.json")} == {"secret"}
    assert left[".git/"] == "VCS metadata"
    assert left[".venv/"] == left["myenv/"] == "virtual env"  # myenv/ by its pyvenv.cfg
    assert left["__pycache__/"] == left["pkg/__pycache__/"] == left[".pytest_cache/"] == "cache"
    assert left["scratch.log"] == ".gitignore"
    assert left["home_link"] == "link out of the directory"
    assert "leaked" not in out


def test_the_list_is_what_ray_packages(tmp_path):
    """The same excludes, through Ray's own zip of a working_dir: the same files."""
    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import _zip_files

    root = make_project(tmp_path)
    plan = jobs.upload_plan(root, ["data"])
    package = tmp_path / "pkg.zip"
    _zip_files(str(root), get_runtime_env_default_excludes() + plan.excludes, str(package), include_gitignore=True)
    with zipfile.ZipFile(package) as z:
        zipped = sorted(n for n in z.namelist())
    assert zipped == sorted(path for path, _ in plan.files)
    assert "data/small.csv" not in zipped and "spec.yaml" in zipped


def test_exclude_leaves_more_out_and_can_put_a_default_back(tmp_path, monkeypatch, capsys, no_cluster):
    root = make_project(tmp_path)
    (root / ".env.example").write_text("TOKEN=\n")  # a template, left out by .env.* unless put back
    monkeypatch.chdir(root)
    rc = main(["submit", "spec.yaml", "--address", _unused_address(), "--show-upload",
               "--exclude", "data", "--exclude", "*.py", "--exclude", "!.env.example"])
    sent, left = _shown(capsys.readouterr().out)
    assert rc == 0
    assert sent == {"spec.yaml", ".gitignore", ".env.example"}
    assert left["data/"] == left["train_helpers.py"] == left["pkg/m.py"] == "--exclude"
    assert left[".env"] == "secret"


def test_one_line_says_what_goes_before_it_goes(tmp_path, monkeypatch, capsys):
    import ray.job_submission

    sent = {}

    class Client:
        def __init__(self, address):
            pass

        def submit_job(self, **kwargs):
            sent.update(kwargs)
            return "raysubmit_1"

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    root = make_project(tmp_path)
    monkeypatch.chdir(root)
    rc = main(["submit", "spec.yaml", "--address", _unused_address(), "--no-wait"])
    out = capsys.readouterr().out
    assert rc == 0
    size = sum((root / p).stat().st_size for p in PROJECT)
    (line,) = [line for line in out.splitlines() if "uploading" in line]
    assert line == (f"raytune-opt: uploading 6 files ({jobs._size(size)}) from {root}; left out: 9 secrets (.aws/, .docker/config.json, "
                    ".env, ...), 1 VCS directory (.git/), 2 virtual envs (.venv/, myenv/), 3 caches (.pytest_cache/, "
                    "__pycache__/, pkg/__pycache__/), 1 link out of the directory (home_link), 1 in .gitignore "
                    "(scratch.log); see --show-upload")
    assert out.index("uploading") < out.index("submitted job")
    assert sent["runtime_env"]["excludes"] == jobs.upload_plan(root).excludes


@pytest.mark.parametrize("which", ["home", "above home", "root"])
def test_home_and_root_are_refused_as_the_working_directory(tmp_path, monkeypatch, capsys, no_cluster, which):
    home = tmp_path / "home" / "me"
    monkeypatch.setenv("HOME", str(home))
    root = make_project(home)
    shutil.copy(root / "spec.yaml", home / "spec.yaml")
    monkeypatch.chdir(home)
    working_dir = {"home": str(home), "above home": str(tmp_path / "home"), "root": os.sep}[which]
    # Without --show-upload: refused before anything is packaged or any cluster contacted.
    rc = main(["submit", "spec.yaml", "--address", _unused_address(), "--working-dir", working_dir, "--no-wait"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"--working-dir {Path(working_dir).resolve()}: ") and "pass --working-dir PROJECT_DIR" in line


def test_a_spec_left_out_of_the_upload_is_refused(tmp_path, monkeypatch, capsys, no_cluster):
    root = make_project(tmp_path)
    monkeypatch.chdir(root)
    rc = main(["submit", "spec.yaml", "--address", _unused_address(), "--exclude", "*.yaml"])
    (line,) = capsys.readouterr().err.splitlines()
    assert rc == 2
    assert line.startswith("spec.yaml: left out of the upload (--exclude: *.yaml)") and "--exclude '!spec.yaml'" in line


def test_the_readme_shows_the_default_excludes():
    import re

    readme = (ROOT / "README.md").read_text()
    for reason, patterns in jobs.UPLOAD_EXCLUDES.items():
        (row,) = re.findall(rf"^  \| {re.escape(reason)} \| (.+) \|$", readme, re.M)
        shown = re.findall(r"`([^`]+)`", row.split(", and any")[0])
        assert shown == list(patterns), f"README's '{reason}' row: {shown}, jobs.UPLOAD_EXCLUDES: {list(patterns)}"
