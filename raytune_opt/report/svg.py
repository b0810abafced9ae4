"""Static SVG charts for the report: lines, scatter, bars, parallel coordinates, heatmaps.

Plain SVG strings, no plotting library: the page must open offline and stay small for a
few hundred trials (plotly's inlined JavaScript alone is 4.8 MB). Every drawn data mark
carries the class ``mark`` so the page (and its browser test) can count what was drawn;
hovering a mark shows its ``<title>``.
"""

from __future__ import annotations

import copy
import math
from html import escape
from typing import Sequence

W, H = 560, 320  # default chart size in px
PAD_L, PAD_R, PAD_T, PAD_B = 62, 16, 28, 44

# Viridis, a few stops: colour-blind safe, ordered dark (low) to bright (high).
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def colour(t: float) -> str:
    """Viridis at ``t`` in [0, 1] (NaN: grey)."""
    if t is None or not math.isfinite(t):
        return "#bbbbbb"
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_VIRIDIS[i], _VIRIDIS[i + 1]))
    return f"#{r:02x}{g:02x}{b:02x}"


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class Scale:
    """Maps data values onto pixels: linear, log or categorical."""

    def __init__(self, values: Sequence, lo_px: float, hi_px: float, kind: str = "linear",
                 cats: Sequence | None = None, integer: bool = False):
        self.kind, self.lo_px, self.hi_px, self.integer = kind, lo_px, hi_px, integer
        if kind == "cat":  # the domain's order where known, then any value not in it
            self.cats = list(dict.fromkeys([str(c) for c in cats or ()] + [str(v) for v in values if v is not None]))
            return
        vals = [float(v) for v in values if finite(v) and (kind != "log" or v > 0)]
        if not vals:
            vals = [1.0] if kind == "log" else [0.0]
        lo, hi = min(vals), max(vals)
        if kind == "log":
            lo, hi = math.log10(lo), math.log10(hi)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        margin = (hi - lo) * 0.04
        self.lo, self.hi = lo - margin, hi + margin

    def onto(self, lo_px: float, hi_px: float) -> "Scale":
        """The same data range onto other pixels."""
        out = copy.copy(self)
        out.lo_px, out.hi_px = lo_px, hi_px
        return out

    def __call__(self, v) -> float | None:
        if v is None:
            return None
        if self.kind == "cat":
            n = len(self.cats)
            i = self.cats.index(str(v)) if str(v) in self.cats else None
            return None if i is None else self.lo_px + (i + 0.5) / n * (self.hi_px - self.lo_px)
        if not finite(v) or (self.kind == "log" and v <= 0):
            return None
        x = math.log10(v) if self.kind == "log" else float(v)
        return self.lo_px + (x - self.lo) / (self.hi - self.lo) * (self.hi_px - self.lo_px)

    def ticks(self, n: int = 5) -> list[tuple[float, str]]:
        if self.kind == "cat":
            return [(self(c), c) for c in self.cats]
        if self.kind == "log":
            out = [(self(10.0 ** e), f"1e{e}") for e in range(math.ceil(self.lo), math.floor(self.hi) + 1)]
            if len(out) >= 2:
                return out
        step = _nice_step((self.hi - self.lo) / max(n, 1))
        if self.integer:
            step = max(1.0, round(step))
        start = math.ceil(self.lo / step) * step
        out, v = [], start
        while v <= self.hi + 1e-12:
            real = 10.0 ** v if self.kind == "log" else v
            out.append((self.lo_px + (v - self.lo) / (self.hi - self.lo) * (self.hi_px - self.lo_px), fmt(real, 3)))
            v += step
        return out


def _nice_step(raw: float) -> float:
    mag = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def fmt(v, digits: int = 4) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.{max(digits - 2, 1)}e}"
        return f"{v:.{digits}g}"
    return str(v)


def _open(width: int, height: int, title: str, cls: str = "chart") -> list[str]:
    return [f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
            f'<text class="title" x="{width / 2:.0f}" y="16" text-anchor="middle">{escape(title)}</text>']


