"""Ray Tune's experiment state, kept resumable through a crash at any moment.

Tune saves its state (``experiment_state-<session>.json`` and the search generator's, the
searcher's and the callbacks' pickles of the same session) into a staging directory on the
driver, then a background thread copies the staging directory into the experiment
directory with ``pyarrow.fs.copy_files``, which overwrites each file in place. A driver
killed during that copy leaves a truncated file, and ``Tuner.restore`` then fails
(``EOFError: Ran out of input``, a ``JSONDecodeError``): the experiment could not be
resumed at all (seen in our kill-and-resume test; Ray offers no fallback).

So on a local or shared-file-system experiment :class:`KeepState` copies each session's
state files, right after Tune saved them (Tune saves synchronously in the driver thread,
before ``on_step_end``: the staging files are whole then), into
``.tune-state/<session>.<n>/``, one complete set per directory, made whole before it is
renamed into place. :func:`repair`, before a resume, checks that the newest session's files
in the experiment directory read back; if not, it puts the kept copy in their place, or
else sets that session aside so that Tune restores the one before it. Going back a few
seconds is what any kill does anyway: trials Tune had not saved yet are proposed again and
:func:`raytune_opt.trial._claim` keeps their forgotten checkpoints apart.

An ``s3://`` experiment needs the same: S3 replaces an object only once its upload
completes, so no file is cut short, but Ray's upload of the staging directory goes file by
file, and a driver killed between two uploads leaves the ``experiment_state`` of one save
beside the search generator's state of another (seen in CI: a resumed sweep of 4 random
trials ran 5). There the kept copy is one object, ``.tune-state/<session>.zip`` (an object
appears whole or not at all), and :func:`repair_remote` runs :func:`repair` on a local copy
of the bucket's state and writes back what it changed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from ray import tune

from raytune_opt import _atomic
from raytune_opt._paths import ensure_under
from raytune_opt._warn import WarnOnce
from raytune_opt.errors import UsageError

KEPT = ".tune-state"
# Tune's per-session files: experiment_state-, search_gen_state-, searcher-state-,
# callback-states- (and basic-variant-state-), each named by the session's start time.
_STAMP = r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}"  # a session's name: its driver's start time
_SESSION_FILE = re.compile(rf"^[a-z_-]+-({_STAMP})\.(json|pkl)$")
_KEPT_DIR = re.compile(rf"^({_STAMP})\.(\d+)$")
_KEPT_ZIP = re.compile(rf"^({_STAMP})\.zip$")  # an S3 experiment's kept copy


def _session_files(directory: Path) -> dict[str, list[Path]]:
    """Tune's state files in ``directory``, by session."""
    out: dict[str, list[Path]] = {}
    if directory.is_dir():
        with os.scandir(directory) as entries:  # names first: one trial directory each, no stat
            for e in entries:
                m = _SESSION_FILE.match(e.name)
                if m and e.is_file():
                    out.setdefault(m.group(1), []).append(directory / e.name)
    return out


def _readable(files: list[Path]) -> bool:
    """Whether every file parses whole (a truncated JSON or pickle does not)."""
    import ray.cloudpickle as cloudpickle

    for f in files:
        try:
            data = f.read_bytes()
            if data[:1] == b"\x80":  # a pickle (basic-variant-state-*.json is one too)
                cloudpickle.loads(data)
            else:
                json.loads(data)
        except Exception:  # noqa: BLE001 — any failure to read back means "not whole"
            return False
    return True


class _LocalCopies:
    """Kept copies in ``<exp>/.tune-state/<session>.<n>/``: written whole, then renamed into place."""

    def __init__(self, exp_dir: str | Path):
        self.exp_dir = Path(exp_dir)

    def put(self, session: str, files: dict[str, bytes]) -> None:
        root = self.exp_dir / KEPT
        tmp = root / f".tmp-{session}"
        ensure_under(tmp, self.exp_dir, "a copy of Ray Tune's state being made")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        # Numbered after what is there: a resume within the same second as its driver's start
        # shares the session's name.
        kept = [int(m.group(2)) for d in root.iterdir() if (m := _KEPT_DIR.match(d.name)) and m.group(1) == session]
        final = root / f"{session}.{max(kept, default=0) + 1:06d}"
        ensure_under(final, self.exp_dir, "a copy of Ray Tune's state")
        os.rename(tmp, final)  # the set appears whole or not at all
        for n in kept:
            older = root / f"{session}.{n:06d}"
            ensure_under(older, self.exp_dir, "an older copy of Ray Tune's state")
            shutil.rmtree(older, ignore_errors=True)


class _S3Copies:
    """The kept copy of an S3 experiment: one object, ``<exp>/.tune-state/<session>.zip``,
    replaced by each save (S3 makes an object visible only once its upload completed)."""

    def __init__(self, filesystem, fs_path: str):
        self.s3, self.fs_path = filesystem, fs_path

    def put(self, session: str, files: dict[str, bytes]) -> None:
        _write(self.s3, f"{self.fs_path}/{KEPT}/{session}.zip", _zipped(files))


def _zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(files.items()):
            z.writestr(name, data)
    return buf.getvalue()


