"""One conformance test over the training loops (the ``LOOPS`` registry, ``train.loop``).

Each loop sweeps its own example spec once, and that one sweep goes through everything a
sweep does: 2 DDP workers per trial (in warm worker slots, the default), ASHA stopping a
trial, the driver killed with SIGKILL mid-way and ``raytune-opt resume`` finishing every
trial exactly once, the report, then the best trial's promotion (ONNX with its parity check,
INT8 with its gate). A loop added to ``LOOPS`` (its example spec and the overrides that make
it small) is tested the same way.

The kill and resume reuse tests/test_resume.py's driver harness: the driver is a subprocess
joined to the session's local Ray, so the kill takes only the driver.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from raytune_opt.cli import main
from tests import test_resume
from tests.test_warm_slots import SLOT_ACTORS, _actors

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "search_spaces" / "examples"
N, EPOCHS = 3, 5  # trials (one grid point each), epochs per trial (ASHA's rungs: 1, 2, 4)


@dataclass(frozen=True)
class Loop:
    """A loop's case: its example spec and what makes it small.

    Attributes:
        spec: the loop's shipped example.
        overrides: besides :data:`COMMON`: a grid of :data:`N` learning rates under the key the
            loop reads, in this order: a good one, one too small to learn anything in an epoch
            (ASHA stops that trial at its first rung), a good one.
        needs: modules the loop imports (the case is skipped without them).
        ci: run in CI; the others are ``-m exhaustive`` (CI covers them elsewhere:
            tests/test_resume.py, tests/test_warm_slots.py, tests/promote/test_run.py).
        check: the loop's own checks on the finished experiment (its directory and promotion manifest).
    """

    spec: Path
    overrides: tuple[str, ...]
    needs: tuple[str, ...] = ()
    ci: bool = False
    check: Callable[[Path, dict], None] | None = None


def _hf_trainer(exp: Path, manifest: dict) -> None:
    """hf_trainer: Hugging Face's metric names; two ranks shared every epoch; promotion merged the
    best trial's LoRA adapter and quantized the transformer's matrix products."""
    from raytune_opt.recipe.checkpoint import load_checkpoint

    reported = json.loads(next(exp.glob("trial_*/result.json")).read_text().splitlines()[-1])
    assert {"eval_loss", "eval_accuracy", "loss", "learning_rate"} <= set(reported), sorted(reported)
    # The losses at one rank's scale: the trial at lr 1e-6 barely moves from an untrained 2-class
    # model's ln 2 = 0.69 (transformers' default token averaging across devices doubled it: 1.39).
    with open(exp / "results.csv") as f:
        slow = next(r for r in csv.DictReader(f) if json.loads(r["config"])["train.args.learning_rate"] == 1.0e-6)
    first = _first_epoch(exp, slow["trial_id"])
    assert abs(float(first["eval_loss"]) - 0.693) < 0.1 and abs(float(first["loss"]) - 0.693) < 0.1, first
    best = json.loads((exp / "best.json").read_text())
    ckpt = load_checkpoint(best["checkpoint"])
    # 900 training reviews, 32 per rank and step: ceil(450 / 32) = 15 steps an epoch on two ranks (29 on one).
    assert json.loads(ckpt["optimizer_state"]["trainer_state"])["global_step"] == 15 * ckpt["epoch"]
    merged = manifest["source"]["merged"]
    assert merged["adapter"] == "lora" and merged["into"] == "BertForSequenceClassification", merged
    assert merged["r"] == ckpt["recipe"]["train"]["peft"]["r"] and merged["adapter_params"] > 0, merged
    arts = {a["name"]: a for a in manifest["artifacts"]}
    # The promoted (merged) model is the trial's: the accuracy its best epoch had.
    assert arts["pytorch"]["accuracy"] == pytest.approx(ckpt["metrics"]["eval_accuracy"], abs=1e-6)
    assert arts["int8"]["quantization"]["op_types"] == ["MatMul", "Gemm", "Gather"], arts["int8"]["quantization"]


def _first_epoch(exp: Path, trial_id: str) -> dict:
    with open(exp / "history" / f"{trial_id}.csv") as f:
        return next(csv.DictReader(f))


def _hf_trainer_zero(exp: Path, manifest: dict) -> None:
    """hf_trainer under DeepSpeed: as :func:`_hf_trainer`, and the optimizer state in the two
    ranks' ZeRO shards beside the checkpoint, not in it."""
    from raytune_opt.recipe.checkpoint import load_checkpoint

    _hf_trainer(exp, manifest)
    best = json.loads((exp / "best.json").read_text())
    ckpt = load_checkpoint(best["checkpoint"])
    assert ckpt["zero"]["world_size"] == 2 and ckpt["zero"]["stage"] == 2, ckpt["zero"]
    assert "optimizer" not in ckpt["optimizer_state"], sorted(ckpt["optimizer_state"])
    shards = Path(best["checkpoint"]).parent / "zero" / ckpt["zero"]["tag"]
    assert {p.name for p in shards.glob("*optim_states.pt")} == {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
                                                               for r in (0, 1)}, sorted(shards.iterdir())


