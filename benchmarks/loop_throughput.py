"""Training throughput of raytune-opt's loop against a plain hand-written PyTorch loop.

Run:  .venv/bin/python benchmarks/loop_throughput.py [--runs 7] [--epochs 8] [--threads N]

Both train small_cnn on digits (batch 64, AdamW, fp32, no augmentation, no checkpoints)
from the same data tensors and the same initial weights. Throughput is training samples
per second over the training phase of each epoch (validation excluded on both sides).
After one warm-up run of each, the two alternate run by run, so drift in the machine's
load hits both alike; the result is the median and spread of each, and the median of the
pairs' ratios (ours / plain; the ratio of medians and of best runs are recorded too), written to benchmarks/out/loop_throughput.json with the machine
and versions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raytune_opt.recipe.data import load_data  # noqa: E402
from raytune_opt.recipe.loop import train  # noqa: E402
from raytune_opt.recipe.models import build_model  # noqa: E402
from raytune_opt.recipe.session import LocalSession  # noqa: E402

SEED = 0
BATCH = 64
LR = 1e-3
CFG = {
    "seed": SEED,
    "data": {"dataset": "digits"},
    "model": {"name": "small_cnn"},
    "train": {"batch_size": BATCH, "precision": "fp32", "checkpoint": False,
              "optimizer": {"name": "adamw", "lr": LR}},
}


def ours(epochs: int) -> float:
    """Samples/s of :func:`train` over ``epochs`` epochs (its own per-epoch timing)."""
    session = LocalSession()
    train({**CFG, "train": {**CFG["train"], "epochs": epochs}}, session)
    # Every epoch trains the same number of samples, so total samples / total seconds is
    # the harmonic mean of the per-epoch rates.
    return statistics.harmonic_mean([r["samples_per_s"] for r in session.reports])


def plain(epochs: int) -> float:
    """Samples/s of the loop anyone would write by hand, timed the same way."""
    data = load_data(CFG["data"], SEED)
    torch.manual_seed(SEED)
    model = build_model(CFG["model"], data.in_channels, data.num_classes, data.image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    x, y = data.x_train, data.y_train
    generator = torch.Generator().manual_seed(SEED)
    seconds = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), BATCH):
            index = order[i:i + BATCH]
            loss = F.cross_entropy(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
        model.eval()  # a validation pass, untimed, as in ours
        with torch.no_grad():
            model(data.x_val).argmax(1)
    return epochs * len(y) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="measured runs of each loop")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for both loops (default 1: on a shared 2-core machine more "
                             "threads oversubscribe and the timings turn to noise; 0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ours(2), plain(2)  # warm-up: allocator, kernels, data cache
    ours_sps, plain_sps = [], []
    for _ in range(args.runs):
        ours_sps.append(ours(args.epochs))
        plain_sps.append(plain(args.epochs))

    def summary(values: list[float]) -> dict:
        return {"median": statistics.median(values), "min": min(values), "max": max(values),
                "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "runs": values}

    # Each pair ran back to back, under the same background load: the median of the pairs'
    # ratios is steadier than the ratio of medians when the machine is shared.
    ratio = statistics.median(o / p for o, p in zip(ours_sps, plain_sps))
    result = {
        "benchmark": "loop_throughput",
        "what": "training samples/s, small_cnn on digits, batch 64, AdamW, fp32, no augmentation, no checkpoints",
        "ours_samples_per_s": summary(ours_sps),
        "plain_samples_per_s": summary(plain_sps),
        "ratio_ours_over_plain": ratio,
        "ratio_definition": "median over back-to-back pairs of ours/plain samples/s",
        "ratio_of_medians": statistics.median(ours_sps) / statistics.median(plain_sps),
        "ratio_of_best": max(ours_sps) / max(plain_sps),
        "runs": args.runs,
        "epochs_per_run": args.epochs,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": str(torch.__version__)},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = ROOT / "benchmarks" / "out" / "loop_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"loop_throughput: ours {statistics.median(ours_sps):.0f} samples/s, plain "
          f"{statistics.median(plain_sps):.0f} samples/s (median of {args.runs}, {torch.get_num_threads()} thread(s)), ratio {ratio:.3f} -> {out}")


if __name__ == "__main__":
    main()
