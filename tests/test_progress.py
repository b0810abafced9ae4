"""Progress of long driver steps: transient on a terminal, silent without one."""

from __future__ import annotations

import io

from raytune_opt import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_step_shows_on_a_terminal_and_clears_itself():
    out = _Terminal()
    with progress.step("onnx: exporting", out):
        shown = out.getvalue()
    assert shown == "\ronnx: exporting…"
    assert out.getvalue().endswith("\r" + " " * len("onnx: exporting…") + "\r")  # the result line starts clean


def test_a_long_step_text_still_fits_80_columns():
    out = _Terminal()
    with progress.step("x" * 200, out):
        pass
    assert max(len(part) for part in out.getvalue().split("\r")) <= progress.WIDTH


def test_without_a_terminal_nothing_is_printed():
    out = io.StringIO()
    with progress.step("data: decoding", out):
        pass
    assert list(progress.items(range(3), 3, "images", out)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_items_draw_a_bar_on_a_terminal_that_goes_away():
    out = _Terminal()
    assert list(progress.items(range(5), 5, "decoding images", out)) == list(range(5))
    assert "decoding images" in out.getvalue() and "\r" in out.getvalue()
