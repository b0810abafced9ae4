"""How the report scales: a synthetic 200-trial experiment, built and timed.

Run:  .venv/bin/python benchmarks/report_scale.py [--trials 200] [--epochs 12] [--rounds 5] [--cli-runs 3]

The experiment is written by the project's own writers (tests/_experiments.py: results.csv,
history/, best.json, best.pt with its confusion matrix, a promotion manifest) from the
shipped default spec (7 searched keys), with ~half the trials stopped on ASHA-like rungs.
Measured: ``raytune-opt report`` as a user runs it (fresh processes, imports included; the median
of ``--cli-runs``, and the first on its own), and
``write_report`` in-process after a warm-up (median, min, max over rounds), with the time of
each stage (read, Optuna study, fANOVA + PED-ANOVA, page, journal) and the page's size.
Targets: under 10 s (the command line's median) and under 5 MB. Written to benchmarks/out/report_scale.json with
machine and versions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raytune_opt.report import write_report  # noqa: E402
from tests._experiments import make_experiment  # noqa: E402

TARGET_S, TARGET_BYTES = 10.0, 5_000_000


def stages(exp: Path) -> dict:
    """One build, stage by stage (the same calls write_report makes)."""
    from raytune_opt.report import _best_checkpoint, data, page, study
    from raytune_opt import storage

    out, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        out[name] = round(now - t, 4)
        t = now

    loaded = data.load(exp)
    lap("read_s")
    st = study.build_study(loaded)
    lap("study_s")
    imp = study.importances(st)
    lap("importance_s")
    html = page.render(loaded, imp, _best_checkpoint(loaded, storage.from_uri(str(exp))))
    lap("render_s")
    study.write_journal(st, exp)
    lap("journal_s")
    out["page_bytes"] = len(html.encode())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cli-runs", type=int, default=3, help="fresh `raytune-opt report` processes (median)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        exp = make_experiment(Path(tmp), args.trials, name="scale", spec_path=ROOT / "search_spaces" / "digits_cnn.yaml",
                              epochs=args.epochs)
        cli_times = []
        for _ in range(args.cli_runs):  # fresh processes: imports included each time
            cli_started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "raytune_opt", "report", str(exp)], capture_output=True,
                                  text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            cli_times.append(time.perf_counter() - cli_started)
            assert proc.returncode == 0, proc.stderr[-2000:]
        cli_s = statistics.median(cli_times)
        page = exp / "report.html"
        size = page.stat().st_size
        write_report(exp)  # warm-up: imports, caches
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            write_report(exp)
            times.append(time.perf_counter() - t)
        parts = stages(exp)

    out = {
        "benchmark": "report_scale",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "trials": args.trials, "epochs": args.epochs, "rounds": args.rounds,
        "cli_s": {"median": round(cli_s, 3), "runs": [round(t, 3) for t in cli_times],
                  "first": round(cli_times[0], 3)},  # the first may also compile .pyc files
        "in_process_s": {"median": round(statistics.median(times), 3), "min": round(min(times), 3),
                         "max": round(max(times), 3),
                         "stdev": round(statistics.stdev(times), 3) if len(times) > 1 else 0.0},
        "stages": parts,
        "page_bytes": size,
        "targets": {"seconds": TARGET_S, "bytes": TARGET_BYTES,
                    "met": cli_s < TARGET_S and size < TARGET_BYTES},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)},
        "versions": {"python": platform.python_version(),
                     **{d: _version(d) for d in ("optuna", "torch", "numpy", "scikit-learn")}},
    }
    dest = ROOT / "benchmarks" / "out" / "report_scale.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    print(f"report of {args.trials} trials: {cli_s:.2f} s from the command line (imports included, median of "
          f"{len(cli_times)}), "
          f"{out['in_process_s']['median']:.2f} s in-process (median of {args.rounds}); {size / 1e6:.2f} MB "
          f"-> {'OK' if out['targets']['met'] else 'MISSED'} (targets < {TARGET_S:.0f} s, < {TARGET_BYTES / 1e6:.0f} MB)")
    return 0 if out["targets"]["met"] else 1


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
