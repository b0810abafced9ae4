"""``promotion/manifest.json``: what was promoted, from where, and how each artifact did.

The manifest is written atomically. Each artifact records its file (path relative to the
promotion directory, sha256, size), its score on the validation set and how it compares to
fp32 PyTorch, latency p50/p95 at batch 1 and 64, and a status: ``ok``, ``rejected`` (failed
the gate; the file is kept), ``skipped`` or ``failed`` (with the reason). The score of a
classification is ``accuracy`` (a fraction) with ``delta_points`` (percentage points vs
fp32); of a regression, ``metric`` (rmse, mae or r2), ``score``, ``fp32_score`` and
``relative_change`` (the relative worsening vs fp32, see
:class:`~raytune_opt.promote.measure.Scorer`), with ``accuracy`` and ``delta_points`` null.

Each artifact is also scored on the test split, which no trial saw (``test_accuracy``, or a
regression's ``test_score`` in ``metric``; null without a test split): the validation score
is the one the gates compare (an artifact against its fp32 source), the test score is the
model's quality as the manifest reports it.

A model's artifact (ok or rejected) also records ``params`` and ``macs`` of the model it
holds or was converted from. When a compression step ran (``prune``, ``distill``), "fp32"
above is the trial's model: every change is against it. The compression step's own record
says how much of the trial's params and MACs it kept (``of_trial``), and the artifacts
converted from its model name it (``from_step``); their gates compare with that model.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from raytune_opt import _atomic, __version__, registry
from raytune_opt._fmt import signed
from raytune_opt._records import manifest_problem
from raytune_opt.promote.select import Source, sha256_file

FORMAT = "raytune-opt/promotion/v1"
FILENAME = "manifest.json"
STATUSES = ("ok", "rejected", "skipped", "failed")


def artifact(name: str, status: str, *, path: str | Path | None = None, root: Path | None = None,
             reason: str = "", accuracy: float | None = None, fp32_accuracy: float | None = None,
             metric: str | None = None, score: float | None = None, fp32_score: float | None = None,
             relative_change: float | None = None, latency_ms: dict | None = None, runtime: str = "",
             **extra) -> dict:
    """One artifact's record; ``path`` is hashed and stored relative to ``root`` when inside it.

    A classification's artifact passes ``accuracy`` and ``fp32_accuracy``; a regression's passes
    ``metric``, ``score``, ``fp32_score`` and ``relative_change`` (recorded only when ``metric``
    is given, so a classification's record keeps the keys it always had).
    """
    assert status in STATUSES, status
    rec: dict = {"name": name, "status": status, "reason": reason, "built": _now(), "path": None, "sha256": None,
                 "size_bytes": None}
    if path is not None:
        path = Path(path)
        rec["path"] = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
        rec["sha256"], rec["size_bytes"] = sha256_file(path), path.stat().st_size
    rec["accuracy"] = accuracy
    rec["delta_points"] = (None if accuracy is None or fp32_accuracy is None
                           else round((accuracy - fp32_accuracy) * 100.0, 4))
    if metric is not None:
        rec.update(metric=metric, score=score, fp32_score=fp32_score,
                   relative_change=None if relative_change is None else round(relative_change, 6))
    rec["latency_ms"] = latency_ms
    rec["runtime"] = runtime
    rec.update(extra)
    return rec


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions(tensorrt: str | None = None) -> dict:
    """Versions of everything that shaped the artifacts; ``tensorrt`` is None when not used."""
    out = {"python": platform.python_version(), "raytune_opt": __version__}
    for dist in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["tensorrt"] = tensorrt
    return out


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}


def build(source: Source, *, targets: list[str], artifacts: list[dict], inputs: dict, settings: dict,
          tensorrt_version: str | None) -> dict:
    """The whole manifest; ``status`` is ``failed`` when any artifact failed, else ``ok``."""
    return {
        "format": FORMAT,
        "created": _now(),
        "status": "failed" if any(a["status"] == "failed" for a in artifacts) else "ok",
        "experiment": str(source.exp_dir),
        "source": {
            "trial_id": source.trial_id, "metric": source.metric, "mode": source.mode, "value": source.value,
            "epochs": source.epochs, "config": source.config, "checkpoint": source.checkpoint_origin or str(source.checkpoint),
            "checkpoint_sha256": source.checkpoint_sha256, "spec_sha256": source.spec_sha256,
            # How the trial was chosen: promote.select's rule and why, else the sweep's best by its first metric.
            "rule": source.rule or {"select": None, "why": f"the best {source.metric} ({source.mode}) of the sweep "
                                                           "among its successful (feasible) trials (best.json)"},
        },
        "targets": targets,
        "settings": settings,
        "input": inputs,
        "versions": versions(tensorrt_version),
        "machine": machine(),
        "artifacts": artifacts,
    }


def previous_artifacts(promotion_dir: Path, source: Source) -> list[dict]:
    """Artifacts of an earlier promotion of the same checkpoint whose files are unchanged.

    ``promote --targets tensorrt`` on a GPU node adds the engines to what a CPU run built
    before, instead of forgetting it.
    """
    path = promotion_dir / FILENAME
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if manifest_problem(old):  # edited or not ours: this promotion's manifest replaces it
        return []
    if old.get("format") != FORMAT or old.get("source", {}).get("checkpoint_sha256") != source.checkpoint_sha256:
        return []
    kept = []
    for rec in old.get("artifacts", []):
        file = promotion_dir / rec["path"] if rec.get("path") else None
        if file is not None and not (file.is_file() and sha256_file(file) == rec.get("sha256")):
            continue
        kept.append(rec)
    return kept


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``new`` records replace ``old`` ones by name.

    Engines replace an earlier TensorRT skip line; a skip does not erase engines an earlier
    run built on a GPU node (they stay, with their own ``built`` time).
    """
    engines = {"tensorrt-fp16", "tensorrt-int8"}
    names = {a["name"] for a in new}
    if names & engines:
        names.add("tensorrt")
    elif "tensorrt" in names and any(a["name"] in engines for a in old):
        new = [a for a in new if a["name"] != "tensorrt"]
    onnx = next((a for a in new if a["name"] == "onnx"), None)
    if onnx is not None:
        # The chain was rebuilt: what an earlier run compressed, or converted from another model, is not its.
        source = onnx.get("from_step")
        old = [a for a in old if a["name"] not in COMPRESSION and a.get("from_step") == source]
    merged = [a for a in old if a["name"] not in names] + new
    order = {n: i for i, n in enumerate(ARTIFACT_ORDER)}
    return sorted(merged, key=lambda a: order.get(a["name"], len(order)))


#: The promotion steps that compress the model before it is converted (prune, distill).
COMPRESSION = tuple(n for n in registry.PROMOTION_STEPS if registry.PROMOTION_STEPS[n].meta.get("compresses"))
ARTIFACT_ORDER = ("pytorch", *COMPRESSION, "onnx", "int8", "int8-tensorrt-qdq", "tensorrt", "tensorrt-fp16",
                  "tensorrt-int8")


def write(promotion_dir: Path, manifest: dict) -> Path:
    path = promotion_dir / FILENAME
    _atomic.write_json(path, manifest)
    return path


def table(manifest: dict) -> str:
    """One row per artifact: name, status, score (accuracy, or a regression's metric, named in
    the header), Δ vs fp32 (points of accuracy, or a regression's relative change), p50 at batch
    1 and 64, size; with a test split, the score on it too (validation's is what the gates
    compare). When a compression step ran, the stages side by side: Δ vs the trial, params,
    MACs and p50/p95 at batch 1 and 64 too."""
    metric = score_metric(manifest)
    if any(a["name"] in COMPRESSION for a in manifest["artifacts"]):
        return _stage_table(manifest, metric)
    if has_test(manifest):
        return _tested_table(manifest, metric)
    head = "accuracy" if metric is None else metric
    # A regression's change is relative, of the metric itself; for r2, of 1 - r2 (measure.Scorer).
    delta = "Δ 1-r2" if metric == "r2" else "Δ vs fp32"
    lines = [f"{'artifact':<18} {'status':<9} {head:>8} {delta:>9} {'p50@1 ms':>9} {'p50@64 ms':>9} "
             f"{'size':>9}"]
    for a in manifest["artifacts"]:
        lat = a.get("latency_ms") or {}
        score, change = _score_cells(a, metric)
        lines.append(f"{a['name']:<18} {a['status']:<9} {score:>8} {change:>9} {_ms(lat.get('batch_1')):>9} "
                     f"{_ms(lat.get('batch_64')):>9} {_size(a.get('size_bytes')):>9}")
    return "\n".join(lines)


def _tested_table(manifest: dict, metric: str | None) -> str:
    """The table with the test split's score beside validation's, still in 80 columns: the
    validation score and its change (what the gates compare), then the test score."""
    short = "acc" if metric is None else metric
    val, test = f"val {short}", f"test {short}"
    wide = max(8, len(val), len(test))
    delta = "Δ 1-r2" if metric == "r2" else "Δ fp32"
    lines = [f"{'artifact':<17} {'status':<8} {val:>{wide}} {delta:>7} {test:>{wide}} {'p50@1 ms':>8} "
             f"{'p50@64 ms':>9} {'size':>8}"]
    for a in manifest["artifacts"]:
        lat = a.get("latency_ms") or {}
        score, change = _score_cells(a, metric)
        lines.append(f"{a['name']:<17} {a['status']:<8} {score:>{wide}} {change:>7} {_test_cell(a, metric):>{wide}} "
                     f"{_ms(lat.get('batch_1')):>8} {_ms(lat.get('batch_64')):>9} {_size(a.get('size_bytes')):>8}")
    return "\n".join(lines)


def has_test(manifest: dict) -> bool:
    """Whether any artifact was scored on the test split (manifests written before it had none)."""
    return any(a.get("test_accuracy") is not None or a.get("test_score") is not None
               for a in manifest.get("artifacts", []))


def _test_cell(a: dict, metric: str | None) -> str:
    """An artifact's score on the test split, as the tables print it."""
    return _pct(a.get("test_accuracy")) if metric is None else _num(a.get("test_score"))


def _score_cells(a: dict, metric: str | None) -> tuple[str, str]:
    """An artifact's score and its change, as the tables print them (accuracy and points, or a
    regression's metric and relative change)."""
    if metric is None:
        return _pct(a.get("accuracy")), _pts(a.get("delta_points"))
    return _num(a.get("score")), _rel(a.get("relative_change"))


def _stage_table(manifest: dict, metric: str | None) -> str:
    head = "accuracy" if metric is None else metric
    delta = "Δ 1-r2" if metric == "r2" else "Δ vs trial"
    tested = has_test(manifest)
    width = 12 if tested else 8
    lines = [f"{'artifact':<18} {'status':<9} {(('val ' + head) if tested else head):>{width}} {delta:>10} "
             + (f"{'test ' + head:>13} " if tested else "") + f"{'params':>7} {'MACs':>7} "
             f"{'p50/p95@1 ms':>15} {'p50/p95@64 ms':>15} {'size':>9}"]
    for a in manifest["artifacts"]:
        lat = a.get("latency_ms") or {}
        score, change = _score_cells(a, metric)
        test = f"{_test_cell(a, metric):>13} " if tested else ""
        lines.append(f"{a['name']:<18} {a['status']:<9} {score:>{width}} {change:>10} {test}{_count(a.get('params')):>7} "
                     f"{_count(a.get('macs')):>7} {_ms2(lat.get('batch_1')):>15} {_ms2(lat.get('batch_64')):>15} "
                     f"{_size(a.get('size_bytes')):>9}")
    return "\n".join(lines)


def score_metric(manifest: dict) -> str | None:
    """The regression metric the artifacts are scored by (``rmse``, ``mae``, ``r2``); None for
    accuracy (a classification, and every manifest written before regressions were promoted)."""
    return next((a["metric"] for a in manifest.get("artifacts", []) if a.get("metric")), None)


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def _rel(x) -> str:
    return "-" if x is None else signed(x, "+.2%")


def _pts(x) -> str:
    return "-" if x is None else signed(x, "+.2f")


def _ms(rec) -> str:
    return "-" if not rec else f"{rec['p50_ms']:.3f}"


def _ms2(rec) -> str:
    if not rec:
        return "-"
    p95 = rec.get("p95_ms")
    return f"{rec['p50_ms']:.3f}/{'-' if p95 is None else format(p95, '.3f')}"


def _count(n) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _size(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"
