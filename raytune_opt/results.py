"""A finished sweep's results: results.csv, best.json, per-trial histories, a leaderboard.

Every file is written atomically. Rows describe trials in our terms (flat active config,
best and last metrics, why the trial stopped), not Ray's.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from raytune_opt import _atomic, objectives
from raytune_opt.experiment import BEST, PARETO, RESULTS, history_file
from raytune_opt.spec.schema import METRICS

METRIC_COLUMNS = ("val_accuracy", "val_f1", "val_precision", "val_recall", "val_loss", "train_loss")


@dataclass
class TrialRow:
    trial_id: str
    status: str  # ok | stopped | diverged | infeasible | error
    stop_reason: str
    config: dict
    epochs: int
    seconds: float
    train_seconds: float
    best: dict = field(default_factory=dict)  # metrics of the best epoch
    last: dict = field(default_factory=dict)
    checkpoint: str | None = None  # directory holding best.pt / last.pt
    error: str | None = None
    history: list = field(default_factory=list)
    node_id: str = ""  # the Ray node that ran the trial (rank 0's, for several workers)

    @property
    def successful(self) -> bool:
        return self.status in ("ok", "stopped") and bool(self.best)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def best_epoch(history: list[dict], metric: str, mode: str) -> dict:
    """The epoch row with the best finite ``metric`` (the earliest on ties)."""
    rows = [r for r in history if _finite(r.get(metric))]
    if not rows:
        return {}
    sign = 1 if mode == "max" else -1
    return max(rows, key=lambda r: (sign * r[metric], -r.get("epoch", 0)))


def select_best(rows: list[TrialRow], metric: str, mode: str) -> TrialRow | None:
    """The best successful trial; ties go to fewer epochs."""
    ok = [r for r in rows if r.successful and _finite(r.best.get(metric))]
    if not ok:
        return None
    sign = 1 if mode == "max" else -1
    return max(ok, key=lambda r: (sign * r.best[metric], -r.epochs))


def metric_columns(rows: list[TrialRow], *metrics: str) -> list[str]:
    """The metric columns of results.csv: the classification recipe's (always, as before),
    then any other recipe metric some trial reported (regression), the deployment measures
    when trials reported them, then the sweep's metrics that are none of those (a user loop's own)."""
    seen = {k for r in rows for k in (*r.best, *r.last)}
    cols = list(METRIC_COLUMNS) + [m for m in (*METRICS, *objectives.MEASURES) if m not in METRIC_COLUMNS and m in seen]
    return cols + [m for m in metrics if m not in cols]


def write_results(exp_dir: Path, rows: list[TrialRow], space_keys: list[str], metric: str, mode: str,
                  spec_sha256: str, *, more: tuple = (), budget: dict | None = None) -> TrialRow | None:
    """Write results.csv, history/<trial>.csv and best.json (and, with ``more`` objectives
    beside ``metric``, pareto.csv); return the best row by ``metric``.

    Args:
        more: further ``(metric, mode)`` objectives. best.json then also holds the best trial
            of each objective and the Pareto front (the non-dominated successful trials, by
            their best epoch's values).
        budget: search.budget's summary (why it ended the sweep, what was spent), kept in best.json.
    """
    out = io.StringIO()
    objs = [(metric, mode), *more]
    metrics = metric_columns(rows, *(m for m, _ in objs))
    cols = (["trial_id", "status", "stop_reason", "epochs", "seconds", "train_seconds"]
            + [f"best_{m}" for m in metrics] + [f"last_{m}" for m in metrics]
            + [f"config.{k}" for k in space_keys] + ["config", "checkpoint", "node_id", "error"])
    w = csv.DictWriter(out, fieldnames=cols)
    w.writeheader()
    for r in rows:
        rec = {"trial_id": r.trial_id, "status": r.status, "stop_reason": r.stop_reason, "epochs": r.epochs,
               "seconds": round(r.seconds, 3), "train_seconds": round(r.train_seconds, 3),
               "config": json.dumps(r.config, sort_keys=True), "checkpoint": r.checkpoint or "", "node_id": r.node_id,
               "error": (r.error or "").splitlines()[-1][:300] if r.error else ""}
        for m in metrics:
            rec[f"best_{m}"] = r.best.get(m, "")
            rec[f"last_{m}"] = r.last.get(m, "")
        for k in space_keys:
            rec[f"config.{k}"] = r.config.get(k, "")
        w.writerow(rec)
    _atomic.write_text(exp_dir / RESULTS, out.getvalue())
    for r in rows:
        if r.history:
            hist_cols = sorted({k for h in r.history for k in h})
            buf = io.StringIO()
            hw = csv.DictWriter(buf, fieldnames=hist_cols)
            hw.writeheader()
            hw.writerows(r.history)
            _atomic.write_text(history_file(exp_dir, r.trial_id), buf.getvalue())
    best = select_best(rows, metric, mode)
    front = pareto(rows, objs) if more else []
    if more:
        write_pareto(exp_dir, front, objs)
    if best is not None:
        record = {
            "trial_id": best.trial_id, "metric": metric, "mode": mode, "value": best.best[metric],
            "config": best.config, "metrics": best.best, "epochs": best.epochs,
            "checkpoint": f"{best.checkpoint.rstrip('/')}/best.pt" if best.checkpoint else None,
            "spec_sha256": spec_sha256,
        }
        if more:
            record["objectives"] = [_best_of(rows, m, md) for m, md in objs]
            record["pareto"] = [r.trial_id for r in front]
        if budget is not None:
            record["budget"] = budget
        _atomic.write_json(exp_dir / BEST, record)
    return best


def _best_of(rows: list[TrialRow], metric: str, mode: str) -> dict:
    top = select_best(rows, metric, mode)
    return {"metric": metric, "mode": mode, "trial_id": top.trial_id if top else None,
            "value": top.best[metric] if top else None}


def pareto(rows: list[TrialRow], objs: list[tuple[str, str]]) -> list[TrialRow]:
    """The successful (so feasible) trials no other dominates, by their best epoch's values."""
    ok = {r.trial_id: r for r in rows if r.successful}
    keep = set(objectives.pareto_front(((t, r.best) for t, r in ok.items()), objs))
    return sorted((r for t, r in ok.items() if t in keep), key=lambda r: r.best[objs[0][0]],
                  reverse=objs[0][1] == "max")


def write_pareto(exp_dir: Path, front: list[TrialRow], objs: list[tuple[str, str]]) -> None:
    """pareto.csv: the front, best first by the first objective."""
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=["trial_id", *(m for m, _ in objs), "epochs", "config", "checkpoint"])
    w.writeheader()
    for r in front:
        w.writerow({"trial_id": r.trial_id, **{m: r.best.get(m, "") for m, _ in objs}, "epochs": r.epochs,
                    "config": json.dumps(r.config, sort_keys=True),
                    "checkpoint": f"{r.checkpoint.rstrip('/')}/best.pt" if r.checkpoint else ""})
    _atomic.write_text(exp_dir / PARETO, out.getvalue())


