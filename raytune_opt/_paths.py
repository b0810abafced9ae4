"""The one check before anything is deleted, moved or overwritten: the path stays under its root.

Paths are made from input (a URI on the command line, a run record, a file's contents, a
bucket's object names); a ``..`` or a symbolic link in them must not lead a ``rmtree`` or an
``os.replace`` out of the cache or the experiment it belongs to (pip and tarfile's
``filter="data"`` do the same before they extract).
"""

from __future__ import annotations

import os
from pathlib import Path

from raytune_opt.errors import UsageError


def ensure_under(path: str | os.PathLike, root: str | os.PathLike, what: str) -> Path:
    """``path`` resolved, once it is known to lie strictly below ``root`` (resolved too).

    Args:
        path: what is about to be deleted, moved or overwritten.
        root: the directory it belongs to (the cache's mirror root, the experiment...).
        what: names ``path`` in the error, e.g. ``"the S3 experiment's local mirror"``.

    Raises:
        UsageError: ``path`` resolves to ``root`` itself or to a place outside it (a ``..``
            or a symbolic link leads out); nothing has been touched.
    """
    resolved = Path(path).resolve()
    base = Path(root).resolve()
    if base not in resolved.parents:
        raise UsageError(f"{what} {os.fspath(path)} resolves to {resolved}, which is not inside {base}; refusing to "
                         f"change it: remove the '..' or the symbolic link that leads out of {base}")
    return resolved
