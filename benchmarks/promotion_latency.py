"""Inference throughput of the promoted artifacts: fp32 PyTorch, fp32 ONNX Runtime, INT8 ONNX
Runtime, and the same after structured pruning (promote.targets: prune).

Run:  .venv/bin/python benchmarks/promotion_latency.py [--rounds 7] [--threads 2] [--experiment DIR]

Two models, side by side at batch 1 and 64:

- digits: the promoted small_cnn of an experiment (``--experiment DIR``, promoted first if
  needed), or one trained here in a few seconds and promoted with ``raytune_opt.promote``;
  accuracy on its validation set too.
- resnet18: ResNet-18 with the CIFAR stem (3x32x32, 10 classes), random init, exported and
  quantized the way promotion does it (calibrated on 16 random batches of 64); speed only.
  Beside it, in the same rounds, the same model pruned at ratio 0.5 (round_to 8) by promotion's
  own ``prune_model`` (Torch-Pruning, L2 group magnitude, per layer), exported and quantized the
  same way: ``*_pruned`` variants. Goals (issue 15): pruned fp32 ORT >= 1.6x the unpruned fp32
  ORT's throughput at batch 64, pruned INT8 >= 3x.
- digits pruning: copies of the digits experiment promoted with ``prune,onnx,int8``, one per
  :data:`PRUNE_CONFIGS` (the schema's defaults: ratio 0.5, counts rounded to multiples of 8,
  2 epochs of fine-tuning with distillation; ratio 0.3 with and without the rounding; the
  defaults with 8 epochs); each pruned, fine-tuned accuracy against
  the trial's (goal: within 1 point), and the ORT variants of the first accepted one timed
  beside the unpruned ones.

Variants: ``torch_fp32``, ``ort_fp32``, ``ort_int8`` (QDQ U8/S8, per-channel: promotion's
``int8`` artifact), ``ort_int8_s8s8`` (the TensorRT-ready symmetric QDQ, timed on ORT's CPU
kernels for information), and TensorRT FP16/INT8 where a CUDA GPU and TensorRT exist.
ORT and torch get the same intra-op threads (2: this machine has 2 cores). Each variant
is warmed up, then the variants take turns over several rounds (so load drift from other
jobs on the machine hits all of them alike); a round times ~0.25 s of back-to-back calls
and keeps their median. Reported: throughput (samples/s) median, min, max and stdev over
rounds, latency p50 over rounds, and the ratios ort_int8 / ort_fp32 and pruned / unpruned
ort_fp32 as the median of the per-round ratios, and the goals met or not. Written to
benchmarks/out/promotion_latency.json with machine, load and versions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raytune_opt.promote import export, manifest, measure, quantize, tensorrt  # noqa: E402

BATCHES = (1, 64)
ROUND_S = 0.25


# ---- the models --------------------------------------------------------------------------------

def digits_experiment(workdir: Path) -> Path:
    """Train small_cnn on digits (no Ray) into a minimal experiment directory, as tests do."""
    from raytune_opt import _atomic, results
    from raytune_opt.recipe.loop import train
    from raytune_opt.recipe.session import LocalSession
    from raytune_opt.spec import load_spec

    spec = load_spec(ROOT / "search_spaces" / "digits_cnn.yaml", ["name=bench", "train.epochs=8"])
    exp = workdir / "bench"
    ckpt_dir = exp / "trial_bench0001" / "checkpoint_000007"
    session = LocalSession(checkpoint_dir=str(ckpt_dir))
    train(spec.data, session, spec_sha256=spec.sha256())
    metric, mode = spec.data["search"]["metric"], spec.data["search"]["mode"]
    row = results.TrialRow(trial_id="bench0001", status="ok", stop_reason="completed", config={},
                           epochs=len(session.reports), seconds=0.0, train_seconds=0.0,
                           best=results.best_epoch(session.reports, metric, mode), last=session.reports[-1],
                           checkpoint=str(ckpt_dir), history=session.reports)
    _atomic.write_text(exp / "spec.yaml", spec.to_yaml())
    results.write_results(exp, [row], [p.key for p in spec.space.params], metric, mode, spec.sha256())
    return exp


#: promote.prune settings tried on the digits model: the schema's defaults first (ratio 0.5,
#: channel counts rounded down to multiples of 8, 2 epochs of fine-tuning), then a gentler
#: ratio with and without the rounding, then the defaults with as many epochs as the trial.
PRUNE_CONFIGS = ({}, {"ratio": 0.3}, {"ratio": 0.3, "round_to": None}, {"finetune_epochs": 8})


def digits_pruned(exp: Path, workdir: Path, threads: int) -> tuple[dict, dict, list]:
    """Promote copies of ``exp`` with prune,onnx,int8, one per :data:`PRUNE_CONFIGS`; runners
    for the ORT fp32 and INT8 of the first whose pruned model passed its gate (none when none
    did: the chain then converted the trial's model), its files, and every run's stages."""
    import shutil

    import yaml

    from raytune_opt.promote import promote

    runs, runners, files = [], {}, {}
    for i, config in enumerate(PRUNE_CONFIGS):
        copy = workdir / f"pruned{i}" / exp.name
        shutil.copytree(exp, copy, ignore=shutil.ignore_patterns("promotion"))
        best = json.loads((copy / "best.json").read_text())
        best["checkpoint"] = best["checkpoint"].replace(str(exp), str(copy))
        (copy / "best.json").write_text(json.dumps(best))
        spec = yaml.safe_load((copy / "spec.yaml").read_text())
        spec["promote"]["prune"] = config  # the rest: the schema's defaults (not what the experiment recorded)
        (copy / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        t = time.perf_counter()
        man = promote(copy, targets="prune,onnx,int8")
        seconds = time.perf_counter() - t
        names = {a["name"]: a for a in man["artifacts"]}
        stages = {n: {k: a.get(k) for k in ("status", "reason", "accuracy", "delta_points", "params", "macs",
                                            "size_bytes", "from_step")} for n, a in names.items()}
        pruned = names["prune"]
        cfg = man["settings"]["prune"]
        timed = not runners and pruned["status"] == "ok"
        print(f"digits: prune {cfg['ratio']}, round_to {cfg['round_to']}, {cfg['finetune_epochs']} fine-tuning "
              f"epochs: {pruned['status']}, {pruned['accuracy']:.2%} ({pruned['delta_points']:+.2f} points), "
              f"{pruned['params']:,} params; {seconds:.1f} s{'; its ORT models are timed below' if timed else ''}",
              flush=True)
        if timed:
            files = {f"{key}_pruned": copy / "promotion" / names[n]["path"]
                     for key, n in (("checkpoint", "prune"), ("onnx", "onnx"), ("int8", "int8"))}
            runners = {"ort_fp32_pruned": measure.ort_runner(measure.ort_session(files["onnx_pruned"], threads)),
                       "ort_int8_pruned": measure.ort_runner(measure.ort_session(files["int8_pruned"], threads))}
        runs.append({"settings": man["settings"]["prune"], "stages": stages, "seconds": seconds,
                     "timed_below": timed})
    return runners, files, runs


def digits_variants(exp: Path, threads: int) -> tuple[dict, dict, np.ndarray, np.ndarray, dict]:
    """Runners for the promoted digits model, its validation data, and its manifest."""
    from raytune_opt.promote import promote
    from raytune_opt.recipe.checkpoint import load_model
    from raytune_opt.recipe.data import load_data

    man_path = exp / "promotion" / "manifest.json"
    man = json.loads(man_path.read_text()) if man_path.is_file() else {}
    names = {a["name"]: a for a in man.get("artifacts", [])}
    if not all(names.get(n, {}).get("path") for n in ("onnx", "int8", "int8-tensorrt-qdq")):
        man = promote(exp, targets="onnx,int8")
        names = {a["name"]: a for a in man["artifacts"]}
    model, ckpt = load_model(man["source"]["checkpoint"])
    import yaml

    seed = yaml.safe_load((exp / "spec.yaml").read_text())["seed"]
    data = load_data(ckpt["recipe"]["data"], int(seed))
    files = {n: exp / "promotion" / names[n]["path"] for n in ("onnx", "int8", "int8-tensorrt-qdq")}
    return (_runners(model, files["onnx"], files["int8"], files["int8-tensorrt-qdq"], threads), files,
            data.x_val.numpy(), data.y_val.numpy(), man)


def resnet18_variants(workdir: Path, threads: int) -> tuple[dict, dict, np.ndarray]:
    from raytune_opt.recipe.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "resnet18", "cifar_stem": True}, 3, 10, 32).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 3, 32, 32)).astype(np.float32)
    files = {"onnx": workdir / "resnet18.onnx", "int8": workdir / "resnet18.int8.onnx",
             "int8-tensorrt-qdq": workdir / "resnet18.int8.qdq-s8s8.onnx"}
    export.export_onnx(model, torch.from_numpy(x[:2]), files["onnx"])
    calib = [rng.standard_normal((64, 3, 32, 32)).astype(np.float32) for _ in range(16)]
    pre = workdir / "resnet18.pre.onnx"
    quantize.preprocess(files["onnx"], pre)
    t = time.perf_counter()
    quantize.quantize(pre, files["int8"], calib, "minmax", "cpu")
    quantize_s = time.perf_counter() - t
    quantize.quantize(pre, files["int8-tensorrt-qdq"], calib, "minmax", "tensorrt")
    print(f"resnet18: exported and quantized (minmax, 16x64 calibration) in {quantize_s:.1f} s", flush=True)
    runners = _runners(model, files["onnx"], files["int8"], files["int8-tensorrt-qdq"], threads)
    pruned, pruned_files, footprints = _pruned_resnet18(model, x, calib, workdir)
    runners["torch_fp32_pruned"] = measure.torch_runner(pruned)
    runners["ort_fp32_pruned"] = measure.ort_runner(measure.ort_session(pruned_files["onnx_pruned"], threads))
    runners["ort_int8_pruned"] = measure.ort_runner(measure.ort_session(pruned_files["int8_pruned"], threads))
    return runners, {**files, **pruned_files}, x, footprints


def _pruned_resnet18(model, x: np.ndarray, calib: list, workdir: Path) -> tuple:
    """ResNet-18 pruned at ratio 0.5 as promotion prunes (no fine-tuning: speed only), exported
    and quantized as the unpruned one; the model, its files, and both models' params and MACs."""
    import copy

    from raytune_opt.promote.compress import footprint_of
    from raytune_opt.promote.prune import prune_model

    example = torch.from_numpy(x[:2])
    t = time.perf_counter()
    pruned = prune_model(copy.deepcopy(model), example, ratio=0.5, round_to=8)  # promote.prune's defaults
    prune_s = time.perf_counter() - t
    files = {"onnx_pruned": workdir / "resnet18.pruned.onnx", "int8_pruned": workdir / "resnet18.pruned.int8.onnx"}
    export.export_onnx(pruned, example, files["onnx_pruned"])
    pre = workdir / "resnet18.pruned.pre.onnx"
    quantize.preprocess(files["onnx_pruned"], pre)
    quantize.quantize(pre, files["int8_pruned"], calib, "minmax", "cpu")
    print(f"resnet18: pruned (ratio 0.5) in {prune_s:.1f} s, exported and quantized", flush=True)
    return pruned, files, {"unpruned": footprint_of(model, example), "pruned": footprint_of(pruned, example),
                           "prune_seconds": prune_s}


def _runners(model, onnx_path, int8_path, s8s8_path, threads: int) -> dict:
    return {
        "torch_fp32": measure.torch_runner(model),
        "ort_fp32": measure.ort_runner(measure.ort_session(onnx_path, threads)),
        "ort_int8": measure.ort_runner(measure.ort_session(int8_path, threads)),
        "ort_int8_s8s8": measure.ort_runner(measure.ort_session(s8s8_path, threads)),
    }


# ---- measuring ---------------------------------------------------------------------------------

def _round(run, xb: np.ndarray, iters: int) -> float:
    """Median latency (ms) of ``iters`` back-to-back calls."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run(xb)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench(runners: dict, x: np.ndarray, rounds: int) -> dict:
    out = {}
    for batch in BATCHES:
        xb = measure.batch_of(x, batch)
        iters = {}
        for name, run in runners.items():  # warm-up, and how many calls fill a round
            for _ in range(5):
                run(xb)
            start = time.perf_counter()
            run(xb)
            iters[name] = int(min(500, max(3, ROUND_S / max(time.perf_counter() - start, 1e-6))))
        lat = {name: [] for name in runners}
        for _ in range(rounds):
            for name, run in runners.items():
                lat[name].append(_round(run, xb, iters[name]))
        per = {}
        for name, ms in lat.items():
            sps = [batch / (m / 1e3) for m in ms]
            per[name] = {"samples_per_s": _summary(sps), "latency_p50_ms": statistics.median(ms),
                         "calls_per_round": iters[name]}
        ratios = [f / i for f, i in zip(lat["ort_fp32"], lat["ort_int8"])]  # throughput int8 / fp32
        per["ratio_ort_int8_over_ort_fp32"] = {"median": statistics.median(ratios), "min": min(ratios),
                                               "max": max(ratios)}
        ratios = [t / f for t, f in zip(lat["torch_fp32"], lat["ort_fp32"])]
        per["ratio_ort_fp32_over_torch_fp32"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                 "max": max(ratios)}
        for name in ("ort_fp32_pruned", "ort_int8_pruned"):  # throughput against the unpruned fp32, round by round
            if name in lat:
                ratios = [f / v for f, v in zip(lat["ort_fp32"], lat[name])]
                per[f"ratio_{name}_over_ort_fp32"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                      "max": max(ratios)}
        out[f"batch_{batch}"] = per
    return out


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}


def accuracies(runners: dict, x: np.ndarray, y: np.ndarray) -> dict:
    return {name: measure.accuracy(measure.predict(run, x), y) for name, run in runners.items()}


def tensorrt_results(files: dict, x: np.ndarray, y: np.ndarray | None) -> dict:
    """TensorRT FP16/INT8 engines where a CUDA GPU and TensorRT exist, else why not."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU on this machine"}
    if not tensorrt.is_available("tensorrt"):
        return {"skipped": "TensorRT is not installed (pip install 'raytune-opt[tensorrt]')"}
    yv = y if y is not None else np.zeros(len(x), np.int64)
    res = tensorrt.build_and_measure(files["onnx"].read_bytes(), files["int8-tensorrt-qdq"].read_bytes(), x, yv,
                                     measure.Scorer("accuracy", limit=1.0))  # the limit is not applied here
    for eng in res["engines"].values():
        eng.pop("plan", None)
        score = eng.pop("score", None)
        if y is not None:
            eng["accuracy"] = score
        for key, lat in (eng.get("latency_ms") or {}).items():
            b = int(key.split("_")[1])
            lat["samples_per_s_at_p50"] = b / (lat["p50_ms"] / 1e3)
    return res


