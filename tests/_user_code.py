"""A user's code written by a test: a module (or a package) with a name unique to the test,
forgotten by ``sys.modules`` afterwards, and specs next to it."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest


def user_module(tmp_path: Path, prefix: str, source: str, *, package: bool = False):
    """Write ``source`` as module ``<prefix>_<test>`` (a package's ``__init__`` when
    ``package``) in ``tmp_path``; yields ``(tmp_path, name)`` and forgets the module after."""
    name = f"{prefix}_{tmp_path.name.replace('-', '_')}"
    if package:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(source)
    else:
        (tmp_path / f"{name}.py").write_text(source)
    yield tmp_path, name
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[loaded]


def write_spec(directory: Path, body: str) -> Path:
    path = directory / "spec.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def write_loop_spec(directory: Path, dataset: str, model: str, metric: str, train: str, space: str = "") -> Path:
    """A spec of a user's data set and model (import paths), ``train`` and ``space`` as flow
    mappings, maximizing ``metric``: the trainer integrations' validation cases."""
    body = (f"data: {{dataset: '{dataset}'}}\nmodel: {{name: '{model}'}}\n"
            f"train: {train}\nsearch: {{metric: {metric}, mode: max}}\n" + (f"space: {space}\n" if space else ""))
    return write_spec(directory, body)


def spec_problems(path, overrides=()) -> list[str]:
    from raytune_opt.errors import SpecError
    from raytune_opt.spec import load_spec

    with pytest.raises(SpecError) as info:
        load_spec(path, list(overrides))
    return [str(p) for p in info.value.problems]
