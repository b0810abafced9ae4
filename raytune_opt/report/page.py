"""The report page: one self-contained HTML file (inline CSS, inline SVG, a little inline JS).

Sections follow the order people tune by: who won (leaderboard), how the search went
(history), how trials trained (curves, over-/under-fitting), what mattered (parallel
coordinates, slices, contour, importance), the best trial up close, and what was promoted.
A section without data says why instead of drawing an empty chart.
"""

from __future__ import annotations

import datetime as _dt
from html import escape

from raytune_opt import objectives
from raytune_opt.report import svg
from raytune_opt.report.data import Experiment, Trial

TOP_LOSS_TRIALS = 5
CONTOUR_GRID = 28
STATUS_COLOUR = {"ok": "#2ca02c", "stopped": "#7f7f7f", "diverged": "#d62728", "error": "#d62728",
                 "infeasible": "#ff7f0e", "unfinished": "#1f77b4", "warm start": "#8c564b"}
FRONT_COLOUR = "#9467bd"


def render(exp: Experiment, importance: dict, best_ckpt: dict | None) -> str:
    """The whole page as a string."""
    sections = [
        ("leaderboard", "Leaderboard", _leaderboard(exp)),
        *([("pareto", "Pareto front", _pareto(exp))] if objectives.is_multi(exp.spec["search"]) else []),
        ("history", "Optimisation history", _history(exp)),
        ("curves", f"Learning curves: {exp.metric} per epoch", _curves(exp)),
        ("losses", f"Train vs validation loss of the top {TOP_LOSS_TRIALS} trials", _losses(exp)),
        ("parallel", "Parallel coordinates", _parallel(exp)),
        ("slices", "Slice plots", _slices(exp)),
        ("contour", "Contour of the two most important hyperparameters", _contour(exp, importance)),
        ("importance", "Hyperparameter importance (Optuna)", _importance(importance)),
        ("best", "The best trial", _best(exp, best_ckpt)),
        ("promotion", "Promotion", _promotion(exp)),
    ]
    nav = " · ".join(f'<a href="#{sid}">{escape(title.split(":")[0])}</a>' for sid, title, _ in sections)
    body = "\n".join(f'<section id="{sid}" data-section="{sid}"><h2>{escape(title)}</h2>\n{html}\n</section>'
                     for sid, title, html in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>raytune-opt report: {escape(str(exp.spec.get('name', '')))}</title>"
            f"<style>{_CSS}</style><script>{_JS_ERRORS}</script></head><body>\n"
            f"{_header(exp)}\n<nav>{nav}</nav>\n{body}\n"
            f'<pre id="report-check" hidden></pre><script>{_JS}</script></body></html>\n')


# --- sections ---------------------------------------------------------------------------------

