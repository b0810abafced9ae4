"""User code that exits or hangs (issue 25, section 5): a module or constructor that calls
``sys.exit``/``os._exit`` or never returns is an error line naming the user's file and line,
exit 2; ``validate --smoke`` runs the user's code in a child process with a time limit and
ends with ``smoke: ok`` or an error, so a silent stop cannot look like success."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raytune_opt import registry
from raytune_opt.cli import main

MODULE = '''
import os
import sys
import time

{top}

import torch


class Net(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(64, num_classes)
        {init}

    def forward(self, x):
        return self.fc(x.flatten(1))
'''


def _project(tmp_path: Path, top: str = "", init: str = "pass") -> tuple[Path, str, Path]:
    name = f"ucode_{tmp_path.name.replace('-', '_')}"
    module = tmp_path / f"{name}.py"
    module.write_text(MODULE.format(top=top, init=init))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f'model: {{name: "{name}:Net"}}\npromote: {{enabled: false}}\n')
    return spec, name, module


def _line_of(module: Path, text: str) -> int:
    return next(i for i, line in enumerate(module.read_text().splitlines(), 1) if text in line)


@pytest.fixture(autouse=True)
def _forget_user_modules():
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("ucode_"):
            del sys.modules[name]


def test_sys_exit_at_import_is_an_error_naming_the_file_and_line(tmp_path, capsys):
    spec, name, module = _project(tmp_path, top="sys.exit(0)")
    assert main(["validate", "--quiet", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot import '{name}:Net' (its module called sys.exit(0) at {module}:{_line_of(module, 'sys.exit')})" in err


def test_os_exit_at_import_is_an_error_not_a_silent_success(tmp_path):
    # A fresh process: unguarded, os._exit would end it with code 0 and no word.
    spec, name, module = _project(tmp_path, top="os._exit(0)")
    proc = subprocess.run([sys.executable, "-m", "raytune_opt", "validate", "--quiet", str(spec)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert f"its module called os._exit(0) at {module}:{_line_of(module, 'os._exit')}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(60, method="thread")  # the guard's timer is SIGALRM, which pytest-timeout's default method holds
def test_an_import_that_hangs_is_stopped_and_named(tmp_path):
    # The loop comes before the module's own imports: an import interrupted half-way (torch's)
    # would leave that package half-initialized in this test process.
    _, name, module = _project(tmp_path, top="while True:\n    time.sleep(0.05)")
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(registry.ImportTargetError) as info:
        registry.import_target(f"{name}:Net", [str(tmp_path)], guard_s=1.5)
    assert f"still importing after 1.5 s (it was at {module}:{_line_of(module, 'time.sleep')})" in str(info.value)
    assert signal.getsignal(signal.SIGALRM) == before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert os._exit.__module__ == "posix"  # the guard put os._exit back


@pytest.mark.parametrize("init, message", [
    ("sys.exit(3)", "smoke: the user's code called sys.exit(3) at {module}:{line}"),
    ("os._exit(0)", "smoke: the user's code ended the smoke test's process before it finished (exit code 0)"),
    ("os.kill(os.getpid(), 9)", "smoke: the user's code ended the smoke test's process before it finished "
                                "(killed by signal 9)"),
    ("time.sleep(600)", "smoke: did not finish in 6 s (it was at {module}:{line})"),
])
def test_smoke_reports_a_constructor_that_exits_dies_or_hangs(tmp_path, init, message, capsys):
    spec, name, module = _project(tmp_path, init=init)
    assert main(["validate", "--quiet", str(spec), "--smoke", "--smoke-timeout", "6"]) == 2
    captured = capsys.readouterr()
    assert "smoke: ok" not in captured.out
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert message.format(module=module, line=_line_of(module, init)) in captured.err


def test_a_passing_smoke_test_ends_with_smoke_ok_and_the_timeout_needs_smoke(tmp_path, capsys):
    spec, _, _ = _project(tmp_path)
    assert main(["validate", "--quiet", str(spec), "--smoke"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "smoke: ok"
    assert main(["validate", "--quiet", str(spec), "--smoke-timeout", "5"]) == 2
    assert "--smoke-timeout 5: only --smoke runs the user's code" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["validate", "--quiet", str(spec), "--smoke", "--smoke-timeout", "-1"])
    assert info.value.code == 2
