"""Search quality on mnist1d (issue 14): do the schedulers and searchers find good models for less compute?

Two comparisons, each over several seeds (the seed sets the data split, the model init and
the searcher), side by side in one run on the embedded local Ray, 2 trials at a time:

1. Schedulers on one fixed list of configs: a 3 x 3 x 3 grid (27 configs) run to
   ``EPOCHS`` epochs under FIFO, ASHA, Hyperband and the median stopping rule. Per scheduler:
   the best validation accuracy found and the total trial-epochs spent (goal: ASHA within 0.5
   points of FIFO's best at most a quarter of its epochs).
2. Searchers at one budget: Optuna TPE, HyperOpt TPE and random search, ``BUDGET`` trials each
   under FIFO on the shipped mnist1d space. Per searcher: the best-so-far curve by trial
   (in proposal order), and the trials it needs to reach random search's final best (goal:
   TPE at most half of random's, median over seeds).

3. PBT against random search with FIFO at the same total epochs: a population of
   ``PBT_POPULATION`` trials of ``PBT_EPOCHS`` epochs (perturbing every 2) against
   ``PBT_RANDOM_TRIALS`` random trials of 6 epochs; the best validation accuracy of each.
5. Warm start (``--section warm_start``, kept beside the rest of the saved JSON): per seed, an
   earlier ``WARM_EARLIER``-trial TPE sweep (same data split, another searcher seed), then a TPE
   sweep of ``BUDGET`` new trials warm-started from it, against a cold ``BUDGET``-trial TPE sweep:
   how many new trials each needs to reach the cold sweep's final best (cold: the trial that found
   it; warm: 0 when the earlier trials already hold it, ``BUDGET`` + 1 when never), median over seeds.
4. Ours (Optuna TPE proposing through Ray Tune, ASHA stopping) against in-process Optuna (the
   same TPE sampler and seed, its SuccessiveHalvingPruner with the same grace period and
   reduction factor, ``n_jobs=2``) on the same space, recipe and budget (``BUDGET`` trials of
   up to 6 epochs): the same best accuracy within the seeds' spread means Ray's distribution
   costs no search quality.

Usage::

    python benchmarks/search_quality.py                 # 5 seeds: about 45 minutes here
    python benchmarks/search_quality.py --seeds 0 1     # a quicker look
    python benchmarks/search_quality.py --rerun ours_tpe_asha   # redo one run of every seed in the
                                                        # saved JSON (after a change to it), keep the rest
    python benchmarks/search_quality.py --section warm_start --seeds 0 1 2 3 4   # only comparison 5,
                                                        # kept beside the saved JSON's other runs

Writes benchmarks/out/search_quality.json (machine, versions, every sweep's figures, the
summary, the goals and whether each was met) and search_quality.svg beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = ROOT / "search_spaces" / "mnist1d_cnn.yaml"
EPOCHS = 9  # ASHA / Hyperband rungs at 1, 3, 9 epochs with reduction factor 3
BUDGET = 24  # trials per searcher
COMMON = ["resources.max_concurrent_trials=2", "promote.enabled=false", "tracking.tensorboard=false"]
GRID = ("space={train.optimizer.lr: {grid: [1.0e-3, 3.0e-3, 1.0e-2]}, model.width: {grid: [8, 16, 32]}, "
        "model.depth: {grid: [1, 2, 3]}}")
SCHEDULERS = {
    "fifo": "scheduler={name: fifo}",
    "asha": "scheduler={name: asha, grace_period: 1, reduction_factor: 3}",
    # Hyperband fills its brackets before it halves them: no concurrency limit (one CPU per
    # trial still runs 2 at a time here; validation refuses a limit with it).
    "hyperband": "scheduler={name: hyperband, reduction_factor: 3}",
    "median": "scheduler={name: median, grace_period: 2, min_samples_required: 3}",
}
PBT_POPULATION, PBT_EPOCHS, PBT_RANDOM_TRIALS = 8, 12, 16  # 96 trial-epochs each
PBT = "scheduler={name: pbt, perturbation_interval: 2, quantile_fraction: 0.25}"
TPE_ASHA = ["search.algorithm=optuna", "search.sampler=tpe", "scheduler={name: asha, grace_period: 1, reduction_factor: 3}"]
SEARCHERS = {
    "optuna_tpe": ["search.algorithm=optuna", "search.sampler=tpe"],
    "hyperopt_tpe": ["search.algorithm=hyperopt"],
    "random": ["search.algorithm=random"],
}


WARM_EARLIER = 12  # trials of the earlier sweep a warm-started one continues from
TPE_FIFO = ["search.algorithm=optuna", "search.sampler=tpe", SCHEDULERS["fifo"], "train.epochs=6"]


def _sweep(overrides: list[str], storage: str, name: str) -> dict:
    from raytune_opt.spec import load_spec
    from raytune_opt.sweep import run_sweep

    spec = load_spec(SPEC, [*COMMON, *overrides, f"name={name}"])
    t0 = time.monotonic()
    outcome = run_sweep(spec, storage=storage, verbose=0)
    wall = time.monotonic() - t0
    assert outcome.exit_code == 0, [(r.trial_id, r.error) for r in outcome.rows if r.error]

    def order(row) -> int:  # trial_<n>/ckpt: the n-th trial the searcher proposed
        return int(Path(row.checkpoint).parent.name.split("_")[1]) if row.checkpoint else 10**9

    rows = sorted(outcome.rows, key=order)
    best = [float(r.best.get("val_accuracy", float("nan"))) for r in rows]
    so_far, top = [], float("-inf")
    for b in best:
        top = max(top, b) if b == b else top
        so_far.append(round(top, 4))
    return {"trials": len(rows), "errors": sum(r.status == "error" for r in rows),
            "best_val_accuracy": so_far[-1] if so_far else None,
            "trial_epochs": sum(r.epochs for r in rows), "wall_s": round(wall, 1), "best_so_far": so_far}


def _trials_to_reach(curve: list[float], target: float) -> int | None:
    """How many trials (1-based) until the best so far reaches ``target``; None: never."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target - 1e-9), None)


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "values": values}