def _axes(out: list[str], xs: Scale, ys: Scale, xlabel: str, ylabel: str, width: int, height: int) -> None:
    x0, x1, y0, y1 = PAD_L, width - PAD_R, height - PAD_B, PAD_T
    out.append(f'<rect class="frame" x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}"/>')
    for px, label in xs.ticks():
        if px is None:
            continue
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{y1}" x2="{px:.1f}" y2="{y0}"/>'
                   f'<text class="tick" x="{px:.1f}" y="{y0 + 14}" text-anchor="middle">{escape(_clip(label))}</text>')
    for py, label in ys.ticks():
        if py is None:
            continue
        out.append(f'<line class="grid" x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}"/>'
                   f'<text class="tick" x="{x0 - 4}" y="{py + 4:.1f}" text-anchor="end">{escape(_clip(label))}</text>')
    out.append(f'<text class="label" x="{(x0 + x1) / 2:.0f}" y="{height - 8}" text-anchor="middle">'
               f'{escape(xlabel)}</text>')
    out.append(f'<text class="label" transform="translate(12 {(y0 + y1) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">{escape(ylabel)}</text>')


def _clip(s: str, n: int = 12) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def line_chart(series: list[dict], *, title: str, xlabel: str, ylabel: str, width: int = W, height: int = H,
               log_y: bool = False, legend: bool = False, integer_x: bool = True) -> str:
    """Lines of ``{"name", "x", "y", "color", "dash"?, "end"?}``; ``end`` marks the last point
    (``"x"``: the trial was stopped there, ``"o"``: an ordinary end)."""
    xs_all = [x for s in series for x in s["x"]]
    ys_all = [y for s in series for y in s["y"]]
    xs = Scale(xs_all, PAD_L, width - PAD_R, integer=integer_x)  # epochs
    ys = Scale(ys_all, height - PAD_B, PAD_T, "log" if log_y else "linear")
    out = _open(width, height, title)
    _axes(out, xs, ys, xlabel, ylabel, width, height)
    for s in series:
        pts = [(xs(x), ys(y)) for x, y in zip(s["x"], s["y"])]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        if not pts:
            continue
        name = escape(str(s["name"]))
        dash = ' stroke-dasharray="5 3"' if s.get("dash") else ""
        width_px = s.get("width", 1.6)
        if len(pts) == 1:
            out.append(f'<circle class="mark" cx="{pts[0][0]:.1f}" cy="{pts[0][1]:.1f}" r="2.5" '
                       f'fill="{s["color"]}"><title>{name}</title></circle>')
        else:
            d = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            out.append(f'<polyline class="mark" points="{d}" fill="none" stroke="{s["color"]}" '
                       f'stroke-width="{width_px}"{dash} opacity="{s.get("opacity", 0.85)}"><title>{name}</title>'
                       f'</polyline>')
        end = s.get("end")
        if end == "x":
            a, b = pts[-1]
            out.append(f'<path class="stop" d="M{a - 3:.1f},{b - 3:.1f}L{a + 3:.1f},{b + 3:.1f}M{a - 3:.1f},'
                       f'{b + 3:.1f}L{a + 3:.1f},{b - 3:.1f}" stroke="{s["color"]}" stroke-width="1.5">'
                       f'<title>{name}: stopped here</title></path>')
    if legend:
        _legend(out, [(s["name"], s["color"], s.get("dash")) for s in series], width)
    out.append("</svg>")
    return "".join(out)


def _legend(out: list[str], items: list[tuple], width: int) -> None:
    x, y = PAD_L + 6, PAD_T + 12
    for name, color, dash in items:
        d = ' stroke-dasharray="5 3"' if dash else ""
        out.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 16}" y2="{y - 4}" stroke="{color}" stroke-width="2"{d}/>'
                   f'<text class="legend" x="{x + 20}" y="{y}">{escape(str(name))}</text>')
        y += 13


