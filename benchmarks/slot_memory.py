"""Memory of a warm slot: what its processes hold while issue 17's 4-trial command runs.

The command (digits CNN, 4 trials of 2 DDP workers over gloo, FIFO, 4 epochs) runs twice, with
``resources.warm_workers`` true and false; every 0.5 s the memory of each process of the
command's tree is read (psutil: USS, the memory only that process holds, and RSS). Processes are
grouped by their Ray role (``ray::RayTrainWorker``, ``ray::TrainController``...: the actor class,
whatever method it runs), and each role's peak of the summed USS over its processes is kept.

    python benchmarks/slot_memory.py     # ~2 minutes on 2 cores

Writes benchmarks/out/slot_memory.json with machine and versions.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["search_spaces/digits_cnn.yaml", "search.num_samples=4", "resources.num_workers=2", "scheduler={name: fifo}",
           "train.epochs=4", "promote.enabled=false", "name=mem"]


def _role(proc: psutil.Process) -> str:
    cmd = proc.cmdline()
    title = cmd[0] if cmd and cmd[0].startswith("ray::") else proc.name()
    return title.split(".")[0].split(" ")[0]  # ray::TrainController.run -> ray::TrainController


def run(warm: bool) -> dict:
    storage = tempfile.mkdtemp(prefix="raytune_opt_slot_memory_")
    proc = subprocess.Popen([sys.executable, "-m", "raytune_opt", "run", *COMMAND,
                             f"resources.warm_workers={str(warm).lower()}", "--storage", storage], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak: dict = {}
    while proc.poll() is None:
        now: dict = {}
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                role, mem = _role(p), p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            uss, rss, n = now.get(role, (0, 0, 0))
            now[role] = (uss + mem.uss, rss + mem.rss, n + 1)
        for role, v in now.items():
            if role not in peak or v[0] > peak[role][0]:
                peak[role] = v
        time.sleep(0.5)
    assert proc.returncode == 0, f"the command failed (rc {proc.returncode})"
    return {role: {"uss_mb": round(u / 2**20), "rss_mb": round(r / 2**20), "processes": n}
            for role, (u, r, n) in sorted(peak.items(), key=lambda kv: -kv[1][0])}


def main() -> None:
    import ray
    import torch

    result = {"benchmark": "slot_memory", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count(),
                          "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
              "versions": {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
              "command": ["raytune-opt", "run", *COMMAND],
              "what": "per Ray role, the peak over the run of the USS (and RSS) summed over that role's processes",
              "warm": run(True), "per_trial": run(False)}
    out = ROOT / "benchmarks" / "out" / "slot_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("warm", "per_trial")}, indent=1))


if __name__ == "__main__":
    main()