PAIR_RUNS = {
    "pbt": ["search.algorithm=random", f"search.num_samples={PBT_POPULATION}", PBT, f"train.epochs={PBT_EPOCHS}"],
    "random_fifo": ["search.algorithm=random", f"search.num_samples={PBT_RANDOM_TRIALS}", SCHEDULERS["fifo"],
                    "train.epochs=6"],
    "ours_tpe_asha": [*TPE_ASHA, f"search.num_samples={BUDGET}", "train.epochs=6"],
}


def rerun(runs: dict, seeds: list[int], names: list[str]) -> dict:
    """``runs`` with the pair runs ``names`` of every seed done again (the others kept)."""
    from raytune_opt import ray_runtime

    runs["pairs"] = [r for r in runs.get("pairs", []) if r["run"] not in names]
    ray_runtime.start(None)
    try:
        with tempfile.TemporaryDirectory(prefix="raytune_opt_quality_") as storage:
            for seed in seeds:
                for name in names:
                    r = (in_process_optuna(seed) if name == "optuna_in_process" else
                         _sweep([f"seed={seed}", f"search.seed={seed}", *PAIR_RUNS[name]], storage, f"s{seed}-{name}"))
                    runs["pairs"].append({"seed": seed, "run": name, **r})
                    print(json.dumps({k: v for k, v in runs["pairs"][-1].items() if k != "best_so_far"}), flush=True)
    finally:
        ray_runtime.stop(True)
    return runs


