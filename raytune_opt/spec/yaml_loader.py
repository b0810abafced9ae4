"""Safe YAML loading that remembers where every key came from.

PyYAML's ``safe_load`` silently keeps the last of two duplicate keys and forgets line
numbers. We compose the node graph with the safe loader and convert it ourselves, so that
every key path maps to its ``(line, column)`` and duplicate keys become problems.

A spec is user input, so the loader's cost is bounded: files over :data:`MAX_BYTES` are
refused unread, and the composed graph's expanded size (aliases counted every time they
are used, as the conversion would copy them) is measured before anything is copied, so a
few hundred bytes of nested aliases ("billion laughs") are refused in milliseconds instead
of expanding into gigabytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from raytune_opt.errors import Problem, SpecError

KeyPath = tuple  # a path of mapping keys / list indices from the root

MAX_BYTES = 1 << 20  # the shipped specs are a few KiB
MAX_NODES = 100_000  # expanded YAML nodes; the shipped specs have a few hundred


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


def _scalar(loader: yaml.SafeLoader, node: yaml.Node, located: Located, path: KeyPath) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except ValueError as exc:  # e.g. an integer past Python's limit for int(str) (4,300 digits)
        where = f"{located.source}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"
        text = str(node.value)
        shown = text if len(text) <= 40 else f"{text[:12]}... ({len(text):,} characters)"
        raise SpecError([Problem(where, ".".join(map(str, path)), f"a number too long to read (got {shown})",
                                 "write a number of at most a few digits, or quote it if it is a string")]) from None


def _convert(loader, node, path: KeyPath, located: Located, problems: list[Problem]) -> Any:
    located.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        out: dict = {}
        for key_node, value_node in node.value:
            key = _scalar(loader, key_node, located, path)
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
    return _scalar(loader, node, located, path)


def load_yaml(text: str, source: str) -> tuple[Any, Located, list[Problem]]:
    """Parse one YAML document safely: the data, its key positions, and duplicate keys.

    Duplicate keys come back as problems (the first occurrence is kept) so that the
    caller can report them together with everything else that is wrong.

    Raises:
        SpecError: the text is not YAML or holds several documents.
    """
    located = Located(source)
    try:
        loader = yaml.SafeLoader(text)  # checks every character first
    except yaml.reader.ReaderError as exc:
        raise _reader_problem(exc, text, source) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.composer.ComposerError as exc:
            if "expected a single document" not in str(exc):
                raise _yaml_problem(exc, source, f"not valid YAML ({_first_line(exc)})",
                                    "fix the YAML syntax at that position") from None
            raise _yaml_problem(exc, source, "the file holds more than one YAML document",
                                "keep one document (remove the extra '---')") from None
        except yaml.reader.ReaderError as exc:
            raise _reader_problem(exc, text, source) from None
        except yaml.YAMLError as exc:
            raise _yaml_problem(exc, source, f"not valid YAML ({_first_line(exc)})",
                                "fix the YAML syntax at that position") from None
        except RecursionError:
            raise _too_deep(source) from None
        if node is None:
            return None, located, []
        _check_size(node, source)
        problems: list[Problem] = []
        try:
            data = _convert(loader, node, (), located, problems)
        except yaml.YAMLError as exc:
            raise _yaml_problem(exc, source, f"not valid YAML ({_first_line(exc)})",
                                "fix the YAML syntax at that position") from None
        except RecursionError:
            raise _too_deep(source) from None
        return data, located, problems
    finally:
        loader.dispose()


def expanded_size(node: yaml.Node) -> int:
    """How many nodes converting ``node`` would produce, each alias counted at every use.

    Linear in the distinct nodes (sizes are memoized by node identity), so it is cheap
    however large the expansion it measures.

    Raises:
        ValueError: the graph has a cycle (an anchor used inside itself).
    """
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in visiting:
            raise ValueError(f"line {n.start_mark.line + 1}")
        visiting.add(id(n))
        total = 1
        if isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total += sum(size(item) for item in n.value)
        visiting.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


def load_value(text: str) -> Any:
    """``yaml.safe_load`` of one short value (an override), with the same size bound as a spec.

    Raises:
        yaml.YAMLError: not YAML.
        ValueError: recursive, or expands past :data:`MAX_NODES`.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            n = expanded_size(node)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        if n > MAX_NODES:
            raise ValueError(f"expands to {n:,} nodes through aliases, more than {MAX_NODES:,}")
        return loader.construct_document(node)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    finally:
        loader.dispose()


def _check_size(node: yaml.Node, source: str) -> None:
    try:
        n = expanded_size(node)
    except ValueError as exc:
        raise SpecError([Problem(f"{source}:1:1", "", f"an anchor is used inside itself ({exc})",
                                 "a spec cannot be recursive; write the value out")]) from None
    except RecursionError:
        raise _too_deep(source) from None
    if n > MAX_NODES:
        raise SpecError([Problem(f"{source}:1:1", "", f"expands to {n:,} YAML nodes through anchors and aliases "
                                 f"(got more than {MAX_NODES:,})", "write the values out, or use fewer nested aliases")])


def _too_deep(source: str) -> SpecError:
    return SpecError([Problem(f"{source}:1:1", "", "nested too deeply to read", "flatten the nesting")])


def _reader_problem(exc: yaml.reader.ReaderError, text: str, source: str) -> SpecError:
    """A character YAML does not allow (NUL, other control characters), with its line and column."""
    before = text[:exc.position]
    line = before.count("\n") + 1
    col = exc.position - (before.rfind("\n") + 1) + 1
    char = exc.character if isinstance(exc.character, str) else chr(exc.character)
    return SpecError([Problem(f"{source}:{line}:{col}", "", f"holds a character YAML does not allow "
                              f"(got {char!r}, U+{ord(char):04X})",
                              "remove it; YAML takes printable text, tabs and line breaks")])


def load_yaml_file(path: str | Path) -> tuple[Any, Located, list[Problem]]:
    """Read and parse a spec file; unreadable files are a SpecError naming the path."""
    p = Path(path)
    if not p.exists():
        raise SpecError([Problem(str(p), "", "file not found", "check the path")])
    if p.is_dir():
        raise SpecError([Problem(str(p), "", "is a directory, not a YAML file", "pass the spec file itself")])
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)  # a FIFO or /dev/zero has no size to stat
        if len(raw) > MAX_BYTES:
            raise SpecError([Problem(f"{p}:1:1", "", f"too large for a spec (got more than {MAX_BYTES:,} bytes)",
                                     "pass the sweep spec itself; a spec is a few KiB")])
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
