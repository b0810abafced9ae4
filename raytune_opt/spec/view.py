"""Typed, read-only views of a spec's sections, with the schema's defaults.

The recipe gets a spec's sections as plain dicts: resolved ones (every key present), but also
partial ones (a test's ``{"hflip": 0.5}``, a checkpoint written before a key existed). Reading
them with ``cfg.get("key", literal)`` wrote each default a second time, where a default
changed in the schema would not follow, and a mistyped key read the literal silently. A view
reads the dict through its schema section instead::

    aug = view(("train", "augment"), aug_cfg)
    aug.hflip            # aug_cfg["hflip"], or the schema's default when aug_cfg lacks it
    aug["mix_prob"]      # the same, as a mapping
    aug.hflp             # UnknownSetting: train.augment.hflp is not a setting; did you mean 'hflip'?

A nested section is a view too; an open section (``model.args``, ``train.deepspeed``...) is
the dict itself, and a leaf the value itself (a list or dict leaf is the spec's own object: copy
it before changing it). Nothing can be set through a view. Imports neither torch nor Ray.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Iterator

from raytune_opt.spec import schema
from raytune_opt.spec.fields import Section

__all__ = ["SectionView", "UnknownSetting", "view"]


class UnknownSetting(AttributeError, KeyError):
    """A key the schema's section does not have (a bug in the code that reads it, not in a spec)."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0])


class SectionView(Mapping):
    """A read-only view of ``data`` (a dict, maybe partial) as the schema ``section`` at ``path``.

    Iterating gives every key of the section, in the schema's order, whether ``data`` has it or not.
    """

    __slots__ = ("_data", "_section", "_path")

    def __init__(self, data: Mapping | None, section: Section, path: tuple = ()):
        if section.open:
            raise ValueError(f"{'.'.join(path)} is an open section: read it as the dict it is")
        object.__setattr__(self, "_data", data if data is not None else {})
        object.__setattr__(self, "_section", section)
        object.__setattr__(self, "_path", tuple(path))

    def _read(self, key: str) -> Any:
        node = self._section.fields.get(key)
        if node is None:
            dotted = ".".join((*self._path, str(key)))
            close = difflib.get_close_matches(str(key), list(self._section.fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownSetting(f"{dotted} is not a setting{hint} (the schema's {'.'.join(self._path) or 'spec'} "
                                 f"has {', '.join(self._section.fields)})")
        given = key in self._data
        value = self._data[key] if given else None
        if isinstance(node, Section):
            if node.open:
                return value if given and value is not None else {}
            return SectionView(value if given else None, node, (*self._path, key))
        if given:
            return value
        return list(node.default) if isinstance(node.default, list) else node.default

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):  # copy, pickle and friends probe dunders; no setting starts with "_"
            raise AttributeError(key)
        return self._read(key)

    def __getitem__(self, key: str) -> Any:
        return self._read(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The setting ``key`` (its default when the dict lacks it; ``default`` is never used: the
        schema's is). Raises UnknownSetting for a key the section does not have."""
        return self._read(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._section.fields)

    def __len__(self) -> int:
        return len(self._section.fields)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{'.'.join((*self._path, key))}: a spec view is read-only")

    def __reduce__(self):
        return view, (self._path, self._data)

    def __repr__(self) -> str:
        return f"SectionView({'.'.join(self._path) or 'spec'}, {dict(self._data)!r})"

    def to_dict(self) -> dict:
        """A plain nested dict of every setting (the dict's values, the schema's defaults)."""
        return {k: v.to_dict() if isinstance(v, SectionView) else v for k, v in ((k, self._read(k)) for k in self)}


def view(path: tuple, data: Mapping | None) -> SectionView:
    """``data`` (the spec's section at ``path``, e.g. ``("train", "augment")``; a view already is
    returned as it is) as a :class:`SectionView`.

    Raises:
        ValueError: ``path`` is not a closed section of the schema.
    """
    if isinstance(data, SectionView):
        return data
    node = schema.lookup(tuple(path)) if path else schema.SPEC
    if not isinstance(node, Section):
        raise ValueError(f"{'.'.join(path)} is not a section of the spec")
    return SectionView(data, node, tuple(path))
