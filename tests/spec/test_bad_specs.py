"""The bad-spec corpus: every file under bad/ must exit 2 with exactly the problems its
``# !!`` markers announce, one line each, with the right key path and line, no traceback.

Marker forms: ``# !! KEY: FRAGMENT`` at the end of the offending line; ``# !!+1 FRAGMENT``
for a problem reported on the next line; a header ``# overrides: k=v ...`` and header
markers ``# !! override 'k=v' KEY: FRAGMENT`` for problems in command-line overrides.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from raytune_opt.cli import main

BAD = Path(__file__).parent / "bad"
CASES = sorted(p for p in BAD.iterdir() if p.suffix == ".yaml")
KEY = re.compile(r"^[A-Za-z0-9_.]+$")


def expectations(path: Path) -> tuple[list[str], list[tuple[str, str | None, str]]]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    overrides: list[str] = []
    expected = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.startswith("# overrides:"):
            overrides = shlex.split(line[len("# overrides:"):])
            continue
        m = re.search(r"# !!(\+1)?\s+(.*)$", line)
        if not m:
            continue
        body = m.group(2)
        where = f"{path}:{lineno + (1 if m.group(1) else 0)}:"
        om = re.match(r"override ('[^']*') (.*)$", body)
        if om:
            where, body = f"override {om.group(1)}:", om.group(2)
        key, sep, rest = body.partition(": ")
        if sep and KEY.match(key):
            expected.append((where, key, rest))
        else:
            expected.append((where, None, body))
    return overrides, expected


def test_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_bad_spec_exits_2_with_one_line_per_problem(path, capsys):
    overrides, expected = expectations(path)
    assert expected, f"{path.name} announces no problem"
    rc = main(["validate", str(path), *overrides])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, f"exit {rc}; stderr: {err}"
    assert "Traceback" not in err
    assert len(lines) == len(expected), f"expected {len(expected)} problem(s), got:\n{err}"
    for where, key, fragment in expected:
        prefix = re.escape(where) + (r"\d+:" if where.startswith(str(path)) else "")
        want = prefix + (rf" {re.escape(key)}:" if key else "") + r" .*" + re.escape(fragment)
        assert any(re.match(want, line) for line in lines), f"no line matches {want!r} in:\n{err}"
    for line in lines:  # every problem says how to fix it
        assert "; " in line, line


def test_bad_specs_through_the_console_script_print_no_traceback(tmp_path):
    # The real entry point, in a subprocess, on a few representative cases.
    for name in ("26_duplicate_keys.yaml", "29_not_yaml.yaml", "52_many_problems_at_once.yaml",
                 "67_not_utf8.yaml"):
        proc = subprocess.run([sys.executable, "-m", "raytune_opt", "validate", str(BAD / name)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.strip()