def run(seeds: list[int], done_seed=None) -> dict:
    """Every sweep of every seed; ``done_seed(runs, seeds_done)`` after each seed."""
    from raytune_opt import ray_runtime

    ray_runtime.start(None)
    runs: dict = {"schedulers": [], "searchers": []}
    try:
        with tempfile.TemporaryDirectory(prefix="raytune_opt_quality_") as storage:
            for k, seed in enumerate(seeds):
                for name, sched in SCHEDULERS.items():
                    limit = ["resources.max_concurrent_trials=null"] if name == "hyperband" else []
                    r = _sweep([f"seed={seed}", "search.algorithm=grid", "search.num_samples=1", GRID, sched,
                                f"train.epochs={EPOCHS}", *limit], storage, f"s{seed}-{name}")
                    runs["schedulers"].append({"seed": seed, "scheduler": name, **r})
                    print(json.dumps({k: v for k, v in runs["schedulers"][-1].items() if k != "best_so_far"}),
                          flush=True)
                for name, search in SEARCHERS.items():
                    r = _sweep([f"seed={seed}", f"search.seed={seed}", *search, f"search.num_samples={BUDGET}",
                                SCHEDULERS["fifo"], "train.epochs=6"], storage, f"s{seed}-{name}")
                    runs["searchers"].append({"seed": seed, "searcher": name, **r})
                    print(json.dumps({k: v for k, v in runs["searchers"][-1].items() if k != "best_so_far"}),
                          flush=True)
                for name, overrides in PAIR_RUNS.items():
                    r = _sweep([f"seed={seed}", f"search.seed={seed}", *overrides], storage, f"s{seed}-{name}")
                    runs.setdefault("pairs", []).append({"seed": seed, "run": name, **r})
                    print(json.dumps({k: v for k, v in runs["pairs"][-1].items() if k != "best_so_far"}), flush=True)
                r = in_process_optuna(seed)
                runs["pairs"].append({"seed": seed, "run": "optuna_in_process", **r})
                print(json.dumps({k: v for k, v in runs["pairs"][-1].items() if k != "best_so_far"}), flush=True)
                if done_seed is not None:
                    done_seed(runs, seeds[: k + 1])
    finally:
        ray_runtime.stop(True)
    return runs


def warm_start_runs(seeds: list[int]) -> list[dict]:
    """Comparison 5: per seed, the earlier sweep, the warm-started one and a cold one."""
    from raytune_opt import ray_runtime

    out = []
    ray_runtime.start(None)
    try:
        with tempfile.TemporaryDirectory(prefix="raytune_opt_quality_") as storage:
            for seed in seeds:
                # The same data split (seed) as the others; another searcher seed, so that the
                # earlier sweep's trials are not the cold sweep's first twelve.
                earlier = _sweep([f"seed={seed}", f"search.seed={seed + 1000}", *TPE_FIFO,
                                  f"search.num_samples={WARM_EARLIER}"], storage, f"s{seed}-earlier")
                warm = _sweep([f"seed={seed}", f"search.seed={seed}", *TPE_FIFO, f"search.num_samples={BUDGET}",
                               f"search.warm_start=[{storage}/s{seed}-earlier]"], storage, f"s{seed}-warm")
                cold = _sweep([f"seed={seed}", f"search.seed={seed}", *TPE_FIFO, f"search.num_samples={BUDGET}"],
                              storage, f"s{seed}-cold")
                for name, r in (("earlier", earlier), ("warm", warm), ("cold", cold)):
                    out.append({"seed": seed, "run": name, **r})
                    print(json.dumps({k: v for k, v in out[-1].items() if k != "best_so_far"}), flush=True)
    finally:
        ray_runtime.stop(True)
    return out


