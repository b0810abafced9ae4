"""A synthetic experiment directory in the exact on-disk format a sweep writes.

Written by the project's own writers (``experiment.write_inputs``, ``results.write_results``,
``make_checkpoint``, ``promote.manifest.artifact``) from a real shipped spec, so the report
reads what a real sweep leaves; the values are made up (seeded). Used by the report tests
and by ``benchmarks/report_scale.py`` (200 trials).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from raytune_opt.smoke import sample_config

ROOT = Path(__file__).resolve().parents[1]
CONDITIONAL = ROOT / "search_spaces" / "digits_conditional.yaml"


def make_experiment(storage: Path, n_trials: int = 12, *, name: str = "synthetic", spec_path: Path = CONDITIONAL,
                    overrides: tuple = (), epochs: int = 6, seed: int = 0, promoted: bool = True,
                    finished: bool = True) -> Path:
    """Write an experiment of ``n_trials`` under ``storage/name``; returns its directory.

    Trials: most finish, about half are stopped on ASHA-like rungs (epochs 2 and 4), one
    errors and one diverges (when there are at least 6). ``finished=False`` leaves only
    Tune's per-trial files (params.json, progress.csv), as a sweep still running does.
    """
    from raytune_opt import experiment, results, storage as stores
    from raytune_opt.recipe.checkpoint import make_checkpoint, save_checkpoint
    from raytune_opt.spec import load_spec

    rng = random.Random(seed)
    spec = load_spec(spec_path, [f"name={name}", f"train.epochs={epochs}", *overrides])
    loc = stores.locate(str(storage), name)
    experiment.write_inputs(loc, spec, Path(spec_path).read_text(), False)
    exp = loc.local
    rows = []
    for i in range(1, n_trials + 1):
        config = sample_config(spec.space, rng)
        lr = config.get("train.optimizer.lr", 0.01)
        skill = 0.97 - 0.5 * abs(math.log10(lr) + 2.2) ** 2 * 0.2 - rng.uniform(0, 0.1)
        status, stop = "ok", "completed"
        n_epochs = epochs
        if n_trials >= 6 and i == 3:
            status, stop, n_epochs = "error", "error: RuntimeError", 1
        elif n_trials >= 6 and i == 5:
            status, stop, n_epochs = "diverged", f"diverged: non-finite loss at epoch 2 step 7", 2
        elif i > 2 and rng.random() < 0.5:
            n_epochs = rng.choice([2, 4])
            status, stop = "stopped", f"stopped by asha at epoch {n_epochs}"
        history = []
        for e in range(1, n_epochs + 1):
            acc = max(0.05, skill * (1 - math.exp(-e / 1.7)) + rng.uniform(-0.01, 0.01))
            bad = status == "diverged" and e == n_epochs
            history.append({"epoch": e, "train_loss": float("nan") if bad else 2.3 * math.exp(-e / 2) + 0.05,
                            "val_loss": float("nan") if bad else 2.3 * math.exp(-e / 2.2) + 0.1 + 0.02 * e,
                            "val_accuracy": float("nan") if bad else acc, "val_f1": acc - 0.01,
                            "val_precision": acc, "val_recall": acc - 0.005,
                            "grad_norm": 2.0 * math.exp(-e / 3), "lr": lr * (1 - (e - 1) / epochs),
                            "samples_per_s": 5000.0, "epoch_s": 0.4,
                            "stop_reason": stop if e == n_epochs and status != "stopped" else None})
        trial_dir = exp / f"trial_{i}"
        ckpt_dir = trial_dir / "ckpt"
        finite = [h for h in history if math.isfinite(h["val_accuracy"])]
        best = results.best_epoch(finite, "val_accuracy", "max") if status != "error" else {}
        if best:
            cm = _confusion(rng, best["val_accuracy"])
            save_checkpoint(make_checkpoint(model_spec={"name": "mlp"}, model_state={}, epoch=best["epoch"],
                                            metrics=best, extra={"val_confusion": cm}), ckpt_dir / "best.pt")
        row = results.TrialRow(f"t{i:04d}", status, stop, config, n_epochs, 1.0 + n_epochs, 0.4 * n_epochs,
                               best=best, last=history[-1] if history else {},
                               checkpoint=str(ckpt_dir) if best else None,
                               error="RuntimeError: boom" if status == "error" else None,
                               history=[{k: v for k, v in h.items() if k != "stop_reason"} for h in history])
        rows.append(row)
        if not finished:
            _tune_files(trial_dir, row, history)
    if finished:
        results.write_results(exp, rows, [p.key for p in spec.space.params], "val_accuracy", "max", spec.sha256())
        if promoted:
            _manifest(exp, json.loads((exp / "best.json").read_text()))
    return exp


def _confusion(rng: random.Random, acc: float, n: int = 10, per_class: int = 36) -> list[list[int]]:
    cm = [[0] * n for _ in range(n)]
    for c in range(n):
        right = int(round(per_class * acc))
        cm[c][c] = right
        for _ in range(per_class - right):
            cm[c][rng.randrange(n)] += 1
    return cm


def _tune_files(trial_dir: Path, row, history: list[dict]) -> None:
    """What Ray Tune writes per trial while it runs: params.json and progress.csv."""
    import csv

    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "params.json").write_text(json.dumps(row.config))
    cols = ["trial_id", "time_total_s", *history[0]] if history else ["trial_id"]
    with open(trial_dir / "progress.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for h in history:
            w.writerow({"trial_id": row.trial_id, "time_total_s": h["epoch"] * 0.5, **h})
    if row.status == "error":
        (trial_dir / "error.txt").write_text("RuntimeError: boom\n")


def _manifest(exp: Path, best: dict) -> None:
    from raytune_opt.promote import manifest

    prom = exp / "promotion"
    prom.mkdir(parents=True, exist_ok=True)
    arts = []
    for name, size, acc, b1, b64, status, reason in (
            ("pytorch", 520_000, 0.958, 0.49, 24.6, "ok", ""),
            ("onnx", 179_000, 0.958, 0.08, 1.59, "ok", "parity max |Δ| 1.4e-06"),
            ("int8", 57_000, 0.961, 0.04, 0.90, "ok", "minmax calibration, Δ +0.28 points vs fp32"),
            ("tensorrt", None, None, None, None, "skipped", "no CUDA GPU on this machine")):
        path = None
        if size:
            path = prom / f"{name}.bin"
            path.write_bytes(b"\0" * size)
        lat = None if b1 is None else {"batch_1": {"p50_ms": b1, "p95_ms": b1 * 1.2},
                                       "batch_64": {"p50_ms": b64, "p95_ms": b64 * 1.2}}
        arts.append(manifest.artifact(name, status, path=path, root=prom, reason=reason, accuracy=acc,
                                      fp32_accuracy=0.958 if acc is not None else None, latency_ms=lat))
    manifest.write(prom, {"format": manifest.FORMAT, "status": "ok", "experiment": str(exp),
                          "source": {"trial_id": best["trial_id"], "metric": "val_accuracy", "value": best["value"]},
                          "artifacts": arts})
