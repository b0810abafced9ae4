"""An experiment's JSON records as their readers use them: ``best.json`` and
``promotion/manifest.json``, checked field by field before the report or promotion reads them.

A record edited by hand, cut short or written by something else ends in one line that names
the file, the field, what it holds and what it must hold; not in a ``TypeError`` deep inside
the page or the promotion.
"""

from __future__ import annotations

import json
from pathlib import Path

from raytune_opt.errors import RaytuneOptError, UsageError

# A field's kind; "?" after it: it may be absent or null.
_KINDS = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "num": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "dict": (lambda v: isinstance(v, dict), "a mapping"),
    "list": (lambda v: isinstance(v, list), "a list"),
}

BEST = {"trial_id": "str", "metric": "str?", "mode": "str?", "value": "num?", "config": "dict?", "metrics": "dict?",
        "epochs": "num?", "checkpoint": "str?", "spec_sha256": "str?", "test": "dict?",
        "budget": "dict?"}
MANIFEST = {"format": "str?", "status": "str?", "experiment": "str?", "source": "dict?", "artifacts": "list?",
            "settings": "dict?"}
_SOURCE = {"trial_id": "str?", "metric": "str?", "value": "num?", "checkpoint": "str?", "checkpoint_sha256": "str?"}
_ARTIFACT = {"name": "str", "status": "str", "reason": "str?", "path": "str?", "runtime": "str?", "metric": "str?",
             "accuracy": "num?", "score": "num?", "size_bytes": "num?", "params": "num?", "macs": "num?",
             "sha256": "str?", "latency_ms": "dict?", "test_accuracy": "num?", "test_score": "num?"}
_LATENCY = {"p50_ms": "num?", "p95_ms": "num?"}


def _problem(doc, fields: dict, where: str = "") -> str | None:
    """The first field of ``doc`` that is missing or of the wrong kind, said in words, or None."""
    if not isinstance(doc, dict):
        return f"{where.rstrip('.') or 'the file'} must be a mapping (got {_show(doc)})"
    for key, kind in fields.items():
        optional = kind.endswith("?")
        ok, want = _KINDS[kind.rstrip("?")]
        value = doc.get(key)
        if key not in doc and not optional:
            return f"{where}{key} is missing"
        if key in doc and not (ok(value) or (optional and value is None)):
            return f"{where}{key} must be {want} (got {_show(value)})"
    return None


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def best_problem(best) -> str | None:
    """What is wrong with the fields of ``best.json`` (as parsed), or None."""
    return _problem(best, BEST)


def manifest_problem(manifest) -> str | None:
    """What is wrong with the fields of ``promotion/manifest.json`` (as parsed), or None."""
    problem = _problem(manifest, MANIFEST) or _problem(manifest.get("source") or {}, _SOURCE, "source.")
    if problem:
        return problem
    for i, art in enumerate(manifest.get("artifacts") or []):
        problem = _problem(art, _ARTIFACT, f"artifacts[{i}].")
        if problem:
            return problem
        for batch, rec in (art.get("latency_ms") or {}).items():
            problem = None if rec is None else _problem(rec, _LATENCY, f"artifacts[{i}].latency_ms.{batch}.")
            if problem:
                return problem
    return None


def check_best(best, path: Path, error: type[RaytuneOptError] = UsageError) -> None:
    """Raise ``error`` with one line when ``best.json`` (``best``, read from ``path``) has a bad field."""
    problem = best_problem(best)
    if problem:
        raise error(f"{path}: {problem}; the file was edited or is not raytune-opt's: restore it from a copy (the "
                    "sweep writes it when it ends)")


def check_manifest(manifest, path: Path, error: type[RaytuneOptError] = UsageError) -> None:
    """Raise ``error`` with one line when the promotion's manifest has a bad field."""
    problem = manifest_problem(manifest)
    if problem:
        raise error(f"{path}: {problem}; the file was edited or is not raytune-opt's: restore it from a copy, or "
                    "write it again with 'raytune-opt promote EXPERIMENT'")