#: The loops and their example specs: a new loop adds its entry here.
LOOPS = {
    "lightning": Loop(EXAMPLES / "digits_lightning.yaml",
                      ("space={model.args.lr: {grid: [1.0e-2, 1.0e-6, 3.0e-3]}}", "train.limit_batches=4"),
                      needs=("lightning",), ci=True),
    "builtin": Loop(ROOT / "search_spaces" / "digits_cnn.yaml",
                    ("space={train.optimizer.lr: {grid: [1.0e-2, 1.0e-6, 3.0e-3]}}", "train.limit_batches=4",
                     "model.width=16")),
    "hf_trainer": Loop(EXAMPLES / "sentiment_hf_lora.yaml",  # LoRA r 8 on a from-config BERT, 1,500 reviews
                       ("space={train.args.learning_rate: {grid: [3.0e-2, 1.0e-6, 1.0e-2]}}", "search.metric=eval_accuracy"),
                       needs=("transformers", "peft"), check=_hf_trainer),
    # The Trainer's own DeepSpeed integration, ZeRO 2 over the two workers' gloo group: the
    # optimizer state in each rank's shards, which the kill's resume loads. CI runs this case
    # rather than hf_trainer's DDP one: the same loop on Ray Train (prepare_trainer, the warm
    # slot's accelerate state), plus the shards; Lightning's CI case covers a trainer's DDP.
    "hf_trainer+zero2": Loop(EXAMPLES / "sentiment_hf_lora.yaml",
                             ("space={train.args.learning_rate: {grid: [3.0e-2, 1.0e-6, 1.0e-2]}}",
                              "search.metric=eval_accuracy", "train.strategy=deepspeed",
                              "train.deepspeed={zero_optimization: {stage: 2}}"),
                             needs=("transformers", "peft", "deepspeed"), ci=True, check=_hf_trainer_zero),
    "user": Loop(EXAMPLES / "text_user_data.yaml",  # train.loop: user_text.loop:train, by import path
                 ("space={train.optimizer.lr: {grid: [3.0e-2, 1.0e-6, 1.0e-2]}}", "train.limit_batches=4")),
}
COMMON = ("search={algorithm: grid, num_samples: 1}",
          f"scheduler={{name: asha, grace_period: 1, reduction_factor: 2, max_t: {EPOCHS}}}",
          f"train.epochs={EPOCHS}", "resources.num_workers=2", "resources.cpus_per_worker=1",
          "resources.max_concurrent_trials=1", "promote.targets=[onnx, int8]")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if case.ci else pytest.mark.exhaustive)
                                  for name, case in LOOPS.items()])
