"""An experiment's resolved spec (``spec.yaml``, what ``run`` ran), read back safely.

Promotion and the report read it from experiment directories that may be damaged or written
by another version: every way it can be unusable is one line in the caller's error class.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from raytune_opt.errors import RaytuneOptError


def read_resolved(path: Path, error: type[RaytuneOptError], fix: str, sections: tuple[str, ...] = ()) -> dict:
    """The resolved spec at ``path``, with ``search.metric``, ``search.mode`` and ``sections``.

    Args:
        error: the error class to raise (the caller's family).
        fix: what to do when the file does not parse.
        sections: top-level sections the caller reads besides ``search``.

    Raises:
        error: the file does not parse, or lacks what the caller reads.
    """
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise error(f"{path}: unreadable ({type(exc).__name__}); the experiment's resolved spec is damaged: "
                    f"{fix}") from None
    search = spec.get("search") if isinstance(spec, dict) else None
    if (not isinstance(search, dict) or not {"metric", "mode"} <= set(search)
            or not all(isinstance(spec.get(s), dict) for s in sections)):
        need = " / ".join(["search.metric", "search.mode", *sections])
        raise error(f"{path}: not a resolved raytune-opt spec (no {need}); pass the directory 'raytune-opt run' "
                    "wrote (STORAGE/NAME)")
    return spec