def scatter_chart(points: list[dict], *, title: str, xlabel: str, ylabel: str, x_kind: str = "linear",
                  width: int = W, height: int = H, lines: list[dict] | None = None, cats: Sequence | None = None,
                  integer_x: bool = False) -> str:
    """Points of ``{"x", "y", "color", "title", "hollow"?}``; optional ``lines`` below them."""
    xs = Scale([p["x"] for p in points], PAD_L, width - PAD_R, x_kind, cats=cats, integer=integer_x)
    ys = Scale([p["y"] for p in points] + [y for ln in lines or () for y in ln["y"]], height - PAD_B, PAD_T)
    out = _open(width, height, title)
    _axes(out, xs, ys, xlabel, ylabel, width, height)
    for ln in lines or ():
        pts = [(xs(x), ys(y)) for x, y in zip(ln["x"], ln["y"])]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        if pts:
            d = "M" + "".join(f"{a:.1f},{b:.1f}L" for a, b in pts).rstrip("L")
            out.append(f'<path class="mark" d="{d}" fill="none" stroke="{ln["color"]}" stroke-width="2">'
                       f'<title>{escape(ln["name"])}</title></path>')
    for p in points:
        a, b = xs(p["x"]), ys(p["y"])
        if a is None or b is None:
            continue
        if x_kind == "cat":  # jitter so equal values stay visible
            a += (hash(p["title"]) % 11 - 5) * 1.5
        fill = "none" if p.get("hollow") else p["color"]
        out.append(f'<circle class="mark" cx="{a:.1f}" cy="{b:.1f}" r="4" fill="{fill}" stroke="{p["color"]}" '
                   f'stroke-width="1.5"><title>{escape(p["title"])}</title></circle>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(labels: list[str], values: list[float], *, title: str, xlabel: str, width: int = W,
              colors: list[str] | None = None, value_fmt=fmt) -> str:
    """Horizontal bars, one per label (values ≥ 0)."""
    height = PAD_T + 24 * len(labels) + PAD_B
    left = 150
    top = max([v for v in values if finite(v)] + [1e-12])
    out = _open(width, height, title)
    x1 = width - PAD_R - 60
    out.append(f'<text class="label" x="{(left + x1) / 2:.0f}" y="{height - 8}" text-anchor="middle">'
               f'{escape(xlabel)}</text>')
    for i, (label, v) in enumerate(zip(labels, values)):
        y = PAD_T + 24 * i + 4
        out.append(f'<text class="tick" x="{left - 6}" y="{y + 12}" text-anchor="end">{escape(_clip(label, 22))}'
                   f'</text>')
        if not finite(v):
            out.append(f'<text class="tick" x="{left + 4}" y="{y + 12}">n/a</text>')
            continue
        w = max((x1 - left) * v / top, 1.0)
        color = (colors or PALETTE)[i % len(colors or PALETTE)]
        out.append(f'<rect class="mark" x="{left}" y="{y}" width="{w:.1f}" height="16" fill="{color}">'
                   f'<title>{escape(label)}: {escape(value_fmt(v))}</title></rect>'
                   f'<text class="tick" x="{left + w + 4:.1f}" y="{y + 12}">{escape(value_fmt(v))}</text>')
    out.append("</svg>")
    return "".join(out)


def parallel_coordinates(axes: list[dict], lines: list[dict], *, title: str, width: int = 900,
                         height: int = 340) -> str:
    """``axes``: ``{"name", "kind" (linear|log|cat), "values"}`` (every line's value, None when
    inactive); ``lines``: ``{"color", "title"}`` in the same order as the values."""
    n = len(axes)
    x0, x1 = PAD_L, width - PAD_R - 40
    xs = [x0 + (x1 - x0) * i / max(n - 1, 1) for i in range(n)]
    scales = [Scale(a["values"], height - PAD_B, PAD_T + 12, a["kind"], cats=a.get("cats")) for a in axes]
    out = _open(width, height, title)
    for j, line in enumerate(lines):
        pts = [(x, s(a["values"][j]) if a["values"][j] is not None else None) for x, s, a in zip(xs, scales, axes)]
        # An inactive (conditional) key breaks the line: segments join only present values.
        segs, cur = [], []
        for x, y in pts:
            if y is None:
                if len(cur) > 1:
                    segs.append(cur)
                cur = []
            else:
                cur.append((x, y))
        if len(cur) > 1:
            segs.append(cur)
        if not segs:
            continue
        d = "".join("M" + "L".join(f"{a:.1f},{b:.1f}" for a, b in seg) for seg in segs)
        out.append(f'<path class="mark" d="{d}" fill="none" stroke="{line["color"]}" stroke-width="1.4" '
                   f'opacity="0.75"><title>{escape(line["title"])}</title></path>')
    for x, s, a in zip(xs, scales, axes):
        out.append(f'<line class="axis" x1="{x:.1f}" y1="{PAD_T + 12}" x2="{x:.1f}" y2="{height - PAD_B}"/>')
        for py, label in s.ticks(4):
            if py is not None:
                out.append(f'<text class="tick" x="{x + 3:.1f}" y="{py + 3:.1f}">{escape(_clip(label, 9))}</text>')
        out.append(f'<text class="label" x="{x:.1f}" y="{height - PAD_B + 16}" text-anchor="middle">'
                   f'{escape(_clip(".".join(a["name"].split(".")[-2:]), 18))}<title>{escape(a["name"])}</title></text>')
    out.append("</svg>")
    return "".join(out)


