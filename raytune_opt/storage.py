"""Where an experiment lives: a local or mounted directory, or ``s3://bucket/prefix``.

Ray Tune and Ray Train write trial results and checkpoints through a ``pyarrow`` filesystem
(``RunConfig(storage_path, storage_filesystem)``); we hand them the same S3 filesystem, built
once from ``storage.endpoint_url`` (S3-compatible servers: MinIO, Ceph, moto). Credentials come
from the usual AWS chain on every node (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a
profile, an instance role): we never put them in a spec or a log.

The files the driver itself writes (``spec.yaml``, ``results.csv``, ``best.json``, the
promotion) are written atomically into a local mirror and then uploaded, so the bucket holds the
whole experiment and a reader never sees half a file (an S3 PUT is all-or-nothing).

A local path on a cluster of several nodes must be visible from every node (NFS, EFS, a
shared mount): :func:`check_shared` asks each node to read a marker the driver wrote.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from raytune_opt import _cache
from raytune_opt._paths import ensure_under
from raytune_opt.errors import UsageError

S3 = "s3://"
_ENDPOINT = re.compile(r"(https?)://([^/\s:@]+(?::(\d{1,5}))?)/?")


def is_remote(uri: str | os.PathLike | None) -> bool:
    return str(uri or "").startswith(S3)


def root_problem(root: str) -> str | None:
    """What is wrong with a storage root (``storage.path`` or ``--storage``), or None."""
    if is_remote(root):
        return s3_problem(root)
    if "://" in root:
        return (f"scheme '{root.split('://', 1)[0]}' is not supported; use a local or mounted directory, "
                "or s3://BUCKET/PREFIX")
    return None


def endpoint_problem(url: str) -> str | None:
    """What is wrong with an S3 endpoint URL, or None (``http(s)://HOST[:PORT]``)."""
    m = _ENDPOINT.fullmatch(url)
    if not m or (m.group(3) and not 0 < int(m.group(3)) < 65536):
        return "must be http(s)://HOST[:PORT], e.g. http://127.0.0.1:9000"
    return None


def endpoint_from_env() -> str | None:
    """The S3 endpoint AWS's own tools use: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``.

    Raises:
        UsageError: the variable that is used holds no ``http(s)://HOST[:PORT]``.
    """
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = os.environ.get(name)
        if value:
            return checked_endpoint(value, f"${name}")
    return None


def checked_endpoint(url: str | None, source: str) -> str | None:
    """``url`` (from ``source``: a flag, a spec key, a variable), checked.

    Raises:
        UsageError: not ``http(s)://HOST[:PORT]``.
    """
    problem = endpoint_problem(url) if url else None
    if problem:
        raise UsageError(f"{source} {url!r}: {problem}")
    return url or None


def resolve_endpoint(url: str | None, source: str = "--endpoint-url") -> str | None:
    """The endpoint to use: ``url`` if given (checked), else the environment's (checked)."""
    return checked_endpoint(url, source) if url else endpoint_from_env()


def s3_filesystem(endpoint_url: str | None):
    """A pyarrow S3 filesystem for AWS (endpoint None) or an S3-compatible server.

    Raises:
        UsageError: ``endpoint_url`` is not ``http(s)://HOST[:PORT]``.
    """
    from pyarrow import fs

    kwargs = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint_url:
        checked_endpoint(endpoint_url, "storage.endpoint_url")
        m = _ENDPOINT.fullmatch(endpoint_url)
        kwargs.update(scheme=m.group(1), endpoint_override=m.group(2))
    return fs.S3FileSystem(**kwargs)


def filesystem(remote: bool, endpoint_url: str | None):
    """The pyarrow filesystem an experiment's files are on: S3 (:func:`s3_filesystem`) or local."""
    from pyarrow import fs

    return s3_filesystem(endpoint_url) if remote else fs.LocalFileSystem()


def read_text(fs_, path: str) -> str | None:
    """A small text file of the experiment on ``fs_`` (:func:`filesystem`); None when it is not there."""
    from pyarrow import fs

    if fs_.get_file_info(path).type != fs.FileType.File:
        return None
    with fs_.open_input_stream(path) as f:
        return f.readall().decode()


def write_text(fs_, path: str, text: str, remote: bool) -> None:
    """Replace a small text file of the experiment whole: one S3 put (an object appears whole or
    not at all), or an atomic local write."""
    if remote:
        with fs_.open_output_stream(path) as f:
            f.write(text.encode())
    else:
        from raytune_opt import _atomic

        _atomic.write_text(path, text)


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")
_RESERVED = (("xn--", "sthree-", "amzn-s3-demo-"), ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"))
_SEGMENTS = "write it without '//', '.' or '..' (an S3 key is a name, not a path to climb)"


def bucket_problem(bucket: str) -> str | None:
    """What is wrong with an S3 bucket name (S3's naming rules), or None."""
    if not bucket:
        return "names no bucket; write s3://BUCKET/PREFIX"
    if (not _BUCKET.fullmatch(bucket) or ".." in bucket or _IPV4.fullmatch(bucket)
            or bucket.startswith(_RESERVED[0]) or bucket.endswith(_RESERVED[1])):
        return (f"bucket {bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.' or '-', "
                "starting and ending with a letter or a digit); write s3://BUCKET/PREFIX with the bucket's name")
    return None


def s3_problem(uri: str) -> str | None:
    """What is wrong with ``s3://BUCKET[/KEY]``, or None: a bucket S3 would refuse, or a key
    with an empty, ``.`` or ``..`` segment (the local mirror is a path built from them, and
    pyarrow refuses empty segments). Trailing slashes are fine."""
    assert uri.startswith(S3), uri
    bucket, _, key = uri[len(S3):].rstrip("/").partition("/")
    problem = bucket_problem(bucket)
    if problem:
        return problem
    for segment in key.split("/") if key else ():
        if segment in ("", ".", ".."):
            return f"the key has {'an empty' if not segment else f'a {segment!r}'} segment; {_SEGMENTS}"
        if any(ord(c) < 32 or ord(c) == 127 for c in segment):
            return f"the key has a control character in {segment!r}; write it without one"
    return None


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``.

    Raises:
        UsageError: see :func:`s3_problem`; the line names ``uri``.
    """
    problem = s3_problem(uri)
    if problem:
        raise UsageError(f"{uri if uri.isprintable() else repr(uri)}: {problem}")
    bucket, _, key = uri[len(S3):].rstrip("/").partition("/")
    return bucket, key


def s3_error(what: str, exc: OSError, endpoint_url: str | None) -> UsageError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = endpoint_url or "AWS"
    if "ACCESS_DENIED" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        fix = "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile / instance role) on every node"
    elif "NETWORK_CONNECTION" in text or "curlCode" in text or "Couldn't connect" in text:
        fix = "check storage.endpoint_url and that the S3 server runs"
    else:
        fix = "check the bucket, the credentials and storage.endpoint_url"
    return UsageError(f"storage.path {what}: S3 at {where} refused ({text}); {fix}")


@dataclass(frozen=True)
class Location:
    """One experiment's place.

    Attributes:
        uri: what users see: ``/abs/results/NAME`` or ``s3://bucket/prefix/NAME``.
        local: the driver's directory for it: the experiment itself, or its local mirror.
        endpoint_url: the S3 endpoint (None: AWS, or a local experiment).
    """

    uri: str
    local: Path
    endpoint_url: str | None = None

    @property
    def remote(self) -> bool:
        return is_remote(self.uri)

    @property
    def fs_path(self) -> str:
        """The path Ray and pyarrow use: ``bucket/prefix/NAME`` (S3) or the local directory."""
        return self.uri[len(S3):] if self.remote else str(self.local)

    @functools.cached_property
    def _s3(self):
        return s3_filesystem(self.endpoint_url)

    def filesystem(self):
        """The pyarrow filesystem for Ray's ``storage_filesystem`` (None: local, Ray's default)."""
        return self._s3 if self.remote else None

    def tune_storage(self) -> dict:
        """``RunConfig`` keyword arguments for the experiment's parent directory."""
        parent = self.fs_path.rsplit("/", 1)[0] if self.remote else str(self.local.parent)
        return {"storage_path": parent, "storage_filesystem": self.filesystem()}

    def exists(self, rel: str) -> bool:
        if not self.remote:
            return (self.local / rel).exists()
        from pyarrow import fs

        try:
            return self.filesystem().get_file_info(f"{self.fs_path}/{rel}").type != fs.FileType.NotFound
        except OSError as exc:
            raise s3_error(self.uri, exc, self.endpoint_url) from None

    def check_writable(self) -> None:
        """S3: the bucket exists and takes a write (before Ray starts and minutes are spent).

        Raises:
            UsageError: no such bucket, no credentials, endpoint unreachable.
        """
        if not self.remote:
            return
        from pyarrow import fs

        bucket, _ = split_s3(self.uri)
        s3 = self.filesystem()
        try:
            if s3.get_file_info(bucket).type == fs.FileType.NotFound:
                raise UsageError(f"storage.path {self.uri}: bucket '{bucket}' does not exist at "
                                 f"{self.endpoint_url or 'AWS'}; create it first (aws s3 mb s3://{bucket}) or use "
                                 "another bucket")
            probe = f"{self.fs_path}/.raytune_opt_write_probe"
            with s3.open_output_stream(probe) as out:
                out.write(b"ok")
            s3.delete_file(probe)
        except OSError as exc:
            raise s3_error(self.uri, exc, self.endpoint_url) from None

    def publish(self, *rels: str) -> None:
        """Upload files or directories (relative to ``local``) to the bucket; no-op when local."""
        if not self.remote:
            return
        from pyarrow import fs

        s3 = self.filesystem()
        local_fs = fs.LocalFileSystem()
        try:
            for rel in rels:
                if (self.local / rel).exists():  # a file, or a directory copied recursively
                    fs.copy_files(str(self.local / rel), f"{self.fs_path}/{rel}", source_filesystem=local_fs,
                                  destination_filesystem=s3)
        except OSError as exc:
            raise s3_error(self.uri, exc, self.endpoint_url) from None

    def fetch(self, *rels: str) -> None:
        """Download files (relative to the experiment) into ``local``; missing ones are skipped."""
        if not self.remote:
            return
        for rel in rels:
            if self.exists(rel):
                dest = ensure_under(self.local / rel, self.local, f"{self.uri}'s local copy of {rel}")
                download(f"{self.uri}/{rel}", dest, self.endpoint_url)


def mirror_root() -> Path:
    """Where the local mirrors of S3 experiments live: ``s3/`` under raytune-opt's cache root.

    Raises:
        UsageError: the cache cannot be created (see :func:`raytune_opt._cache.cache_dir`).
    """
    return _cache.cache_dir("s3")


def mirror_dir(uri: str) -> Path:
    """The local mirror of an S3 experiment: ``s3/BUCKET/KEY`` under raytune-opt's cache root.

    Raises:
        UsageError: ``uri`` is not a valid ``s3://`` URI (see :func:`s3_problem`), or the cache
            cannot be created (see :func:`raytune_opt._cache.cache_dir`).
    """
    bucket, key = split_s3(uri)
    root = mirror_root()
    mirror = root / bucket / key
    ensure_under(mirror, root, f"the local mirror of {uri}")  # split_s3 refused '..'; a link could still lead out
    return mirror


def locate(root: str, name: str, endpoint_url: str | None = None) -> Location:
    """The experiment ``name`` under ``storage.path`` (or ``--storage``) ``root``."""
    problem = root_problem(root)  # the spec's value passed validation; --storage did not
    if problem:
        raise UsageError(f"storage.path {root}: {problem}")
    if is_remote(root):
        bucket, key = split_s3(root)
        uri = f"{S3}{bucket}/{key + '/' if key else ''}{name}"
        return Location(uri, mirror_dir(uri), resolve_endpoint(endpoint_url, "storage.endpoint_url"))
    local = Path(root).expanduser().resolve() / name
    return Location(str(local), local)


def from_uri(uri: str, endpoint_url: str | None = None) -> Location:
    """An existing experiment given as a directory or ``s3://bucket/prefix/NAME``."""
    if is_remote(uri):
        uri = uri.rstrip("/")
        bucket, key = split_s3(uri)
        if not bucket or not key:
            raise UsageError(f"{uri}: not an experiment URI; write s3://BUCKET/PREFIX/NAME (what 'raytune-opt run' "
                             "printed)")
        return Location(uri, mirror_dir(uri), resolve_endpoint(endpoint_url))
    local = Path(uri).expanduser().resolve()
    return Location(str(local), local)


def download(uri: str, dest: Path, endpoint_url: str | None) -> Path:
    """Copy the S3 object or prefix ``uri`` to ``dest`` (atomically for a single file).

    A prefix's objects land at their relative names under ``dest``; one whose name would lead
    out of ``dest`` (``..`` is a valid S3 key) is refused before anything is written.

    Raises:
        UsageError: ``uri`` is not a valid ``s3://`` URI or not there, S3 refused, or an
            object's name leads out of ``dest``.
    """
    from pyarrow import fs

    from raytune_opt import _atomic

    split_s3(uri)
    s3 = s3_filesystem(endpoint_url)
    path = uri[len(S3):].rstrip("/")
    try:
        info = s3.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise UsageError(f"{uri}: not found at {endpoint_url or 'AWS'}; check the URI (and storage.endpoint_url)")
        if info.type != fs.FileType.Directory:
            _atomic.write_bytes(dest, _read_object(s3, path))
            return dest
        for f in s3.get_file_info(fs.FileSelector(path, recursive=True)):  # checked before anything is written
            ensure_under(dest / f.path[len(path) + 1:], dest, f"the local copy of {S3}{f.path}")
        dest.mkdir(parents=True, exist_ok=True)
        # pyarrow's copy, in parallel (a sweep's history/ holds a file per trial)
        fs.copy_files(path, str(dest), source_filesystem=s3, destination_filesystem=fs.LocalFileSystem())
        return dest
    except OSError as exc:
        raise s3_error(uri, exc, endpoint_url) from None


def _read_object(s3, path: str) -> bytes:
    with s3.open_input_stream(path) as src:
        return src.read()


def _sees_marker(path: str, token: str) -> bool:
    try:
        with open(path) as f:
            return f.read() == token
    except OSError:
        return False


def check_shared(directory: Path, timeout: float = 60.0) -> None:
    """On a cluster of several nodes, check that every node sees ``directory`` (it is shared).

    Ray itself cannot tell: each node would create the path on its own disk, and the
    checkpoints of trials placed there would be invisible to the driver and to promotion.

    Raises:
        UsageError: a live node does not see a marker file the driver wrote there.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    token = uuid.uuid4().hex
    marker = directory / f".raytune_opt_shared_{token[:12]}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    except OSError as exc:
        raise UsageError(f"storage.path {directory}: cannot write there ({exc.strerror or exc}); pass --storage "
                         "with a writable directory shared by every node, or s3://bucket/prefix") from None
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_sees_marker)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker), token) for n in nodes]
        seen = ray.get(refs, timeout=timeout)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n for n, ok in zip(nodes, seen) if not ok]
    if blind:
        which = ", ".join(f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in blind)
        raise UsageError(f"storage.path {directory}: not shared by the cluster's {len(nodes)} nodes ({which} cannot "
                         "see it); use s3://bucket/prefix (storage.endpoint_url for S3-compatible servers) or a "
                         "directory mounted on every node")