def test_a_loop_sweeps_on_two_workers_survives_a_kill_and_promotes_its_best_trial(local_ray, tmp_path, name):
    case = LOOPS[name]
    for module in case.needs:
        pytest.importorskip(module)
    address = local_ray.get_runtime_context().gcs_address
    before = _actors(SLOT_ACTORS)
    run = [sys.executable, "-m", "raytune_opt", "run", str(case.spec), *COMMON, *case.overrides,
           "--storage", str(tmp_path), "--address", address]
    # Killed once a trial is caught mid-way (test_resume's "late" moment with n=1: some trial
    # started, one between its first and last epoch, still running in Tune's saved state). A
    # sweep that ended before that (epochs of a fraction of a second) is run again, afresh.
    exp, (held,) = test_resume.kill_at(run, tmp_path, ("late",), tmp_path / "driver.log", 1, EPOCHS, name="loop",
                                       attempts=2)
    seen = json.loads(held)
    assert not (exp / "results.csv").exists()  # killed before the end
    # The warm slots (pool, runners, controllers, workers) were the dead driver's: they go with it.
    deadline = time.monotonic() + 60
    while (left := set(_actors(SLOT_ACTORS, alive_only=True)) - set(before)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"the killed driver's slots outlived it: {sorted(_actors(SLOT_ACTORS, alive_only=True).values())}"

    # `raytune-opt resume` (in this process, on the session's Ray: without --address it gives the
    # trials the spec's directory to import the user's code from, as the run did): the sweep, its
    # report, then the promotion of its best trial.
    assert main(["resume", str(exp)]) == 0
    assert not set(_actors(SLOT_ACTORS, alive_only=True)) - set(before), "the resumed sweep left slots behind"

    with open(exp / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N and len({r["trial_id"] for r in rows}) == N, rows  # none lost, none twice
    assert all(r["status"] in ("ok", "stopped") for r in rows), [(r["status"], r["error"]) for r in rows]
    # ASHA stopped the trial whose learning rate learns nothing (the second grid point).
    (slow,) = [r for r in rows if json.loads(r["config"])[_lr_key(case)] == 1.0e-6]
    assert slow["status"] == "stopped" and int(slow["epochs"]) < EPOCHS, slow
    histories = {}
    for r in rows:  # each epoch reported once, across the kill
        with open(exp / "history" / f"{r['trial_id']}.csv") as f:
            histories[r["trial_id"]] = list(csv.DictReader(f))
        epochs = [int(float(h["epoch"])) for h in histories[r["trial_id"]]]
        assert epochs == list(range(1, int(r["epochs"]) + 1)), (r["trial_id"], epochs)
    # Two DDP ranks per trial, and their replicas identical at the end of every finished trial.
    # (Without DDP's all-reduce they would differ: each rank shuffles with a seed of its own.)
    finished = [histories[r["trial_id"]][-1] for r in rows if r["status"] == "ok"]
    assert finished and all(float(h["rank_param_max_diff"]) == 0.0 for h in finished), finished
    # The trial caught mid-way by the kill went on from its own checkpoint, not from epoch 1.
    continued = 0
    for trial_dir, k in seen.items():
        lines = [json.loads(x) for x in (exp / trial_dir / "result.json").read_text().splitlines() if x.strip()]
        assert [x["epoch"] for x in lines if not x.get("replayed")].count(1) == 1, (trial_dir, lines)
        continued += 0 < k < EPOCHS and len(lines) > k
    assert continued, seen
    # The report lists each trial once.
    page = (exp / "report.html").read_text()
    assert page[page.index('id="leaderboard"'):page.index('id="history"')].count("<tr class=") == N
    # The best trial promoted: ONNX within its parity tolerance, INT8 through its gate.
    manifest = json.loads((exp / "promotion" / "manifest.json").read_text())
    assert manifest["source"]["trial_id"] == json.loads((exp / "best.json").read_text())["trial_id"]
    arts = {a["name"]: a for a in manifest["artifacts"]}
    parity = arts["onnx"]["parity"]
    assert arts["onnx"]["status"] == "ok" and parity["max_abs_diff"] <= parity["atol"], arts["onnx"]
    assert arts["int8"]["status"] == "ok", arts["int8"]
    if case.check is not None:
        case.check(exp, manifest)


def _lr_key(case: Loop) -> str:
    (space,) = [o for o in case.overrides if o.startswith("space=")]
    return space[len("space={"):].split(":")[0]