def heatmap(z: list[list[float | None]], *, title: str, xlabel: str, ylabel: str, x_scale: Scale | None = None,
            y_scale: Scale | None = None, x_labels: list[str] | None = None, y_labels: list[str] | None = None,
            points: list[dict] | None = None, annotate: bool = False, width: int = W, height: int = H) -> str:
    """A grid of coloured cells (rows top to bottom), colour by value; optional points on top.

    With ``x_labels``/``y_labels`` the cells are categories (a confusion matrix); otherwise
    the grid spans ``x_scale``/``y_scale`` evenly in their own units (log or linear).
    """
    vals = [v for row in z for v in row if finite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    span = hi - lo or 1.0
    ny, nx = len(z), len(z[0]) if z else 0
    bar = 52  # the colour bar and its labels, right of the cells (a label like 0.9972 fits)
    x0, x1, y0, y1 = PAD_L, width - PAD_R - bar, PAD_T, height - PAD_B
    cw, ch = (x1 - x0) / max(nx, 1), (y1 - y0) / max(ny, 1)
    out = _open(width, height, title)
    for i, row in enumerate(z):
        for j, v in enumerate(row):
            cx, cy = x0 + j * cw, y0 + i * ch
            tip = f"{fmt(v)}" if finite(v) else "n/a"
            if x_labels and y_labels:
                tip = f"{ylabel} {y_labels[i]}, {xlabel} {x_labels[j]}: {tip}"
            out.append(f'<rect class="mark" x="{cx:.1f}" y="{cy:.1f}" width="{cw + 0.3:.1f}" height="{ch + 0.3:.1f}" '
                       f'fill="{colour((v - lo) / span if finite(v) else None)}"><title>{escape(tip)}</title></rect>')
            if annotate and finite(v):
                light = (v - lo) / span < 0.6
                out.append(f'<text class="cell" x="{cx + cw / 2:.1f}" y="{cy + ch / 2 + 4:.1f}" text-anchor="middle" '
                           f'style="fill:{"#fff" if light else "#000"}">{fmt(v)}</text>')
    if x_labels and y_labels:
        for j, lab in enumerate(x_labels):
            out.append(f'<text class="tick" x="{x0 + (j + 0.5) * cw:.1f}" y="{y1 + 14}" text-anchor="middle">'
                       f'{escape(lab)}</text>')
        for i, lab in enumerate(y_labels):
            out.append(f'<text class="tick" x="{x0 - 4}" y="{y0 + (i + 0.5) * ch + 4:.1f}" text-anchor="end">'
                       f'{escape(lab)}</text>')
        out.append(f'<text class="label" x="{(x0 + x1) / 2:.0f}" y="{height - 8}" text-anchor="middle">'
                   f'{escape(xlabel)}</text><text class="label" transform="translate(12 {(y0 + y1) / 2:.0f}) '
                   f'rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    elif x_scale is not None and y_scale is not None:
        xs, ys = x_scale.onto(x0, x1), y_scale.onto(y1, y0)
        _axes(out, xs, ys, xlabel, ylabel, width - bar, height)
        for p in points or ():
            a, b = xs(p["x"]), ys(p["y"])
            if a is not None and b is not None:
                out.append(f'<circle class="mark" cx="{a:.1f}" cy="{b:.1f}" r="3.5" fill="none" stroke="#fff" '
                           f'stroke-width="1.5"><title>{escape(p["title"])}</title></circle>')
    # colour bar
    bx = x1 + 8
    for k in range(20):
        out.append(f'<rect x="{bx}" y="{y1 - (k + 1) * (y1 - y0) / 20:.1f}" width="10" '
                   f'height="{(y1 - y0) / 20 + 0.5:.1f}" fill="{colour(k / 19)}"/>')
    out.append(f'<text class="tick" x="{bx + 12}" y="{y0 + 8}">{fmt(hi)}</text>'
               f'<text class="tick" x="{bx + 12}" y="{y1}">{fmt(lo)}</text>')
    out.append("</svg>")
    return "".join(out)