class _Keeper:
    """The copying, apart from Tune's callback interface (tested without a sweep).

    Args:
        exp: the experiment directory (copies in ``.tune-state/`` there), or an object with
            ``put(session, {name: bytes})`` that keeps one complete set elsewhere.
    """

    def __init__(self, exp, min_interval_s: float = 0.0, max_share: float = 0.05):
        self.copies = exp if hasattr(exp, "put") else _LocalCopies(exp)
        self.min_interval_s = min_interval_s
        self.max_share = max_share  # of the driver's time, spent copying at most
        self._seen: dict[str, tuple[int, int]] = {}
        self._next = 0.0
        self._files: list[Path] | None = None  # the newest session's files, as last listed
        self._relist_at = 0.0

    def keep(self, staging: Path, force: bool = False) -> bool:
        """Copy the newest session's state files from ``staging`` if they changed; whether it did.
        ``force``: now, whatever the share of the driver's time copying has taken."""
        now = time.monotonic()
        if now < self._next and not force:
            return False
        # The staging directory holds a directory per trial: listing it at every step of
        # Tune's loop grew with the trials (~6 s of the driver's CPU over 1,000 trials,
        # benchmarks/sweep_scale.py). A session's files are all written by its first save,
        # so between listings (every RELIST_S) only the files found are looked at.
        if self._files is None or now >= self._relist_at or force:
            sessions = _session_files(staging)
            newest = sorted(sessions[max(sessions)]) if sessions else []
            if not any(f.name.startswith("experiment_state-") for f in newest):
                return False  # before Tune's first save
            self._files, self._relist_at = newest, now + RELIST_S
        session = _SESSION_FILE.match(self._files[0].name).group(1)
        files = self._files
        try:
            stats = {f.name: (f.stat().st_mtime_ns, f.stat().st_size) for f in files}
            if stats == self._seen:
                return False
            data = {f.name: f.read_bytes() for f in files}
        except FileNotFoundError:  # Tune replaced one meanwhile: next step, from a new listing
            self._files = None
            return False
        self.copies.put(session, data)
        self._seen = stats
        # Copying costs what Tune's own save costs (it grows with the trials): bound its share.
        took = time.monotonic() - now
        self._next = now + max(self.min_interval_s, took / self.max_share)
        return True


class KeepState(tune.Callback):
    """A Tune callback that keeps the last complete copy of Tune's state (module doc)."""

    def __init__(self, exp_dir: str | Path, loc=None):
        """``exp_dir``: the experiment directory (a local experiment), or the local mirror
        of ``loc``, an S3 :class:`raytune_opt.storage.Location`."""
        remote = loc is not None and loc.remote
        self._keeper = _Keeper(_S3Copies(loc.filesystem(), loc.fs_path) if remote else exp_dir)
        where = f"{loc.uri}/{KEPT}" if remote else Path(exp_dir) / KEPT
        self._warn = WarnOnce(f"keeping a copy of Ray Tune's state in {where}", exp_dir,
                              then="the sweep goes on; a crash during Tune's own copy may leave it unresumable")

    def on_step_end(self, iteration, trials, **info):
        self._keep(trials)

    def on_experiment_end(self, trials, **info):
        # Tune's last save (forced, waited for) comes after its last step: without this copy, the
        # kept one lags it, and repair() would put the older one back over a finished sweep's
        # state (a resume of a sweep its budget ended then lost the trials the budget stopped).
        self._keep(trials, force=True)

    def _keep(self, trials, force: bool = False) -> None:
        if trials:  # every trial knows the experiment's staging directory
            try:
                self._keeper.keep(Path(trials[0].storage.experiment_driver_staging_path), force=force)
            except (OSError, UsageError) as exc:  # a full disk, a link out: never stop the sweep for a spare copy
                self._warn(exc)


RELIST_S = 10.0  # how often the keeper lists the staging directory again (for new files)

# A kept copy older than the live state by more than this is not put back over a readable one.
MIXED_MAX_AGE_S = 60.0


def _mixed(files: list[Path], copy: list[Path], copy_dir: Path) -> bool:
    """Whether the live files differ from the kept copy (a complete set from one save), which
    is no older than :data:`MIXED_MAX_AGE_S` than them.

    Tune writes a save's files into its staging directory, then copies that directory in a
    background thread: a kill during the copy, or a save during a copy (Ray warns of
    "consistency issues upon restoration"), leaves the experiment_state of one save beside the
    search generator's state of another; the generator then proposes a trial the state
    already has (one trial too many) or forgets one. The kept copy is always one save's: it
    wins whenever the two differ, going back at most a few seconds (the copying is bounded to
    a share of the driver's time, so it can lag Tune's last save a little).
    """
    live = {f.name: f for f in files}
    if all(live[c.name].read_bytes() == c.read_bytes() for c in copy):
        return False
    newest_live = max(f.stat().st_mtime for f in files)
    return newest_live - copy_dir.stat().st_mtime <= MIXED_MAX_AGE_S