def _header(exp: Experiment) -> str:
    spec, search = exp.spec, exp.spec["search"]
    counts: dict[str, int] = {}
    for t in exp.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    state = "finished" if exp.finished else "running (or interrupted): results.csv not written yet"
    algo = search["algorithm"] + (f" ({search['sampler']})" if search["algorithm"] == "optuna" else "")
    rows = [("experiment", str(exp.exp_dir)), ("state", state),
            ("trials", f"{len(exp.trials)} of {search['num_samples']} sample(s): "
                       + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))),
            ("search", f"{algo}, {exp.metric} ({exp.mode})"),
            ("scheduler", spec["scheduler"]["name"]),
            ("generated", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))]
    if exp.warm:
        sources = sorted({t.trial_id.rsplit("/", 1)[0] for t in exp.warm})
        vals = [t.best[exp.metric] for t in exp.warm if exp.metric in t.best]
        top = (max(vals) if exp.mode == "max" else min(vals)) if vals else None
        rows.insert(3, ("warm start", f"{len(exp.warm)} earlier trial(s) of {', '.join(sources)} told to the searcher, "
                                      "not trained" + (f" (their best {exp.metric} {svg.fmt(top)})" if vals else "")))
    if search.get("num_samples") is None:  # as many as search.budget allowed
        rows[2] = ("trials", f"{len(exp.trials)} (until the budget ended): "
                             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if exp.budget is not None:
        from raytune_opt.budget import report_line

        rows.insert(3, ("budget", report_line(exp.budget).removeprefix("budget: ")))
    if exp.best:
        rows.insert(3, ("best", f"trial {exp.best['trial_id']}: {exp.metric} {svg.fmt(exp.best['value'])} "
                                f"(epoch {exp.best.get('metrics', {}).get('epoch')})"))
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<h1>raytune-opt report: {escape(str(spec.get('name', '')))}</h1><table class=\"meta\">{cells}</table>"


def _keys(exp: Experiment) -> list[str]:
    return [p.key for p in exp.space.params]


def _kind(exp: Experiment, key: str) -> str:
    d = exp.space.by_key[key].domain
    if d.categorical:
        return "cat"
    return "log" if d.kind in ("loguniform", "qloguniform", "lograndint") else "linear"


def _cats(exp: Experiment, key: str) -> list | None:
    d = exp.space.by_key[key].domain
    return list(d.args) if d.categorical else None


def _value(t: Trial, metric: str):
    v = t.best.get(metric)
    return v if svg.finite(v) else None


def _value_colours(exp: Experiment) -> dict[str, str]:
    """Each trial's colour by its best value (bright = better), grey without one."""
    vals = [v for t in exp.trials if (v := _value(t, exp.metric)) is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    span = (hi - lo) or 1.0
    out = {}
    for t in exp.trials:
        v = _value(t, exp.metric)
        frac = None if v is None else (v - lo) / span
        if frac is not None and exp.mode == "min":
            frac = 1 - frac
        out[t.trial_id] = svg.colour(frac)
    return out


def _ranked(exp: Experiment) -> list[Trial]:
    sign = -1 if exp.mode == "max" else 1
    have = [t for t in exp.trials if _value(t, exp.metric) is not None]
    return sorted(have, key=lambda t: (sign * _value(t, exp.metric), t.epochs))


def _leaderboard(exp: Experiment) -> str:
    keys = _keys(exp)
    rank = {t.trial_id: i for i, t in enumerate(_ranked(exp), 1)}
    # Beside the sweep's metric, the others people compare by, for the task the trials report.
    reported = {m for t in exp.trials + exp.warm for m in t.best}
    extra = [m for m in ("val_accuracy", "val_f1", "val_rmse", "val_r2", "val_loss") if m != exp.metric and m in reported]
    head = (["rank", "trial", "status", "stop reason", "epochs", f"best {exp.metric}"]
            + [f"best {m}" for m in extra] + ["seconds"] + [k for k in keys])
    rows = []
    enqueued = [c for c in exp.spec["search"].get("enqueue") or () if isinstance(c, dict) and c]
    for t in sorted(exp.trials, key=lambda t: rank.get(t.trial_id, 1 << 30)) + exp.warm:
        reason = t.stop_reason or t.error
        if any(all(t.config.get(k) == v for k, v in c.items()) for c in enqueued):
            reason = f"enqueued (search.enqueue); {reason}"
        cells = [rank.get(t.trial_id, ""), t.trial_id, t.status, reason, t.epochs,
                 t.best.get(exp.metric)] + [t.best.get(m) for m in extra] + [t.seconds] + [t.config.get(k) for k in keys]
        tds = []
        for c in cells:
            num = isinstance(c, (int, float)) and not isinstance(c, bool)
            shown = "" if c is None else svg.fmt(round(c, 6) if isinstance(c, float) else c)
            tds.append(f'<td{" class=num" if num else ""} data-v="{escape(str(c)) if num else escape(shown)}">'
                       f'{escape(shown)}</td>')
        rows.append(f'<tr class="st-{escape(t.status.replace(" ", "-"))}">{"".join(tds)}</tr>')
    ths = "".join(f'<th title="sort by {escape(h)}">{escape(h)}</th>' for h in head)
    return (f'<p class="hint">Click a column to sort by it (again to reverse). Empty config cells: the key was '
            f'inactive in that trial (a conditional parameter).</p><div class="scroll"><table class="sortable '
            f'leaderboard"><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _none(why: str) -> str:
    return f'<p class="none">{escape(why)}</p>'


def _pareto(exp: Experiment) -> str:
    """The first objective against each other one: every successful trial, the front (the
    non-dominated feasible trials, pareto.csv) filled and joined."""
    objs = objectives.objectives(exp.spec["search"])
    done = [t for t in exp.trials if t.status in ("ok", "stopped")]
    front = set(objectives.pareto_front(((t.trial_id, t.best) for t in done), objs))
    infeasible = sum(t.status == "infeasible" for t in exp.trials)
    (m0, d0), charts = objs[0], []
    for mk, dk in objs[1:]:
        pts = [{"x": t.best[mk], "y": t.best[m0], "color": FRONT_COLOUR if t.trial_id in front else "#7f7f7f",
                "hollow": t.trial_id not in front,
                "title": f"trial {t.trial_id}{' (front)' if t.trial_id in front else ''}: {mk}={svg.fmt(t.best[mk])}, "
                         f"{m0}={svg.fmt(t.best[m0])}"}
               for t in done if svg.finite(t.best.get(mk)) and svg.finite(t.best.get(m0))]
        line = sorted((p["x"], p["y"]) for p in pts if not p["hollow"])
        if pts:
            charts.append(svg.scatter_chart(
                pts, title=f"{m0} ({d0}) against {mk} ({dk})", xlabel=mk, ylabel=m0, width=460, height=320,
                lines=[{"x": [x for x, _ in line], "y": [y for _, y in line], "color": FRONT_COLOUR,
                        "name": "the Pareto front"}] if len(line) > 1 else None))
    if not charts:
        return _none("no successful trial with every objective yet")
    note = (f'<p class="hint">Filled and joined: the {len(front)} trial(s) no other beats in every objective '
            f'(pareto.csv). Hollow: dominated.' + (f" {infeasible} infeasible trial(s) broke a constraint and are "
                                                   "not drawn." if infeasible else "") + "</p>")
    return note + f'<div class="grid">{"".join(charts)}</div>'


def _history(exp: Experiment) -> str:
    if not exp.trials and not exp.warm:
        return _none("no trial has reported yet")
    points, best_x, best_y, best = [], [], [], None
    warm = [t.best[exp.metric] for t in exp.warm if svg.finite(t.best.get(exp.metric))]
    if warm:  # the sweep starts from what its warm start knew: their best, drawn at trial 0
        best = max(warm) if exp.mode == "max" else min(warm)
        points.append({"x": 0, "y": best, "color": STATUS_COLOUR["warm start"], "hollow": False,
                       "title": f"warm start: the best of {len(exp.warm)} earlier trial(s): {exp.metric} {svg.fmt(best)}"})
        best_x.append(0)
        best_y.append(best)
    for i, t in enumerate(exp.trials, 1):
        v = _value(t, exp.metric)
        if v is None:
            continue
        points.append({"x": i, "y": v, "color": STATUS_COLOUR.get(t.status, "#000"), "hollow": t.status != "ok",
                       "title": f"trial {t.trial_id} (#{i}, {t.status}): {exp.metric} {svg.fmt(v)}"})
        if best is None or (v > best if exp.mode == "max" else v < best):
            best = v
        best_x.append(i)
        best_y.append(best)
    if not points:
        return _none(f"no trial has a finite {exp.metric} yet")
    chart = svg.scatter_chart(points, title=f"best {exp.metric} of each trial, and the best so far",
                              xlabel="trial (in start order)", ylabel=exp.metric, integer_x=True,
                              lines=[{"x": best_x, "y": best_y, "color": "#d62728", "name": "best so far"}])
    return chart + _status_legend()


def _status_legend() -> str:
    items = "".join(f'<span style="color:{c}">●</span> {s} ' for s, c in STATUS_COLOUR.items())
    return f'<p class="hint">{items}(filled: finished; hollow: stopped, unfinished or failed)</p>'


def _curves(exp: Experiment) -> str:
    colours = _value_colours(exp)
    series = []
    for t in exp.trials:
        h = [r for r in t.history if r.get(exp.metric) is not None]
        if h:
            series.append({"name": f"trial {t.trial_id} ({t.status})", "x": [r["epoch"] for r in h],
                           "y": [r[exp.metric] for r in h], "color": colours[t.trial_id],
                           "end": "x" if t.status == "stopped" else None})
    if not series:
        return _none("no epoch has been reported yet")
    chart = svg.line_chart(series, title=f"{exp.metric} per epoch, every trial", xlabel="epoch", ylabel=exp.metric,
                           width=760, height=380)
    sched = exp.spec["scheduler"]
    note = ""
    if sched["name"] in ("asha", "hyperband"):
        note = (f" {sched['name']}: grace period {svg.fmt(sched.get('grace_period'))}, reduction factor "
                f"{svg.fmt(sched.get('reduction_factor'))}; its stops fall on the rungs.")
    return chart + (f'<p class="hint">Colour: the trial\'s best {exp.metric} (bright = better). ✕: a trial the '
                    f'scheduler stopped there.{escape(note)}</p>')


def _losses(exp: Experiment) -> str:
    top = _ranked(exp)[:TOP_LOSS_TRIALS]
    series = []
    for i, t in enumerate(top):
        c = svg.PALETTE[i % len(svg.PALETTE)]
        for key, dash in (("train_loss", False), ("val_loss", True)):
            h = [r for r in t.history if r.get(key) is not None]
            if h:
                series.append({"name": f"{t.trial_id} {key}", "x": [r["epoch"] for r in h], "y": [r[key] for r in h],
                               "color": c, "dash": dash})
    if not series:
        return _none("no trial with losses yet")
    return (svg.line_chart(series, title="train (solid) and validation (dashed) loss", xlabel="epoch",
                           ylabel="loss", width=760, height=380, legend=True)
            + '<p class="hint">Validation loss rising while train loss falls: over-fitting; both high and flat: '
              'under-fitting.</p>')


def _parallel(exp: Experiment) -> str:
    keys = _keys(exp)
    trials = [t for t in exp.trials if _value(t, exp.metric) is not None]
    if not keys or not trials:
        return _none("needs a searched key and a trial with a value")
    colours = _value_colours(exp)
    axes = [{"name": k, "kind": _kind(exp, k), "cats": _cats(exp, k), "values": [t.config.get(k) for t in trials]}
            for k in keys]
    axes.append({"name": exp.metric, "kind": "linear", "values": [_value(t, exp.metric) for t in trials]})
    lines = [{"color": colours[t.trial_id],
              "title": f"trial {t.trial_id}: " + ", ".join(f"{k.split('.')[-1]}={svg.fmt(t.config[k])}"
                                                          for k in keys if k in t.config)
                       + f" → {svg.fmt(_value(t, exp.metric))}"} for t in trials]
    return svg.parallel_coordinates(axes, lines, title=f"searched keys → {exp.metric}",
                                    width=max(600, 130 * len(axes)))


def _slices(exp: Experiment) -> str:
    keys = _keys(exp)
    if not keys:
        return _none("the spec searches no key")
    charts = []
    for k in keys:
        pts = [{"x": t.config[k], "y": v, "color": STATUS_COLOUR.get(t.status, "#000"), "hollow": t.status != "ok",
                "title": f"trial {t.trial_id}: {k}={svg.fmt(t.config[k])} → {svg.fmt(v)}"}
               for t in exp.trials if k in t.config and (v := _value(t, exp.metric)) is not None]
        if pts:
            charts.append(svg.scatter_chart(pts, title=k, xlabel=k, ylabel=exp.metric, x_kind=_kind(exp, k),
                                            cats=_cats(exp, k), width=360, height=260))
    if not charts:
        return _none("no trial with a value yet")
    return f'<div class="grid">{"".join(charts)}</div>' + _status_legend()


def _most_important(exp: Experiment, importance: dict) -> list[str]:
    for name in ("fANOVA", "PED-ANOVA"):
        imp = importance.get(name)
        if isinstance(imp, dict) and len(imp) >= 2:
            return list(imp)[:2]
    return _keys(exp)[:2]


def _contour(exp: Experiment, importance: dict) -> str:
    pair = _most_important(exp, importance)
    if len(pair) < 2:
        return _none("needs two searched keys")
    kx, ky = pair
    trials = [t for t in exp.trials if kx in t.config and ky in t.config and _value(t, exp.metric) is not None]
    if len(trials) < 2:
        return _none(f"needs two trials with both {kx} and {ky} and a value")
    sx = svg.Scale([t.config[kx] for t in trials], 0, 1, _kind(exp, kx), cats=_cats(exp, kx))
    sy = svg.Scale([t.config[ky] for t in trials], 1, 0, _kind(exp, ky), cats=_cats(exp, ky))
    pts = [(sx(t.config[kx]), 1 - sy(t.config[ky]), _value(t, exp.metric)) for t in trials]
    nx = len(sx.cats) if sx.kind == "cat" else CONTOUR_GRID
    ny = len(sy.cats) if sy.kind == "cat" else CONTOUR_GRID
    z = []
    for i in range(ny):  # rows from the top (high y) down
        gy = 1 - (i + 0.5) / ny
        z.append([_idw(pts, (j + 0.5) / nx, gy) for j in range(nx)])
    chart = svg.heatmap(z, title=f"{exp.metric} over {kx} × {ky} (interpolated)", xlabel=kx, ylabel=ky,
                        x_scale=sx, y_scale=sy,
                        points=[{"x": t.config[kx], "y": t.config[ky],
                                 "title": f"trial {t.trial_id}: {svg.fmt(_value(t, exp.metric))}"} for t in trials],
                        width=620, height=400)
    return chart + ('<p class="hint">Inverse-distance interpolation between the trials (circles), on each key\'s '
                    'own scale (log for log domains); the keys are the two most important by fANOVA where it '
                    'could be computed.</p>')


def _idw(pts: list[tuple], x: float, y: float) -> float:
    num = den = 0.0
    for px, py, v in pts:
        d2 = (px - x) ** 2 + (py - y) ** 2
        if d2 < 1e-12:
            return v
        w = 1.0 / d2
        num += w * v
        den += w
    return num / den


def _importance(importance: dict) -> str:
    parts = []
    for name, imp in importance.items():
        if isinstance(imp, dict):
            labels = list(imp)
            parts.append(svg.bar_chart(labels, [imp[k] for k in labels], title=name, xlabel="importance",
                                       width=460, value_fmt=lambda v: f"{v:.3f}"))
        else:
            parts.append(f'<div class="none-box"><h3>{escape(name)}</h3>{_none(imp)}</div>')
    return (f'<div class="grid">{"".join(parts)}</div><p class="hint">Computed by Optuna on an in-memory study of '
            'the finished trials (their best values); trials a scheduler stopped are pruned there and do not count. '
            'A conditional key counts only if it is active in every finished trial. The same study is in '
            'optuna.journal.log for optuna-dashboard.</p>')


def _best(exp: Experiment, ckpt: dict | None) -> str:
    if not exp.best:
        return _none("no trial has succeeded yet (best.json is written when the sweep ends)")
    tid = exp.best["trial_id"]
    t = next((t for t in exp.trials if t.trial_id == tid), None)
    parts = []
    cfg = "".join(f"<tr><th>{escape(k)}</th><td>{escape(svg.fmt(v))}</td></tr>"
                  for k, v in sorted(exp.best.get("config", {}).items()))
    parts.append(f'<table class="meta"><tr><th>trial</th><td>{escape(tid)}</td></tr>{cfg}</table>')
    parts.append(_validation_and_test(exp.best))
    charts = []
    for key, label in (("lr", "learning rate"), ("grad_norm", "gradient norm (before clipping)")):
        h = [r for r in (t.history if t else []) if r.get(key) is not None]
        if h:
            charts.append(svg.line_chart([{"name": key, "x": [r["epoch"] for r in h], "y": [r[key] for r in h],
                                           "color": "#1f77b4"}], title=f"{label} per epoch", xlabel="epoch",
                                         ylabel=key, width=400, height=260, log_y=key == "lr" and min(
                                             r[key] for r in h) > 0))
    parts.append(f'<div class="grid">{"".join(charts)}</div>' if charts else _none("no per-epoch history"))
    parts.append(_per_class(ckpt))
    return "".join(parts)


def _validation_and_test(best: dict) -> str:
    """The best trial's validation figures beside its test figures (best.json's ``test``), and why they differ."""
    test = best.get("test")
    figures = test.get("metrics") if isinstance(test, dict) else None
    if not isinstance(figures, dict) or not figures:
        # A hint, not a missing section: the figures are there, they are validation figures.
        return ('<p class="hint">No test split (data.test_fraction 0, a data set without one, or an experiment of '
                'an older version): the figures on this page are validation figures, those the search selected on, '
                'so they are biased upward.</p>')
    # promote.select's trial (several objectives) was measured on both splits; else best.json's best.
    val = test.get("val") if isinstance(test.get("val"), dict) else best.get("metrics") or {}
    chosen = (f'<p>Trial {escape(str(test.get("trial_id")))}, the one promote.select picks (the point promotion '
              'converts).</p>') if test.get("selected_by") else ""

    def cell(v) -> str:
        return escape(svg.fmt(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"

    rows = "".join(f"<tr><th>{escape(k.removeprefix('test_'))}</th><td class=num>{cell(val.get('val_' + k[5:]))}"
                   f"</td><td class=num>{cell(v)}</td></tr>" for k, v in figures.items() if k.startswith("test_"))
    samples = test.get("samples")
    return (f'<h3>Validation and test</h3>{chosen}<table class="meta"><tr><th></th><th>validation</th>'
            f'<th>test{f" ({escape(str(samples))} samples)" if samples is not None else ""}</th></tr>{rows}</table>'
            '<p class="hint">The validation figure is that of the trial the search picked because it was best '
            'there, so it is biased upward (the more trials, the more); the test split was held out from every '
            'trial and measured once, on this trial only, so its figure is the unbiased estimate.</p>')


def _per_class(ckpt: dict | None) -> str:
    cm = (ckpt or {}).get("val_confusion")
    if not cm:
        why = ("its best.pt cannot be read" if ckpt is None else
               "its best.pt records no confusion matrix (written by an older raytune-opt)")
        return _none(f"Per-class precision/recall/F1 and the confusion matrix: {why}.")
    n = len(cm)
    rows = []
    for c in range(n):
        tp = cm[c][c]
        pred = sum(cm[r][c] for r in range(n))
        true = sum(cm[c])
        p = tp / pred if pred else 0.0
        r = tp / true if true else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        rows.append(f"<tr><td>{c}</td><td class=num>{p:.3f}</td><td class=num>{r:.3f}</td>"
                    f"<td class=num>{f1:.3f}</td><td class=num>{true}</td></tr>")
    table = ("<table class=\"sortable perclass\"><thead><tr><th>class</th><th>precision</th><th>recall</th>"
             f"<th>F1</th><th>support</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    labels = [str(c) for c in range(n)]
    size = min(560, 120 + 36 * n)
    chart = svg.heatmap([[float(v) for v in row] for row in cm], title="confusion matrix (validation set)",
                        xlabel="predicted", ylabel="true", x_labels=labels, y_labels=labels, annotate=True,
                        width=size + 40, height=size)
    epoch = (ckpt or {}).get("epoch")
    return (f'<h3>Per class, validation set, epoch {escape(str(epoch))} (recorded in best.pt)</h3>'
            f'<div class="grid"><div>{table}</div>{chart}</div>')


def _promotion(exp: Experiment) -> str:
    m = exp.manifest
    if not m:
        return _none("not promoted (no promotion/manifest.json): 'raytune-opt promote EXPERIMENT' writes it")
    arts = m.get("artifacts", [])
    names = [a["name"] for a in arts]
    # A regression's artifacts are scored by its metric (rmse, mae, r2); a classification's, and
    # every manifest from before regressions were promoted, by accuracy.
    metric = next((a["metric"] for a in arts if a.get("metric")), None)
    if metric is None:
        scores = [a["accuracy"] * 100 if svg.finite(a.get("accuracy")) else None for a in arts]
        score_chart = svg.bar_chart(names, scores, title="accuracy (%)", xlabel="%", width=380,
                                    value_fmt=lambda v: f"{v:.2f}")
    else:
        scores = [a["score"] if svg.finite(a.get("score")) else None for a in arts]
        score_chart = svg.bar_chart(names, scores, title=f"{metric} (validation set)", xlabel=metric, width=380,
                                    value_fmt=lambda v: f"{v:.4g}")
    size = [a["size_bytes"] / 1e6 if svg.finite(a.get("size_bytes")) else None for a in arts]

    def lat(a, b):
        rec = (a.get("latency_ms") or {}).get(b) or {}
        return rec.get("p50_ms")

    charts = [score_chart,
              svg.bar_chart(names, size, title="size (MB)", xlabel="MB", width=380, value_fmt=lambda v: f"{v:.3f}"),
              svg.bar_chart(names, [lat(a, "batch_1") for a in arts], title="latency p50, batch 1 (ms)", xlabel="ms",
                            width=380, value_fmt=lambda v: f"{v:.3f}"),
              svg.bar_chart(names, [lat(a, "batch_64") for a in arts], title="latency p50, batch 64 (ms)",
                            xlabel="ms", width=380, value_fmt=lambda v: f"{v:.3f}")]
    rows = []
    for a in arts:
        rows.append(f'<tr class="st-{escape(a["status"])}"><td>{escape(a["name"])}</td><td>{escape(a["status"])}</td>'
                    f'<td>{escape(a.get("reason") or "")}</td><td>{escape(str(a.get("path") or ""))}</td>'
                    f'<td>{escape(a.get("runtime") or "")}</td></tr>')
    table = ("<table class=\"sortable\"><thead><tr><th>artifact</th><th>status</th><th>reason</th><th>path</th>"
             f"<th>runtime</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    src = m.get("source", {})
    return (f'<p>Promoted trial {escape(str(src.get("trial_id")))} ({escape(str(src.get("metric")))} '
            f'{escape(svg.fmt(src.get("value")))}); manifest status <b>{escape(str(m.get("status")))}</b>.</p>'
            f'<div class="grid">{"".join(charts)}</div>{table}')


# --- page assets -----------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 2em 3em;color:#222;max-width:1500px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-top:.6em}
nav{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #eee;z-index:1}
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}table.meta th{color:#555;font-weight:normal}
table.sortable th{cursor:pointer;background:#f6f6f6;position:sticky;top:0}table.sortable th:hover{background:#e8e8e8}
tr.st-stopped td{color:#666}tr.st-error td,tr.st-diverged td,tr.st-failed td{color:#b00}
.scroll{max-height:480px;overflow:auto}.grid{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.hint{color:#666;font-size:12px}.none{color:#a60;font-style:italic}
svg.chart{background:#fff}svg .frame{fill:none;stroke:#999}svg .grid{stroke:#eee}svg .axis{stroke:#888}
svg text{font:11px system-ui,sans-serif;fill:#333}svg .title{font-weight:600;font-size:12px}
svg .cell{font-size:10px}
"""

_JS_ERRORS = """window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message||e));});
(function(){var o=console.error;console.error=function(){window.__errors.push(Array.prototype.join.call(arguments,' '));return o.apply(console,arguments);};})();"""

_JS = r"""
(function(){
function key(td){var v=td.hasAttribute('data-v')?td.getAttribute('data-v'):td.textContent;var n=Number(v);
  return v===''?[2,'']:(isFinite(n)?[0,n]:[1,v]);}
document.querySelectorAll('table.sortable').forEach(function(tbl){
  tbl.querySelectorAll('thead th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=tbl.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      var dir=th.getAttribute('data-dir')==='asc'?-1:1;th.setAttribute('data-dir',dir>0?'asc':'desc');
      rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
        if(x[0]!==y[0])return x[0]-y[0];return (x[1]<y[1]?-1:x[1]>y[1]?1:0)*dir;});
      rows.forEach(function(r){body.appendChild(r);});
    });});});
function summarise(){
  var check={errors:window.__errors,sections:{}};
  document.querySelectorAll('section[data-section]').forEach(function(s){
    var charts=s.querySelectorAll('svg.chart'),drawn=0,marks=0,empty=0;
    charts.forEach(function(c){var n=0;
      c.querySelectorAll('.mark').forEach(function(m){var b=m.getBBox();marks++;if(b.width>0||b.height>0)n++;});
      if(n>0)drawn++;else empty++;});
    var rows=0;s.querySelectorAll('table').forEach(function(t){rows+=t.tBodies.length?t.tBodies[0].rows.length:0;});
    check.sections[s.getAttribute('data-section')]={charts:charts.length,drawn:drawn,empty:empty,marks:marks,
      table_rows:rows,none:s.querySelectorAll('.none').length};});
  document.getElementById('report-check').textContent=JSON.stringify(check);
}
summarise();window.addEventListener('load',summarise);
})();
"""
