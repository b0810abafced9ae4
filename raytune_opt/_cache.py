"""raytune-opt's node-local cache: one root, ``$RAYTUNE_OPT_CACHE`` (default ``<tmp>/raytune_opt_cache``).

It holds ``data/`` (data sets decoded once per node, see :mod:`raytune_opt.recipe.data`) and
``s3/`` (the driver's local mirror of ``s3://`` experiments, see :mod:`raytune_opt.storage`).
Both are caches: deleting the root costs a decode or a download, nothing else.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from raytune_opt.errors import UsageError

ENV = "RAYTUNE_OPT_CACHE"


def cache_root() -> Path:
    """The cache root: ``$RAYTUNE_OPT_CACHE`` (``~`` expanded, resolved), else ``<tmp>/raytune_opt_cache``.

    Raises:
        UsageError: ``$RAYTUNE_OPT_CACHE`` is a relative path: each process would find its
            cache somewhere else (Ray's workers run in their own directory), and what is
            deleted there as a stale mirror would depend on where the command was started.
    """
    value = os.environ.get(ENV)
    if not value:
        return (Path(tempfile.gettempdir()) / "raytune_opt_cache").resolve()
    root = Path(value).expanduser()
    if not root.is_absolute():
        raise UsageError(f"${ENV}={value!r}: a relative path; set {ENV} to an absolute directory "
                         f"(e.g. {ENV}=$HOME/.cache/raytune_opt), or unset it for {tempfile.gettempdir()}/raytune_opt_cache")
    return root.resolve()


def cache_dir(kind: str) -> Path:
    """``cache_root()/kind``, created if missing.

    Raises:
        UsageError: it cannot be created (``$RAYTUNE_OPT_CACHE`` names a file, an unwritable place...).
    """
    folder = cache_root() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        source = f"${ENV}={os.environ[ENV]!r}" if os.environ.get(ENV) else "the default cache"
        raise UsageError(f"{source}: cannot create {folder} ({exc.strerror or exc}); set {ENV} to a writable "
                         "directory") from None
    return folder