def summarize_warm_start(runs: list[dict]) -> dict:
    by = {(r["seed"], r["run"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs if all((r["seed"], n) in by for n in ("earlier", "warm", "cold"))})
    cold_needed, warm_needed, per_seed = [], [], []
    for s in seeds:
        target = by[(s, "cold")]["best_val_accuracy"]
        cold_n = _trials_to_reach(by[(s, "cold")]["best_so_far"], target)
        earlier_best = by[(s, "earlier")]["best_val_accuracy"]
        warm_curve = [max(v, earlier_best) for v in by[(s, "warm")]["best_so_far"]]
        warm_n = 0 if earlier_best >= target - 1e-9 else _trials_to_reach(warm_curve, target)
        warm_n = BUDGET + 1 if warm_n is None else warm_n
        cold_needed.append(cold_n)
        warm_needed.append(warm_n)
        per_seed.append({"seed": s, "target_cold_best": target, "earlier_best": earlier_best,
                         "warm_best": by[(s, "warm")]["best_val_accuracy"], "cold_new_trials": cold_n,
                         "warm_new_trials": warm_n})
    if not seeds:
        return {}
    return {"seeds": seeds, "earlier_trials": WARM_EARLIER, "budget": BUDGET,
            "new_trials_to_reach_cold_best": {"cold": _spread(cold_needed), "warm": _spread(warm_needed)},
            "best_val_accuracy": {"cold": _spread([by[(s, "cold")]["best_val_accuracy"] for s in seeds]),
                                  "warm": _spread([by[(s, "warm")]["best_val_accuracy"] for s in seeds]),
                                  "earlier": _spread([by[(s, "earlier")]["best_val_accuracy"] for s in seeds])},
            "per_seed": per_seed,
            "warm_needs_fewer_new_trials": statistics.median(warm_needed) < statistics.median(cold_needed)}


def in_process_optuna(seed: int) -> dict:
    """In-process Optuna on the same spec, space, recipe and budget as ``ours_tpe_asha``: the
    same TPE sampler and seed, a SuccessiveHalvingPruner with ASHA's grace period and reduction
    factor, two trials at a time (``n_jobs=2``), every trial trained by our own recipe in this
    process (a LocalSession whose reports Optuna prunes on)."""
    import optuna
    import torch

    from raytune_opt import searchers
    from raytune_opt.recipe.loop import train
    from raytune_opt.recipe.session import LocalSession
    from raytune_opt.space import apply
    from raytune_opt.spec import load_spec

    spec = load_spec(SPEC, [*COMMON, f"seed={seed}", f"search.seed={seed}", "train.epochs=6"])
    define = searchers.OptunaDefineByRun(spec.space)
    epochs_run: list[int] = []

    class Pruned(Exception):
        pass

    def objective(trial) -> float:
        define(trial)
        cfg = apply(spec.data, dict(trial.params))
        best = {"value": float("-inf"), "epochs": 0}

        def on_report(metrics, _checkpoint_dir):
            epoch = int(metrics["epoch"])
            best["value"], best["epochs"] = max(best["value"], metrics["val_accuracy"]), epoch
            trial.report(metrics["val_accuracy"], epoch)
            if trial.should_prune():
                raise Pruned()

        torch.set_num_threads(1)  # as a Ray trial with one CPU
        try:
            train(cfg, LocalSession(num_threads=1, callback=on_report))
        except Pruned:
            epochs_run.append(best["epochs"])
            raise optuna.TrialPruned()
        epochs_run.append(best["epochs"])
        return best["value"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))
    t0 = time.monotonic()
    study.optimize(objective, n_trials=BUDGET, n_jobs=2)
    wall = time.monotonic() - t0
    so_far, top = [], float("-inf")
    for t in sorted(study.trials, key=lambda t: t.number):
        values = list(t.intermediate_values.values())
        top = max([top, *values])
        so_far.append(round(top, 4))
    return {"trials": len(study.trials), "errors": sum(t.state.name == "FAIL" for t in study.trials),
            "best_val_accuracy": so_far[-1] if so_far else None, "trial_epochs": sum(epochs_run),
            "wall_s": round(wall, 1), "best_so_far": so_far}