# ---- main --------------------------------------------------------------------------------------

def _print(model: str, res: dict, acc: dict | None) -> None:
    print(f"\n{model}: samples/s median (min..max) over rounds" + ("; accuracy" if acc else ""))
    for batch in BATCHES:
        per = res[f"batch_{batch}"]
        for name in [k for k in per if not k.startswith("ratio_")]:
            s = per[name]["samples_per_s"]
            line = f"  b{batch:<3} {name:<17} {s['median']:>12,.0f} ({s['min']:,.0f}..{s['max']:,.0f})"
            if acc and name in acc:
                line += f"  acc {acc[name]:.4f}"
            print(line)
        for key in [k for k in per if k.startswith("ratio_")]:
            r = per[key]
            what = key.removeprefix("ratio_").replace("_over_", " / ")
            print(f"  b{batch:<3} {what} throughput: {r['median']:.2f}x ({r['min']:.2f}..{r['max']:.2f})")


def goals(result: dict) -> dict:
    """Issue 15's goals, measured in this run."""
    r64 = result["models"]["resnet18_cifar_stem"]["throughput"]["batch_64"]
    out = {
        "resnet18_pruned_fp32_ort_at_least_1.6x_unpruned_fp32_ort_batch_64": {
            "value": r64["ratio_ort_fp32_pruned_over_ort_fp32"]["median"],
            "met": r64["ratio_ort_fp32_pruned_over_ort_fp32"]["median"] >= 1.6},
        "resnet18_pruned_int8_ort_at_least_3x_unpruned_fp32_ort_batch_64": {
            "value": r64["ratio_ort_int8_pruned_over_ort_fp32"]["median"],
            "met": r64["ratio_ort_int8_pruned_over_ort_fp32"]["median"] >= 3.0},
    }
    for run in result["models"]["digits_small_cnn"]["pruning"]:
        cfg, prune = run["settings"], run["stages"]["prune"]
        drop = -prune["delta_points"] if prune.get("delta_points") is not None else float("inf")
        key = (f"digits_pruned_{cfg['ratio']:g}_round_to_{cfg['round_to']}_fine_tuned_{cfg['finetune_epochs']}_epochs_"
               f"within_1_point_of_the_trial")
        out[key] = {"value": drop, "met": drop <= 1.0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds in which every variant is timed once")
    parser.add_argument("--threads", type=int, default=measure.machine_threads(),
                        help="intra-op threads for ORT and torch (default: this machine's cores, as promote.ort_threads)")
    parser.add_argument("--experiment", type=Path, help="a promoted (or promotable) digits experiment directory; "
                                                        "default: train one here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "promotion_latency.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()  # other jobs on a shared machine: the numbers say how much there was
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result = {"benchmark": "promotion_latency", "created": created,
              "what": "inference samples/s at batch 1 and 64 on the CPU; int8 = ORT static QDQ, U8 activations, "
                      "S8 per-channel weights; s8s8 = the TensorRT-ready symmetric QDQ, on ORT's CPU kernels",
              "rounds": args.rounds, "threads": args.threads, "round_seconds": ROUND_S, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exp = args.experiment or digits_experiment(tmp)
        runners, files, x, y, man = digits_variants(exp, args.threads)
        pruned_runners, pruned_files, pruning = digits_pruned(exp, tmp, args.threads)
        tensorrt_files = dict(files)
        runners.update(pruned_runners)
        files.update(pruned_files)
        acc = accuracies(runners, x, y)
        res = bench(runners, x, args.rounds)
        result["models"]["digits_small_cnn"] = {
            "input": [1, 8, 8], "source_trial": man["source"]["trial_id"], "experiment": str(exp) if args.experiment
            else "trained by this benchmark (digits_cnn.yaml defaults, 8 epochs)", "accuracy": acc,
            "val_samples": int(len(y)), "size_bytes": {n: p.stat().st_size for n, p in files.items()},
            "throughput": res, "tensorrt": tensorrt_results(tensorrt_files, x, y),
            "pruning": pruning}
        _print("digits small_cnn", res, acc)
        runners, files, x, footprints = resnet18_variants(tmp, args.threads)
        res = bench(runners, x, args.rounds)
        result["models"]["resnet18_cifar_stem"] = {
            "input": [3, 32, 32], "weights": "random init (speed only)", "footprint": footprints,
            "size_bytes": {n: p.stat().st_size for n, p in files.items()}, "throughput": res,
            "tensorrt": tensorrt_results(files, x, None)}
        _print("resnet18 (cifar stem, random init)", res, None)
    result["goals"] = goals(result)
    for name, goal in result["goals"].items():
        print(f"goal {name}: {goal['value']:.3g} — {'met' if goal['met'] else 'NOT met'}")
    result["machine"] = {**manifest.machine(), "torch_threads": torch.get_num_threads(),
                         "load_average_1_5_15_min_at_start": load_start, "load_average_1_5_15_min_at_end": os.getloadavg(),
                         "uptime_at_end": _uptime()}
    result["versions"] = manifest.versions()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def _uptime() -> str:
    import subprocess

    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    main()
