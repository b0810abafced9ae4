"""Safe YAML loading that remembers where every key came from.

PyYAML's ``safe_load`` silently keeps the last of two duplicate keys and forgets line
numbers. We compose the node graph with the safe loader and convert it ourselves, so that
every key path maps to its ``(line, column)`` and duplicate keys become problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from raytune_opt.errors import Problem, SpecError

KeyPath = tuple  # a path of mapping keys / list indices from the root


class Located:
    """A loaded document plus the source position of each key path."""

    def __init__(self, source: str):
        self.source = source
        self.positions: dict[KeyPath, tuple[int, int]] = {}

    def where(self, path: KeyPath) -> str:
        """``FILE:LINE:COL`` of ``path`` or of its nearest located ancestor."""
        path = tuple(path)
        while path and path not in self.positions:
            path = path[:-1]
        line, col = self.positions.get(path, (1, 1))
        return f"{self.source}:{line}:{col}"


def _scalar(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return loader.construct_object(node, deep=True)


def _convert(loader, node, path: KeyPath, located: Located, problems: list[Problem]) -> Any:
    located.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(loader, key_node)
            child = path + (key,)
            if isinstance(key, (list, dict)):
                problems.append(Problem(located.where(path), ".".join(map(str, path)),
                                        f"a mapping key must be a scalar (got {key!r})",
                                        "use a plain string key"))
                continue
            if key in out:
                first = located.positions.get(child, (0, 0))
                problems.append(Problem(
                    f"{located.source}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1}",
                    ".".join(map(str, child)),
                    f"duplicate key (first defined at line {first[0]})",
                    "keep exactly one of the two",
                ))
                continue
            located.positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _convert(loader, value_node, child, located, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, path + (i,), located, problems) for i, item in enumerate(node.value)]
    return _scalar(loader, node)


def load_yaml(text: str, source: str) -> tuple[Any, Located, list[Problem]]:
    """Parse one YAML document safely: the data, its key positions, and duplicate keys.

    Duplicate keys come back as problems (the first occurrence is kept) so that the
    caller can report them together with everything else that is wrong.

    Raises:
        SpecError: the text is not YAML or holds several documents.
    """
    located = Located(source)
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.composer.ComposerError as exc:
            raise _yaml_problem(exc, source, "the file holds more than one YAML document",
                                "keep one document (remove the extra '---')") from None
        except yaml.YAMLError as exc:
            raise _yaml_problem(exc, source, f"not valid YAML ({_first_line(exc)})",
                                "fix the YAML syntax at that position") from None
        if node is None:
            return None, located, []
        problems: list[Problem] = []
        try:
            data = _convert(loader, node, (), located, problems)
        except yaml.YAMLError as exc:
            raise _yaml_problem(exc, source, f"not valid YAML ({_first_line(exc)})",
                                "fix the YAML syntax at that position") from None
        return data, located, problems
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path) -> tuple[Any, Located, list[Problem]]:
    """Read and parse a spec file; unreadable files are a SpecError naming the path."""
    p = Path(path)
    if not p.exists():
        raise SpecError([Problem(str(p), "", "file not found", "check the path")])
    if p.is_dir():
        raise SpecError([Problem(str(p), "", "is a directory, not a YAML file", "pass the spec file itself")])
    try:
        raw = p.read_bytes()
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError([Problem(f"{p}:1:1", "", "not a UTF-8 text file", "pass a YAML spec")]) from None
    except OSError as exc:
        raise SpecError([Problem(str(p), "", f"cannot be read ({exc.strerror})", "check its permissions")]) from None
    return load_yaml(text, str(p))


def _first_line(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return str(problem).strip()


def _yaml_problem(exc: yaml.YAMLError, source: str, message: str, fix: str) -> SpecError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else f"{source}:1:1"
    return SpecError([Problem(where, "", message, fix)])