def summarize(runs: dict, seeds: list[int]) -> dict:
    sched = {(r["seed"], r["scheduler"]): r for r in runs["schedulers"]}
    out: dict = {"schedulers": {}, "searchers": {}}
    for name in SCHEDULERS:
        gap = [round(100 * (sched[(s, "fifo")]["best_val_accuracy"] - sched[(s, name)]["best_val_accuracy"]), 2)
               for s in seeds]
        share = [round(sched[(s, name)]["trial_epochs"] / sched[(s, "fifo")]["trial_epochs"], 3) for s in seeds]
        out["schedulers"][name] = {
            "best_val_accuracy": _spread([sched[(s, name)]["best_val_accuracy"] for s in seeds]),
            "points_below_fifo": _spread(gap), "epochs_vs_fifo": _spread(share)}
    search = {(r["seed"], r["searcher"]): r for r in runs["searchers"]}
    for name in SEARCHERS:
        needed = []
        for s in seeds:
            target = search[(s, "random")]["best_val_accuracy"]
            n = _trials_to_reach(search[(s, name)]["best_so_far"], target)
            needed.append(n if n is not None else BUDGET + 1)  # never: counted as one past the budget
        out["searchers"][name] = {
            "best_val_accuracy": _spread([search[(s, name)]["best_val_accuracy"] for s in seeds]),
            "trials_to_reach_randoms_best": _spread(needed),
            "never_reached_on_seeds": [s for s, n in zip(seeds, needed) if n > BUDGET]}
    pairs = {(r["seed"], r["run"]): r for r in runs.get("pairs", [])}
    paired = [s for s in seeds if all((s, n) in pairs for n in ("pbt", "random_fifo", "ours_tpe_asha",
                                                                    "optuna_in_process"))]
    for name in ("pbt", "random_fifo", "ours_tpe_asha", "optuna_in_process"):
        if paired:
            out.setdefault("pairs", {})[name] = {
                "best_val_accuracy": _spread([pairs[(s, name)]["best_val_accuracy"] for s in paired]),
                "trial_epochs": _spread([pairs[(s, name)]["trial_epochs"] for s in paired]),
                "wall_s": _spread([pairs[(s, name)]["wall_s"] for s in paired])}
    asha = out["schedulers"]["asha"]
    tpe, rnd = out["searchers"]["optuna_tpe"], out["searchers"]["random"]
    out["goals"] = {
        "asha_within_0.5_points_of_fifo": {"measured_points_below_median": asha["points_below_fifo"]["median"],
                                           "met": asha["points_below_fifo"]["median"] <= 0.5},
        "asha_at_most_a_quarter_of_fifos_epochs": {"measured_median": asha["epochs_vs_fifo"]["median"],
                                                   "met": asha["epochs_vs_fifo"]["median"] <= 0.25},
        "tpe_needs_at_most_half_of_randoms_trials": {
            "measured_median_tpe": tpe["trials_to_reach_randoms_best"]["median"],
            "measured_median_random": rnd["trials_to_reach_randoms_best"]["median"],
            "met": tpe["trials_to_reach_randoms_best"]["median"] <= rnd["trials_to_reach_randoms_best"]["median"] / 2},
    }
    if "pairs" in out:
        p = out["pairs"]
        ours, theirs = p["ours_tpe_asha"]["best_val_accuracy"], p["optuna_in_process"]["best_val_accuracy"]
        # "Within the seeds' spread": the medians differ by no more than either side's range over seeds.
        spread = max(ours["max"] - ours["min"], theirs["max"] - theirs["min"])
        out["goals"]["ours_matches_in_process_optuna"] = {
            "measured_median_ours": ours["median"], "measured_median_in_process": theirs["median"],
            "seeds_spread": round(spread, 4), "met": abs(ours["median"] - theirs["median"]) <= spread}
        out["goals"]["pbt_vs_random_at_equal_epochs"] = {
            "measured_median_pbt": p["pbt"]["best_val_accuracy"]["median"],
            "measured_median_random": p["random_fifo"]["best_val_accuracy"]["median"],
            "pbt_better": p["pbt"]["best_val_accuracy"]["median"] > p["random_fifo"]["best_val_accuracy"]["median"]}
    return out


