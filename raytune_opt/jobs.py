"""Submitting a sweep to a Ray cluster as a Ray job (Ray's Job Submission SDK).

The job runs ``raytune-opt run SPEC ...`` on the head node, in a copy of the working
directory; inside the job ``RAY_ADDRESS`` is set, so ``run`` joins the cluster.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from raytune_opt import ray_runtime
from raytune_opt.errors import UsageError

# What `submit` leaves out of the job's working directory by default, by reason (README,
# "Running on a cluster"). Gitignore-style patterns as Ray's runtime_env "excludes" take
# them: a pattern without "/" matches a file or directory of that name at any depth, one
# with a leading "/" only at the top. Ray adds its own (.git, .venv, venv, __pycache__) and
# honours .gitignore and .rayignore; the user adds --exclude PATTERN ("!PATTERN" puts a
# default one back). Secrets first: nothing in a working directory should carry them to a
# cluster whose every job and node can read the package.
UPLOAD_EXCLUDES: dict[str, tuple[str, ...]] = {
    "secret": (
        ".env", ".env.*", ".envrc", ".netrc", "_netrc", ".pgpass", ".git-credentials", ".pypirc", ".npmrc",
        ".ssh", ".aws", ".gnupg", ".kube", ".azure", "**/.config/gcloud", "**/.docker/config.json",
        "**/.ray/auth_token", "credentials", "credentials.json", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks",
        "*.keystore", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.tfstate", "*.tfstate.backup",
    ),
    "VCS metadata": (".git", ".hg", ".svn", ".bzr"),
    # Also any directory holding pyvenv.cfg (a venv) or conda-meta/ (a conda env), found on the way.
    "virtual env": (".venv", "venv", ".conda", ".tox", ".nox"),
    "cache": ("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis",
              ".ipynb_checkpoints", "*.egg-info"),
    # What raytune-opt writes (the default storage.path, MLflow's file store, W&B's run files and
    # debug logs, benchmark runs) and model files: they would crowd out Ray's 100 MiB cap
    # (ray#45602) and the job needs none.
    "output": ("/results", "mlruns", "wandb", "/benchmarks/out", "*.pt", "*.onnx", "*.engine"),
}
# How the one-line summary names each reason: singular, plural.
_REASONS = {"secret": ("secret", "secrets"), "VCS metadata": ("VCS directory", "VCS directories"),
            "virtual env": ("virtual env", "virtual envs"), "cache": ("cache", "caches"),
            "output": ("output", "outputs"),
            "link out of the directory": ("link out of the directory", "links out of the directory"),
            "--exclude": ("--exclude match", "--exclude matches"), ".gitignore": ("in .gitignore", "in .gitignore"),
            ".rayignore": ("in .rayignore", "in .rayignore"), "Ray default": ("Ray default", "Ray defaults")}
WORKING_DIR_LIMIT = 100 * 1024 * 1024
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 180  # seconds; on a busy 2-core machine the job agent took over a minute


def check_address(address: str) -> str:
    """The dashboard address for the Job SDK; a warning for plain http off loopback.

    Raises:
        UsageError: not an http(s) URL with a host.
    """
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"--address {address}: not a Ray dashboard URL; write http://HOST:8265 "
                         "(the Job API runs on the dashboard port, not the GCS port 6379)")
    if url.scheme == "http" and not ray_runtime.is_loopback_host(url.hostname):
        print(f"raytune-opt: warning: {address} is plain http to a non-loopback host: the auth token and the "
              "working directory travel unencrypted; use an SSH port-forward or https", file=sys.stderr)
    return address


def check_working_dir(working_dir: str) -> Path:
    """The resolved working directory; never ``/``, ``$HOME`` or a directory holding ``$HOME``.

    Raises:
        UsageError: one of those (every key and token of the user would travel).
    """
    root = Path(working_dir).expanduser().resolve()
    home = Path.home().resolve()
    if root == Path(root.anchor) or root == home or root in home.parents:
        what = "the root directory" if root == Path(root.anchor) else \
            "your home directory" if root == home else "a directory that holds your home directory"
        raise UsageError(f"--working-dir {root}: {what}; everything under it (keys, tokens, other projects) would go "
                         "to the cluster; pass --working-dir PROJECT_DIR")
    if not root.is_dir():
        raise UsageError(f"--working-dir {working_dir}: not a directory; pass --working-dir PROJECT_DIR")
    return root


@dataclass
class UploadPlan:
    """What a job's working directory sends: exactly what Ray packages from ``root`` with
    ``excludes`` as runtime_env["excludes"] (Ray adds its defaults and the ignore files)."""

    root: Path
    excludes: list[str]  # runtime_env["excludes"]
    files: list[tuple[str, int]] = field(default_factory=list)  # (relative path, bytes); an empty dir ends in "/"
    left_out: list[tuple[str, str, str]] = field(default_factory=list)  # (relative path, reason, pattern)

    @property
    def size(self) -> int:
        return sum(n for _, n in self.files)

    @property
    def file_count(self) -> int:
        return sum(1 for f, _ in self.files if not f.endswith("/"))

    def summary(self) -> str:
        """One line: files, size, what was left out and why."""
        by_reason: dict[str, list[str]] = {}
        for path, reason, _ in self.left_out:
            by_reason.setdefault(reason, []).append(path)
        parts = []
        for reason in sorted(by_reason, key=list(_REASONS).index):
            paths = by_reason[reason]
            one, many = _REASONS[reason]
            shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
            parts.append(f"{len(paths)} {one if len(paths) == 1 else many} ({shown})")
        return (f"uploading {self.file_count} files ({_size(self.size)}) from {self.root}; "
                f"left out: {', '.join(parts) or 'nothing'}; see --show-upload")

    def listing(self) -> list[str]:
        """Every file that goes, then everything left out and why (``--show-upload``)."""
        lines = [f"{self.file_count} files ({_size(self.size)}) from {self.root} would go to the cluster:"]
        lines += [f"  {path}  ({_size(n)})" for path, n in self.files]
        lines.append(f"left out ({len(self.left_out)}):" if self.left_out else "left out: nothing")
        lines += [f"  {path}  ({reason}: {pattern})" for path, reason, pattern in self.left_out]
        return lines


def upload_plan(root: Path, user_excludes: list[str] = ()) -> UploadPlan:
    """What Ray will upload from ``root`` and what it leaves out, with the excludes to pass it.

    Both come from Ray's own walk (``_dir_travel``, a private helper: the point is to list
    exactly what Ray packages) over Ray's own matcher of Ray's defaults plus the excludes we
    pass, and the .gitignore / .rayignore files it honours. A first walk finds what no
    pattern names: virtual envs by their pyvenv.cfg or conda-meta/, and links that lead out
    of ``root`` (Ray follows them); they are left out by anchored patterns, before the
    user's, so that ``--exclude '!PATH'`` can put one back.
    """
    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = root.resolve()
    ours = [p for patterns in UPLOAD_EXCLUDES.values() for p in patterns]
    user = list(user_excludes)
    ray_defaults = get_runtime_env_default_excludes()
    gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"  # as Ray's Job SDK reads it
    quiet = logging.getLogger("raytune_opt.working_dir")  # Ray logs every ignore file at INFO
    quiet.setLevel(logging.WARNING)

    found: dict[str, tuple[str, str]] = {}  # anchored pattern -> (reason, what showed it)
    static = _get_excludes(root, ray_defaults + ours + user)

    def discover(path: Path) -> bool:
        if static(path):
            return True
        why = _unnamed_exclusion(root, path)
        if why:
            found["/" + _escape(path.relative_to(root).as_posix())] = why
        return why is not None

    _dir_travel(root, [discover], lambda path: None, include_gitignore=gitignore, logger=quiet)

    plan = UploadPlan(root, ours + list(found) + user)
    matcher = _get_excludes(root, ray_defaults + plan.excludes)  # the very matcher Ray builds
    # Why a path is left out: the first pattern, in this order, that matches it alone.
    reasons = [(reason, pattern, _get_excludes(root, [pattern]))
               for reason, patterns in [("--exclude", user), *UPLOAD_EXCLUDES.items(), ("Ray default", ray_defaults)]
               for pattern in patterns if not pattern.startswith("!")]
    seen: set[Path] = set()

    def excluded(path: Path) -> bool:
        if not matcher(path):
            return False
        rel = "/" + _escape(path.relative_to(root).as_posix())
        why = found.get(rel) or next(((r, p) for r, p, match in reasons if match(path)), ("Ray default", "?"))
        plan.left_out.append((_shown(root, path), *why))
        seen.add(path)
        return True

    def visit(path: Path) -> None:
        seen.add(path)
        if path.is_file():
            plan.files.append((path.relative_to(root).as_posix(), path.stat().st_size))
        elif path.is_dir() and path != root and next(path.iterdir(), None) is None:
            plan.files.append((path.relative_to(root).as_posix() + "/", 0))  # Ray keeps empty dirs

    _dir_travel(root, [excluded], visit, include_gitignore=gitignore, logger=quiet)
    # What the walk skipped without our matcher saying so: an ignore file said so.
    for parent in sorted(p for p in seen if p.is_dir() and not matcher(p)):
        for child in sorted(parent.iterdir()):
            if child not in seen:
                plan.left_out.append((_shown(root, child), *_ignore_file(root, child, gitignore)))
    plan.files.sort()
    plan.left_out.sort()
    return plan


def _unnamed_exclusion(root: Path, path: Path) -> tuple[str, str] | None:
    """(reason, what shows it) for a link that leads out of ``root`` or a venv / conda env."""
    if path == root:
        return None
    if path.is_symlink() and not path.resolve().is_relative_to(root):
        return "link out of the directory", f"to {path.resolve()}"
    for marker in ("pyvenv.cfg", "conda-meta"):
        if path.is_dir() and (path / marker).exists():
            return "virtual env", f"holds {marker}"
    return None


def _ignore_file(root: Path, path: Path, gitignore: bool) -> tuple[str, str]:
    """Which ignore file (.gitignore or .rayignore, nearest first) leaves ``path`` out."""
    from ray._private.runtime_env.packaging import _get_ignore_file

    for folder in [path.parent, *path.parent.parents]:
        for name in ((".gitignore", ".rayignore") if gitignore else (".rayignore",)):
            match = _get_ignore_file(folder, name)
            if match is not None and match(path):
                return name, (folder / name).relative_to(root).as_posix()
        if folder == root:
            break
    return ".gitignore", "?"


def _shown(root: Path, path: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return rel + "/" if path.is_dir() and not path.is_symlink() else rel


def _escape(rel: str) -> str:
    """A relative path as a gitignore-style pattern that matches only that path."""
    from ray._private.thirdparty.pathspec.patterns.gitwildmatch import GitWildMatchPattern

    return GitWildMatchPattern.escape(rel)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def entrypoint(spec: str, overrides: list[str], storage: str | None, dry_run: bool) -> str:
    args = ["raytune-opt", "run", spec, *overrides]
    if storage:
        args += ["--storage", storage]
    if dry_run:
        args.append("--dry-run")
    return " ".join(shlex.quote(a) for a in args)


def submit(spec: str, overrides: list[str], address: str, *, storage: str | None = None, follow: bool = False,
           no_wait: bool = False, working_dir: str = ".", dry_run: bool = False, excludes: list[str] = (),
           show_upload: bool = False) -> int:
    """Submit ``raytune-opt run SPEC`` as a Ray job; return the exit code to use.

    The working directory travels with the job, less :data:`UPLOAD_EXCLUDES`, its ignore
    files and ``excludes`` (one line says what goes and what stays). With ``show_upload``
    the whole list is printed and nothing is sent: the cluster is not contacted. With
    ``follow`` the job's logs stream here; without ``no_wait`` we wait for the end. The
    exit code follows the job's: 0 when it succeeded, 1 otherwise (and 0 after submitting
    with ``no_wait``).

    Raises:
        UsageError: bad address or working directory (``/``, ``$HOME``), the spec outside
            the upload, working dir too large, unreachable or refusing cluster.
    """
    from raytune_opt.ray_runtime import set_auth_mode

    check_address(address)
    root = check_working_dir(working_dir)
    if not (root / spec).is_file() and not Path(spec).is_absolute():
        raise UsageError(f"{spec}: not found under the working directory {root}; the job runs the spec from "
                         "its copy of that directory, so pass a path relative to it")
    plan = upload_plan(root, list(excludes))
    if show_upload:
        print("\n".join(plan.listing()), flush=True)
        return 0
    if not Path(spec).is_absolute():
        rel = Path(os.path.normpath(root / spec))
        if not rel.is_relative_to(root):
            raise UsageError(f"{spec}: outside the working directory {root}; the job runs the spec from its copy "
                             "of that directory, so pass a path under it")
        rel = rel.relative_to(root).as_posix()
        for path, reason, pattern in plan.left_out:
            if rel == path or rel.startswith(path.rstrip("/") + "/"):
                raise UsageError(f"{spec}: left out of the upload ({reason}: {pattern}), so the job could not read "
                                 f"it; put it back with --exclude '!{rel}' or move it")
    if plan.size > WORKING_DIR_LIMIT:
        raise UsageError(f"--working-dir {root}: the job's working directory would be {_size(plan.size)}, over "
                         "Ray's 100 MiB limit; move data and results out of it or leave them out with "
                         "--exclude PATTERN (see --show-upload)")
    print(f"raytune-opt: {plan.summary()}", flush=True)
    set_auth_mode(embedded=False)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                job_id = client.submit_job(
                    entrypoint=entrypoint(spec, overrides, storage, dry_run),
                    runtime_env={"working_dir": str(root), "excludes": plan.excludes,
                                 "env_vars": {"PYTHONUNBUFFERED": "1"}},
                    metadata={"raytune_opt_spec": spec},
                )
                break
            except RuntimeError as exc:
                # Right after `ray start` the dashboard answers before its job agent is up.
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
    except (OSError, RuntimeError, ValueError, AuthenticationError) as exc:
        # What the SDK raises for an unreachable, refusing or token-protected cluster: ConnectionError and
        # requests' errors (OSErrors), RuntimeError for an HTTP error status, ValueError for an address it
        # cannot parse, AuthenticationError for a missing token. A TypeError would be our bug.
        raise UsageError(f"--address {address}: the cluster did not take the job ({_one_line(exc)}); check the "
                         "address, that the cluster runs, and RAY_AUTH_MODE / your token (~/.ray/auth_token)") from None
    print(f"raytune-opt: submitted job {job_id} to {address}", flush=True)
    if no_wait:
        return 0
    if follow:
        import asyncio

        async def tail() -> None:
            async for lines in client.tail_job_logs(job_id):
                print(lines, end="", flush=True)

        asyncio.run(tail())
    status = _wait(client, job_id)
    print(f"raytune-opt: job {job_id} {status.lower()}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _wait(client, job_id: str, poll_s: float = 1.0) -> str:
    while True:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