def repair(exp_dir: str | Path, label: str | None = None) -> list[str]:
    """Make the experiment's newest Tune state readable before a resume; what was done.

    A session whose files in the experiment directory do not read back (or lack one its
    kept copy has), or differ from its kept copy (not one save's, see :func:`_mixed`), gets
    its kept copy back; an unreadable one without a copy is moved to
    ``.tune-state/unreadable-<session>/`` and the session before it is tried. ``label``
    names the experiment in what is said (default: ``exp_dir``).
    """
    exp = Path(exp_dir)
    label = label or str(exp)
    root = exp / KEPT
    kept: dict[str, Path] = {}
    if root.is_dir():
        for d in root.iterdir():
            m = _KEPT_DIR.match(d.name)
            if m and d.is_dir() and (m.group(1) not in kept or d.name > kept[m.group(1)].name):
                kept[m.group(1)] = d
    live = _session_files(exp)
    notes: list[str] = []
    for session in sorted(set(live) | set(kept), reverse=True):
        files = live.get(session, [])
        copy = sorted(kept[session].iterdir()) if session in kept else []
        whole = {f.name for f in copy} <= {f.name for f in files}
        live_ok = bool(files) and whole and _readable(files)
        if live_ok and not (copy and _mixed(files, copy, kept[session])):
            return notes
        if copy and _readable(copy):
            for f in copy:
                ensure_under(exp / f.name, exp, "a Ray Tune state file")
                _atomic.write_bytes(exp / f.name, f.read_bytes())
            notes.append(f"{label}: Ray Tune's state files of session {session} differ from its last complete copy "
                         "(Tune's own copy of them may have been cut short); resuming from that copy" if live_ok else
                         f"{label}: Ray Tune's state of session {session} was cut short by the crash; resuming from "
                         "its last complete copy (a few seconds older)")
            return notes
        if live_ok:  # mixed, but the kept copy does not read back: the live files are all there is
            return notes
        aside = root / f"unreadable-{session}"
        aside.mkdir(parents=True, exist_ok=True)
        for f in files:
            ensure_under(aside / f.name, exp, "a Ray Tune state file set aside")
            os.replace(f, aside / f.name)
        where = f"{label}/{KEPT}/{aside.name}" if label != str(exp) else aside
        notes.append(f"{label}: Ray Tune's state of session {session} is unreadable and has no complete "
                     f"copy; set aside in {where}, resuming from the session before it")
    return notes


def repair_remote(loc) -> list[str]:
    """:func:`repair` for an S3 experiment (``loc``: its :class:`raytune_opt.storage.Location`):
    the bucket's state files and kept copies are read into a scratch directory (with the
    objects' times), repaired there, and what changed is written back to the bucket; a
    session set aside moves to ``.tune-state/unreadable-<session>/`` in the bucket."""
    from pyarrow import fs

    s3, base = loc.filesystem(), loc.fs_path
    with tempfile.TemporaryDirectory(prefix="rt-tune-state-") as scratch:
        exp = Path(scratch)
        for info in s3.get_file_info(fs.FileSelector(base, allow_not_found=True)):
            if info.type == fs.FileType.File and _SESSION_FILE.match(info.base_name):
                (exp / info.base_name).write_bytes(_read(s3, info.path))
                _stamp(exp / info.base_name, info)
        for info in s3.get_file_info(fs.FileSelector(f"{base}/{KEPT}", allow_not_found=True)):
            if info.type == fs.FileType.File and (m := _KEPT_ZIP.match(info.base_name)):
                copy = exp / KEPT / f"{m.group(1)}.000001"  # laid out as a local experiment's copy
                try:
                    with zipfile.ZipFile(io.BytesIO(_read(s3, info.path))) as z:
                        z.extractall(copy)
                except (zipfile.BadZipFile, OSError):  # not ours whole: no copy, as before the keeping
                    ensure_under(copy, exp, "a kept copy of Ray Tune's state")
                    shutil.rmtree(copy, ignore_errors=True)
                    continue
                _stamp(copy, info)
        before = {f.name: f.read_bytes() for f in exp.iterdir() if f.is_file()}
        notes = repair(exp, label=loc.uri)
        after = {f.name: f.read_bytes() for f in exp.iterdir() if f.is_file()}
        for name, data in after.items():
            if before.get(name) != data:
                _write(s3, f"{base}/{name}", data)
        for name in set(before) - set(after):  # set aside: kept beside, then gone from Tune's view
            [moved] = (exp / KEPT).glob(f"unreadable-*/{name}")
            _write(s3, f"{base}/{KEPT}/{moved.parent.name}/{name}", moved.read_bytes())
            s3.delete_file(f"{base}/{name}")
    return notes


def _read(s3, path: str) -> bytes:
    with s3.open_input_stream(path) as src:
        return src.read()


def _write(s3, path: str, data: bytes) -> None:
    """One object, visible only once whole (an S3 PUT)."""
    with s3.open_output_stream(path) as out:
        out.write(data)


def _stamp(path: Path, info) -> None:
    """Give ``path`` the object's time: :func:`_mixed` compares the live files' and the copy's."""
    t = info.mtime.timestamp()
    os.utime(path, (t, t))