def plot(runs: dict, seeds: list[int], path: Path) -> None:
    """Best-so-far curves of the searchers (median over seeds), as a small SVG."""
    w, h, pad = 520, 300, 40
    curves = {}
    for name in SEARCHERS:
        per_seed = [r["best_so_far"] for r in runs["searchers"] if r["searcher"] == name]
        n = min(len(c) for c in per_seed)
        curves[name] = [statistics.median(c[i] for c in per_seed) for i in range(n)]
    lo = min(min(c) for c in curves.values())
    hi = max(max(c) for c in curves.values())
    lo, hi = lo - 0.01, hi + 0.005
    colors = {"optuna_tpe": "#1f77b4", "hyperopt_tpe": "#ff7f0e", "random": "#7f7f7f"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
             f'font-size="11"><rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{pad}" y="16">best val_accuracy so far (median of {len(seeds)} seeds) vs trials, mnist1d</text>']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = h - pad - (h - 2 * pad) * i / 4
        parts.append(f'<text x="2" y="{y + 4:.0f}">{v:.3f}</text><line x1="{pad}" x2="{w - 10}" y1="{y:.0f}" '
                     f'y2="{y:.0f}" stroke="#eee"/>')
    for k, (name, c) in enumerate(curves.items()):
        pts = " ".join(f"{pad + (w - pad - 10) * i / max(1, len(c) - 1):.1f},"
                       f"{h - pad - (h - 2 * pad) * (v - lo) / (hi - lo):.1f}" for i, v in enumerate(c))
        parts.append(f'<polyline fill="none" stroke="{colors[name]}" stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{w - 120}" y="{h - pad - 40 + 14 * k}" fill="{colors[name]}">{name}</text>')
    parts.append(f'<text x="{w / 2 - 20:.0f}" y="{h - 8}">trial (1..{BUDGET})</text></svg>')
    path.write_text("\n".join(parts) + "\n")


def _versions() -> dict:
    import optuna
    import ray
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--rerun", nargs="+", choices=[*PAIR_RUNS, "optuna_in_process"],
                    help="redo these runs of the saved JSON's seeds, keep the rest")
    ap.add_argument("--section", choices=["warm_start"], help="run only this comparison (its results go "
                    "beside the saved JSON's other runs)")
    args = ap.parse_args()
    t0 = time.monotonic()
    out = ROOT / "benchmarks" / "out" / "search_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(runs: dict, seeds: list[int], extra: dict | None = None) -> None:  # after every seed
        result = {
            "benchmark": "search_quality", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count()},
            "versions": _versions(), "spec": str(SPEC.relative_to(ROOT)), "seeds": seeds,
            "seeds_planned": args.seeds, "epochs": EPOCHS, "searcher_budget": BUDGET, "grid": GRID,
            "schedulers_compared": SCHEDULERS,
            "pbt": {"population": PBT_POPULATION, "epochs": PBT_EPOCHS, "random_trials": PBT_RANDOM_TRIALS,
                    "scheduler": PBT},
            "summary": summarize(runs, seeds), "runs": runs, "total_wall_s": round(time.monotonic() - t0, 1),
            **(extra or {}),
        }
        out.write_text(json.dumps(result, indent=2) + "\n")
        plot(runs, seeds, out.with_suffix(".svg"))
        print(json.dumps(result["summary"], indent=2), flush=True)

    if args.section == "warm_start":
        saved = json.loads(out.read_text()) if out.exists() else {}
        runs = warm_start_runs(args.seeds)
        saved["warm_start"] = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count()},
            "versions": _versions(), "spec": str(SPEC.relative_to(ROOT)), "recipe": TPE_FIFO,
            "summary": summarize_warm_start(runs), "runs": runs, "wall_s": round(time.monotonic() - t0, 1)}
        out.write_text(json.dumps(saved, indent=2) + "\n")
        print(json.dumps(saved["warm_start"]["summary"], indent=2), flush=True)
        return
    if args.rerun:  # the JSON keeps what the replaced runs measured, and when
        saved = json.loads(out.read_text())
        args.seeds = saved["seeds_planned"]
        replaced = [{k: v for k, v in r.items() if k != "best_so_far"} for r in saved["runs"].get("pairs", [])
                    if r["run"] in args.rerun]
        history = saved.get("reruns", []) + [{
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": args.rerun,
            "first_measured": saved["date"], "replaced": replaced}]
        write(rerun(saved["runs"], saved["seeds"], args.rerun), saved["seeds"], {"reruns": history})
        return
    run(args.seeds, write)


if __name__ == "__main__":
    main()
