"""The spec loader's bounds: what a hostile or broken file costs to refuse."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from raytune_opt.errors import SpecError
from raytune_opt.spec import parse_override
from raytune_opt.spec.yaml_loader import MAX_BYTES, MAX_NODES, expanded_size, load_yaml, load_yaml_file


def _laughs(levels: int) -> str:
    lines = ["name: laughs", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_in_bounded_time_and_memory():
    text = _laughs(9)  # ~700 bytes that expand to over 10^10 nodes
    assert len(text) < 1000
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=r"expands to 12,345,679,023 YAML nodes"):
        load_yaml(text, "laughs.yaml")
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Expanding it took ~5 s and ~280 MB per 10^5 nodes before the bound.
    assert seconds < 2 and peak < 20 * 2**20, (seconds, peak)


def test_the_bound_lets_a_large_honest_spec_through():
    text = "name: big\nxs: &xs [" + ", ".join(["1"] * 1000) + "]\nys: [*xs, *xs, *xs]\n"
    data, _, problems = load_yaml(text, "big.yaml")
    assert problems == [] and data["ys"] == [data["xs"]] * 3
    assert 4 * 1000 < MAX_NODES


def test_expanded_size_counts_every_use_of_an_alias():
    import yaml

    node = yaml.SafeLoader("a: &a [1, 2]\nb: [*a, *a]\n").get_single_node()
    # root + (a + [1, 2]) + (b + [ [1,2], [1,2] ])  = 1 + (1 + 3) + (1 + 1 + 3 + 3)
    assert expanded_size(node) == 13


def test_an_oversized_file_is_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_BYTES + 1))
    with pytest.raises(SpecError, match="too large for a spec"):
        load_yaml_file(big)


@pytest.mark.parametrize("text, where", [("name: x\x00\n", "s.yaml:1:8"), ("seed: 1\nname: a\x1b[31m\n", "s.yaml:2:8")])
def test_a_character_yaml_refuses_is_one_problem_with_its_position(text, where):
    with pytest.raises(SpecError) as exc:
        load_yaml(text, "s.yaml")
    (line,) = exc.value.lines()
    assert line.startswith(where + ": holds a character YAML does not allow"), line


@pytest.mark.parametrize("value, fragment", [
    (_laughs(6).replace("\n", ", ").join("{}").replace("name: laughs, ", ""), "too large"),
    ("a\x00", "not valid YAML"),
    ("&a [*a]", "too large"),
])
def test_an_override_value_is_bounded_too(value, fragment):
    with pytest.raises(SpecError, match=fragment):
        parse_override(f"train.deepspeed={value}")