def leaderboard(rows: list[TrialRow], metric: str, mode: str, top: int = 10, width: int = 80) -> str:
    """A compact table of the best trials, then a count of the others by status; each line at
    most ``width`` columns (a long config is cut with "…": results.csv has it whole)."""
    sign = -1 if mode == "max" else 1
    ranked = sorted((r for r in rows if r.successful), key=lambda r: (sign * r.best.get(metric, 0), r.epochs))
    lines = [f"{'rank':>4}  {'trial':<10} {metric:>12} {'epochs':>6} {'status':<8} config"]
    for i, r in enumerate(ranked[:top], 1):
        cfg = short_config(r.config, ", ")
        lines.append(f"{i:>4}  {r.trial_id:<10} {r.best[metric]:>12.4f} {r.epochs:>6} {r.status:<8} {cfg}")
    others = [r for r in rows if not r.successful]
    for r in others:
        lines.append(f"{'-':>4}  {r.trial_id:<10} {'-':>12} {r.epochs:>6} {r.status:<8} {r.stop_reason}")
    counts = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    lines.append("trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in lines)


def config_lines(config: dict, width: int = 80, indent: str = "  ") -> list[str]:
    """A trial's config as ``key=value`` words wrapped to ``width`` columns."""
    import textwrap

    words = " ".join(f"{k}={_short(v)}" for k, v in sorted(config.items()))
    return textwrap.wrap(words, width, initial_indent=indent, subsequent_indent=indent) if words else []


def short_config(config: dict, sep: str = " ") -> str:
    """A flat config as ``key=value`` words keyed by the last part of each dotted key."""
    return sep.join(f"{k.split('.')[-1]}={_short(v)}" for k, v in sorted(config.items()))


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


assert set(METRIC_COLUMNS) <= set(METRICS), "results columns are recipe metrics"
