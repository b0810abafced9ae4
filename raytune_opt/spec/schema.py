"""The sweep spec's schema: every key, its type, default, bounds and documentation.

One declarative tree (:data:`SPEC`) drives validation, defaults, the README's spec
reference and the check that a ``space`` key names a real recipe setting. Names that a
registry owns (models, datasets, optimizers, ...) are listed here so that ``validate``
never has to import torch or Ray; a test checks they match the registries. The model names
come from :data:`raytune_opt.registry.MODELS` itself (it imports neither). A promotion
step's settings (``promote.<step>``) are not written here: each step declares its section
beside its code (:mod:`raytune_opt.promote.steps`) and :func:`_promote_section` puts them under
``promote``; likewise each scheduler declares the ``scheduler.*`` keys it reads beside its
builder (:mod:`raytune_opt.schedulers`) and :func:`scheduler_section` puts them under
``scheduler``. The node types, :class:`Field` and :class:`Section`, live in
:mod:`raytune_opt.spec.fields`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from raytune_opt import registry
from raytune_opt.spec.fields import Field, Section  # noqa: F401  (the node types, re-exported)

# Names owned by the registries in raytune_opt.recipe / searchers / schedulers.
DATASETS = registry.DATASETS.names()
MODELS = registry.MODELS.names()
# The models that take 1-D signals, and those that take images.
SIGNAL_MODELS = tuple(m for m in MODELS if 1 in registry.MODELS[m].meta.get("inputs", ()))
IMAGE_MODELS = tuple(m for m in MODELS if 2 in registry.MODELS[m].meta.get("inputs", ()))
OPTIMIZERS = registry.OPTIMIZERS.names()
LR_SCHEDULES = registry.LR_SCHEDULES.names()
LOSSES = registry.LOSSES.names()
# The task each loss trains, and each task-specific metric measures.
LOSS_TASK = {name: registry.LOSSES[name].meta["task"] for name in LOSSES}
TASKS = ("classification", "regression")
PRECISIONS = ("fp32", "bf16", "fp16")
STRATEGIES = registry.STRATEGIES.names()
ALGORITHMS = registry.SEARCHERS.names()
SAMPLERS = registry.OPTUNA_SAMPLERS.names()
SCHEDULERS = registry.SCHEDULERS.names()
PROMOTION_TARGETS = registry.PROMOTION_STEPS.names()
DEFAULT_TARGETS = tuple(t for t in PROMOTION_TARGETS if registry.PROMOTION_STEPS[t].meta.get("by_default", True))
# Metrics the training recipe reports after every epoch, and the direction that is better.
# val_loss is always plain cross-entropy (no weights, no smoothing) for classification and
# the mean squared error for regression, whatever the training loss, so that it compares
# across trials that tune the loss.
METRICS = {
    "val_accuracy": "max", "val_f1": "max", "val_precision": "max", "val_recall": "max",
    "val_loss": "min", "train_loss": "min",
    "val_rmse": "min", "val_mae": "min", "val_r2": "max",
}
METRIC_TASK = {"val_accuracy": "classification", "val_f1": "classification", "val_precision": "classification",
               "val_recall": "classification", "val_rmse": "regression", "val_mae": "regression",
               "val_r2": "regression"}
# What the recipe also reports after every epoch (history/<trial>.csv, TensorBoard, MLflow keep
# these, the METRICS, and the sweep's own metric whatever its name).
EPOCH_STATS = ("grad_norm", "lr", "samples_per_s", "epoch_s", "rank_param_max_diff", "params", "macs",
               "model_bytes", "latency_ms")
# Deployment measures every trial reports (objectives.MEASURES), all better lower.
from raytune_opt.objectives import MEASURES  # noqa: E402  (light: no torch, no Ray)
# Sections whose leaves a search space may tune.
TUNABLE_SECTIONS = ("data", "model", "train")


MAX_NAME_CHARS = 128


def _name_check(value: Any) -> str | None:
    import re

    if len(value) > MAX_NAME_CHARS:  # a directory name, inside paths Ray lengthens further
        return f"{len(value):,} characters long, more than {MAX_NAME_CHARS} (it names the results directory)"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        return "must be letters, digits, '_', '.' or '-' (it names the results directory)"
    return None


def _storage_path_check(value: Any) -> str | None:
    from raytune_opt.storage import root_problem

    return root_problem(value)


def _endpoint_check(value: Any) -> str | None:
    from raytune_opt.storage import endpoint_problem

    return None if value is None else endpoint_problem(value)


def _tracking_uri_check(value: Any) -> str | None:
    import re

    if value is not None and not re.match(r"(https?|sqlite|file|postgresql|mysql|databricks)(\+\w+)?:", value):
        return "must be an MLflow tracking URI: http(s)://HOST:PORT, sqlite:///FILE.db or file:///DIR"
    return None


WANDB_MODES = ("online", "offline", "disabled")


def _wandb_project_check(value: Any) -> str | None:
    # What wandb.Settings refuses in a project name.
    if value is not None and (not value.strip() or len(value) > 128 or any(c in value for c in "/\\#?%:")):
        return "must be 1 to 128 characters without / \\ # ? % or :"
    return None


def _class_weights_check(value: Any) -> str | None:
    if value is None or value == "balanced":
        return None
    if isinstance(value, list) and value and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v) for v in value
    ):
        return None
    return "must be null, 'balanced' or a list of non-negative numbers, one per class"


def _metric_check(value: Any) -> str | None:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.isidentifier() for n in names):
        return "must be a metric name (letters, digits, '_') or a list of them, e.g. val_auc"
    if len(set(names)) != len(names):
        return "lists a metric twice"
    return None


def _mode_check(value: Any) -> str | None:
    modes = [value] if isinstance(value, str) else value
    if not isinstance(modes, list) or not modes or not all(m in ("max", "min") for m in modes):
        return "must be max, min, or a list of them (one per search.metric)"
    return None


def _bounds_problem(bound: Any) -> str | None:
    if not isinstance(bound, dict) or not bound or set(bound) - {"min", "max"}:
        return "takes {min: X, max: Y} (either or both)"
    for v in bound.values():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "bounds must be finite numbers"
    if "min" in bound and "max" in bound and bound["min"] > bound["max"]:
        return "min is above max"
    return None


def _constraints_check(value: Any) -> str | None:
    if value is None:
        return None
    for key, bound in value.items():
        problem = _bounds_problem(bound)
        if problem:
            return f"{key}: {problem}"
    return None


def _warm_start_check(value: Any) -> str | None:
    if not value or not all(isinstance(v, str) and v.strip() for v in value):
        return "must be a non-empty list of experiment directories or s3:// URIs"
    return None


def _enqueue_check(value: Any) -> str | None:
    if not value or not all(isinstance(v, dict) and v and all(isinstance(k, str) for k in v) for v in value):
        return "must be a non-empty list of configs, each {space key: value}"
    return None


def _budget_time_check(value: Any) -> str | None:
    from raytune_opt.budget import time_problem

    return time_problem(value)


def _select_check(value: Any) -> str | None:
    if value is None:
        return None
    if set(value) - {"metric", "mode", "where"} or not isinstance(value.get("metric"), str):
        return "must be {metric: NAME, where: {KEY: {min, max}}} (mode: max/min for a metric of your own loop)"
    if value.get("mode") not in (None, "max", "min"):
        return "mode must be max or min"
    where = value.get("where") or {}
    if not isinstance(where, dict):
        return "where must be a mapping of KEY: {min, max}"
    for key, bound in where.items():
        problem = _bounds_problem(bound)
        if problem:
            return f"where.{key}: {problem}"
    return None


def _targets_check(value: Any) -> str | None:
    bad = [t for t in value if t not in PROMOTION_TARGETS and not registry.is_import_path(t)]
    if bad:
        return (f"unknown promotion target(s) {bad}; valid: {', '.join(PROMOTION_TARGETS)}, or your own step as "
                f"'module:callable'")
    if len(set(value)) != len(value):
        return "lists a target twice"
    return None


def _promote_section(doc: str, core: dict) -> Section:
    """``promote``: its own keys (``core``) and, after them, the ``promote.<step>`` section each
    promotion step declares beside its code (the entry's ``settings`` meta,
    :mod:`raytune_opt.promote.steps`): first the steps built by default, then the others,
    each group in the order the steps run."""
    steps = sorted((registry.PROMOTION_STEPS[n] for n in PROMOTION_TARGETS),
                   key=lambda e: not e.meta.get("by_default", True))
    sections = {e.name: e.meta["settings"] for e in steps if e.meta.get("settings") is not None}
    taken = sorted(set(sections) & set(core))
    if taken:
        raise ValueError(f"promotion step(s) {taken} would hide the promote keys of that name: rename the step")
    return Section(doc, {**core, **sections})



def scheduler_section(doc: str, core: dict) -> Section:
    """``scheduler``: its own keys (``core``: the name) and, after them, every ``scheduler.*`` key
    a scheduler entry reads (the entry's ``settings`` meta, :mod:`raytune_opt.schedulers`), in the
    order the schedulers are listed. A key several entries read must be one Field they share;
    its doc starts with the schedulers that read it.

    Raises:
        ValueError: an entry declares a core key, or two declare one key differently.
    """
    fields: dict[str, Field] = {}
    readers: dict[str, list[str]] = {}
    for name in registry.SCHEDULERS.names():
        for key, fld in registry.SCHEDULERS[name].meta.get("settings", {}).items():
            if key in core:
                raise ValueError(f"scheduler {name!r} declares scheduler.{key}, which the schema owns: rename it")
            if key in fields and fields[key] != fld:
                raise ValueError(f"schedulers {readers[key]} and {name!r} declare scheduler.{key} differently: "
                                 "declare one Field and share it (raytune_opt/schedulers/_settings.py)")
            fields[key] = fld
            readers.setdefault(key, []).append(name)
    own = {key: dataclasses.replace(fld, doc=f"{'/'.join(readers[key])}: {fld.doc}") for key, fld in fields.items()}
    return Section(doc, {**core, **own})


def _scheduler_hash_neutral() -> dict:
    """``scheduler.<key>`` at its default, for each key that only schedulers registered with
    ``hash_neutral=True`` read (settings added after experiments were recorded)."""
    out, entries = {}, [registry.SCHEDULERS[n] for n in registry.SCHEDULERS.names()]
    for entry in entries:
        for key, fld in entry.meta.get("settings", {}).items():
            if all(e.meta.get("hash_neutral") for e in entries if key in e.meta.get("settings", {})):
                out[("scheduler", key)] = fld.default
    return out


SPEC = Section("A sweep spec.", {
    "name": Field("str", "sweep", "Experiment name; results go to STORAGE/NAME/.", check=_name_check, tunable=False),
    "seed": Field("int", 0, "Seed for data split, model init and (unless search.seed is set) the searcher.", ge=0),
    "data": Section("The data set.", {
        "dataset": Field("str", "digits", "Data set: digits (ships with scikit-learn) | mnist1d (1-D signals "
                         "generated by the mnist1d package) | cifar10 | cifar100 | imagefolder | csv (a table: "
                         "data.path, data.target), or your own as "
                         "'module:callable' (returns a DataBundle, a (train, val) pair or a (train, val, test) triple of "
                         "torch Datasets; see "
                         "'Bring your own data').", registry=registry.DATASETS),
        "args": Section("Keyword arguments of an import-path data.dataset; search one as data.args.NAME. The "
                        "callable also gets whichever of seed, val_fraction, test_fraction it names.", open=True),
        "path": Field("str", None, "csv: the CSV or Parquet file (a table, one row per sample); a relative path "
                      "starts from the spec file's directory.", nullable=True,
                      tunable=False),
        "target": Field("str", None, "csv: the column to predict (text or integers classify, floats regress; "
                        "data.task decides otherwise).", nullable=True, tunable=False),
        "features": Field("list", None, "csv: the input columns; null: every column but the target. Text columns "
                          "are one-hot encoded, numeric ones standardised on the training split.", nullable=True,
                          tunable=False),
        "task": Field("str", None, "classification | regression; null: what the data set says (a DataBundle's "
                      "task, or its labels: integers classify, floats regress).", nullable=True, choices=TASKS,
                      tunable=False),
        "root": Field("str", None, "Directory holding the data (cifar10/cifar100: torchvision's on-disk format; "
                      "imagefolder: one sub-folder per class). Not used by digits and mnist1d.", nullable=True, tunable=False),
        "download": Field("bool", False, "cifar10/cifar100 only: download into root when missing (needs internet).",
                          tunable=False),
        "val_fraction": Field("float", 0.2, "Fraction of the data left after the test split that is held out for "
                              "validation (seeded split; one split for the whole sweep, so that trials' validation "
                              "metrics compare). The search selects on it.",
                              gt=0, lt=1, tunable=False,
                              fixed_because="every trial must be validated on the same held-out samples, or their "
                                            "validation metrics are not comparable"),
        "test_fraction": Field("float", 0.2, "Fraction of the data held out as the test split, split off first "
                               "(seeded, stratified) where the data set has no test set of its own (cifar10/100's "
                               "test batch, mnist1d's test signals, imagefolder's root/test/CLASS/, a user "
                               "DataBundle's test, csv's data.test_column are used instead). No trial sees it: the "
                               "best trial and every promoted artifact are measured on it once, after the sweep "
                               "(test_* in best.json and the manifest). 0: no test split; the figures reported are "
                               "then validation figures.", ge=0, lt=1, tunable=False,
                               fixed_because="the test split is the held-out data every trial must not see; a "
                                             "searched one would move samples between it and training"),
        "test_column": Field("str", None, "csv: a column marking the test rows (true/1/test; false/0/train for the "
                             "others) instead of data.test_fraction; never a feature.", nullable=True, tunable=False),
        "image_size": Field("int", None, "imagefolder only: images are resized to this square size (pixels); "
                            "default 224.", nullable=True, ge=8),
        "loader_workers": Field("int", 0, "DataLoader worker processes per train worker.", ge=0),
    }),
    "model": Section("The model to train.", {
        "name": Field("str", "small_cnn", "Model: " + " | ".join(MODELS) + " (random init, nothing downloaded), "
                      "or your own as 'module:callable' (a class or factory returning an nn.Module; see "
                      "'Bring your own model').", registry=registry.MODELS),
        "args": Section("Keyword arguments of an import-path model.name; search one as model.args.NAME. The "
                        "callable also gets whichever of num_classes, input_shape, in_channels it names.",
                        open=True),
        "width": Field("int", 32, "mlp: hidden units; small_cnn: channels of the first conv (doubles per block); "
                       "cnn1d: channels of every conv block; unused by torchvision models.",
                       ge=1),
        "depth": Field("int", 2, "mlp: hidden layers; small_cnn, cnn1d: conv blocks; unused by torchvision models.",
                       ge=1, le=8),
        "kernel_size": Field("int", 5, "cnn1d: conv kernel size, in signal points ('same' padding).", ge=1, le=15),
        "dropout": Field("float", 0.0, "Dropout probability before the classifier (replaces torchvision's built-in "
                         "dropout of mobilenet/efficientnet).", ge=0, lt=1),
        "cifar_stem": Field("bool", True, "torchvision models: 3x3 stride-1 stem without max-pool, for 32x32 inputs."),
        "squeeze_excitation": Field("bool", False, "resnet*: add a squeeze-and-excitation block to every residual block."),
    }),
    "train": Section("The training recipe; every key here can be tuned from `space`.", {
        "epochs": Field("int", 10, "Epochs per trial (the schedulers' time unit).", ge=1),
        "batch_size": Field("int", 64, "Samples per step per worker (the global batch is this x resources.num_workers).",
                            ge=1),
        "limit_batches": Field("int", None, "Stop each epoch after this many micro-batches (dry runs, smoke tests); a "
                               "partial accumulation group still takes an optimizer step.",
                               nullable=True, ge=1),
        "loop": Field("str", "builtin", "The training loop: builtin (the recipe every other train key configures), "
                      "or your own as 'module:callable', fn(config, ctx) (see 'Bring your own training loop').",
                      registry=registry.LOOPS, tunable=False),
        "strategy": Field("str", "ddp", "Distributed strategy per trial: " + " | ".join(STRATEGIES) + ".",
                          choices=STRATEGIES),
        "deepspeed": Section("DeepSpeed's own config, passed through (train.strategy: deepspeed only).", open=True),
        "optimizer": Section("The optimizer.", {
            "name": Field("str", "adamw", "Optimizer: " + " | ".join(OPTIMIZERS) + ", or your own as "
                          "'module:callable' (a torch.optim.Optimizer subclass, or a callable (params, **kwargs) "
                          "returning one; see 'Bring your own optimizer or lr schedule').",
                          registry=registry.OPTIMIZERS),
            "args": Section("Keyword arguments of an import-path train.optimizer.name; search one as "
                            "train.optimizer.args.NAME. The callable also gets whichever of lr, weight_decay (below) "
                            "it names; the other keys here are for the built-ins.", open=True),
            "lr": Field("float", 1e-3, "Peak learning rate.", gt=0),
            "weight_decay": Field("float", 0.0, "Weight decay (decoupled for adamw, L2 otherwise).", ge=0),
            "momentum": Field("float", 0.9, "sgd and rmsprop: momentum.", ge=0, lt=1),
            "nesterov": Field("bool", False, "sgd: Nesterov momentum (needs momentum > 0)."),
            "beta1": Field("float", 0.9, "adam/adamw: first-moment decay.", ge=0, lt=1),
            "beta2": Field("float", 0.999, "adam/adamw: second-moment decay.", ge=0, lt=1),
            "eps": Field("float", 1e-8, "adam/adamw/rmsprop/adagrad: numerical epsilon.", gt=0),
        }),
        "lr_schedule": Section("Learning-rate schedule, stepped per optimizer step (plateau: per epoch).", {
            "name": Field("str", "constant", "Schedule: " + " | ".join(LR_SCHEDULES) + ", or your own as "
                          "'module:callable': (optimizer, **kwargs) returning a torch LRScheduler, stepped after every "
                          "optimizer step (ReduceLROnPlateau: per epoch, on val_loss).",
                          registry=registry.LR_SCHEDULES),
            "args": Section("Keyword arguments of an import-path train.lr_schedule.name; search one as "
                            "train.lr_schedule.args.NAME. The callable also gets whichever of steps_per_epoch, epochs, "
                            "total_steps (optimizer steps) it names; the other keys here are for the built-ins.",
                            open=True),
            "warmup_epochs": Field("float", 0.0, "Linear warmup from 0 to the schedule's starting lr over this many epochs "
                                   "(onecycle: to its own starting lr, peak/25).",
                                   ge=0),
            "step_size": Field("int", 10, "step: epochs between decays.", ge=1),
            "gamma": Field("float", 0.1, "step: decay factor.", gt=0, le=1),
            "min_lr": Field("float", 0.0, "cosine: final learning rate.", ge=0),
            "pct_start": Field("float", 0.3, "onecycle: fraction of steps spent increasing the lr.", gt=0, lt=1),
            "plateau_patience": Field("int", 2, "plateau: epochs without val_loss improvement before a decay.", ge=0),
            "plateau_factor": Field("float", 0.1, "plateau: decay factor.", gt=0, lt=1),
        }),
        "loss": Section("The loss.", {
            "name": Field("str", "cross_entropy", "Loss: cross_entropy | focal (classification); mse | l1 | huber "
                          "(regression).", choices=LOSSES),
            "label_smoothing": Field("float", 0.0, "Label smoothing (cross_entropy only).", ge=0, lt=1),
            "class_weights": Field("any", None, "null | balanced (inverse class frequency) | list, one weight per class.",
                                   nullable=True, check=_class_weights_check),
            "focal_gamma": Field("float", 2.0, "focal: focusing parameter gamma.", ge=0),
        }),
        "precision": Field("str", "fp32", "fp32 | bf16 (autocast; CPU or GPU) | fp16 (autocast + grad scaler; GPU only).",
                           choices=PRECISIONS),
        "grad_accum_steps": Field("int", 1, "Micro-batches accumulated per optimizer step.", ge=1),
        "grad_clip_norm": Field("float", None, "Clip the global gradient norm to this value; null: no clipping.",
                                nullable=True, gt=0),
        "augment": Section("Training-time augmentation (validation data is never augmented).", {
            "hflip": Field("float", 0.0, "Probability of a horizontal flip.", ge=0, le=1),
            "random_crop_padding": Field("int", 0, "Pad by this many pixels, then crop back at random; 0: off.", ge=0),
            "rotation_degrees": Field("float", 0.0, "Random rotation in [-d, d] degrees; 0: off.", ge=0, le=180),
            "color_jitter": Field("float", 0.0, "Brightness/contrast/saturation jitter strength; 0: off.", ge=0, le=1),
            "mixup_alpha": Field("float", 0.0, "Mixup Beta(alpha, alpha); 0: off.", ge=0),
            "cutmix_alpha": Field("float", 0.0, "CutMix Beta(alpha, alpha); 0: off. With Mixup, each mixed batch "
                                  "picks one of the two at random.", ge=0),
            "mix_prob": Field("float", 1.0, "Probability that a batch is mixed when Mixup or CutMix is on.", ge=0, le=1),
        }),
        "early_stopping": Section("Stop a trial when the spec's metric stops improving.", {
            "patience": Field("int", None, "Epochs without improvement before stopping; null: off.", nullable=True, ge=1),
            "min_delta": Field("float", 0.0, "Smallest change that counts as an improvement.", ge=0),
        }),
        "checkpoint": Field("bool", True, "Save a checkpoint every epoch, keeping the best and the last.",
                            tunable=False),
        "trainer": Section("train.loop: lightning only: keyword arguments of Lightning's Trainer (e.g. precision, "
                           "gradient_clip_val, accumulate_grad_batches); search one as train.trainer.NAME. "
                           "train.epochs is its max_epochs.", open=True),
        "args": Section("train.loop: hf_trainer only: keyword arguments of transformers.TrainingArguments (e.g. "
                        "learning_rate, per_device_train_batch_size, warmup_steps, weight_decay); search one as "
                        "train.args.NAME. train.epochs is its num_train_epochs.", open=True),
        "peft": Section("train.loop: hf_trainer only: a LoRA adapter, keyword arguments of peft.LoraConfig (e.g. r, "
                        "lora_alpha, lora_dropout, target_modules); empty: the whole model trains. Search one as "
                        "train.peft.NAME.", open=True),
    }),
    "resources": Section("Resources per trial.", {
        "num_workers": Field("int", 1, "Ray Train workers (DDP ranks) per trial; 1 runs the loop in the trial itself.",
                             ge=1),
        "cpus_per_worker": Field("float", 1.0, "CPUs reserved per worker.", gt=0),
        "gpus_per_worker": Field("float", 0.0, "GPUs per worker (fractions below 1 share a GPU).", ge=0),
        "max_concurrent_trials": Field("int", None, "Trials running at once; null: as many as the cluster fits.",
                                       nullable=True, ge=1),
        "warm_workers": Field("bool", True, "Multi-worker trials run in warm worker groups kept across trials (a "
                              "slot per shape: workers, process group, device, data set and ctx.keep values stay; "
                              "model, optimizer, seeds are new per trial); false: a Ray Train run per trial.",
                              tunable=False),
    }),
    "search": Section("How configurations are proposed.", {
        "algorithm": Field("str", "random", " | ".join(ALGORITHMS) + ".", choices=ALGORITHMS, tunable=False),
        "sampler": Field("str", "tpe", "optuna only: " + " | ".join(SAMPLERS) + ".", choices=SAMPLERS,
                         tunable=False),
        "metric": Field("any", "val_accuracy", "Metric to optimize: " + " | ".join(METRICS) + " (a user "
                        "train.loop: any metric it reports), or a list of objectives, e.g. [val_accuracy, latency_ms]: "
                        "metrics and the measures every trial reports (" + ", ".join(MEASURES) + "); the first picks "
                        "best epochs and the best trial, all of them the Pareto front (pareto.csv).",
                        check=_metric_check, tunable=False),
        "mode": Field("any", "max", "max | min, or a list of them, one per search.metric.", check=_mode_check,
                      tunable=False),
        "constraints": Field("dict", None, "Bounds a trial must keep, e.g. {params: {max: 1.0e6}, latency_ms: {max: "
                             "2.0}}: metrics or measures (" + ", ".join(MEASURES) + ") -> {min, max}. A config whose "
                             "params, macs or model_bytes break one is not trained (status infeasible); latency_ms "
                             "and metrics mark a trial infeasible once measured. Optuna's samplers are told.",
                             nullable=True, check=_constraints_check, tunable=False),
        "num_samples": Field("int", 8, "Trials to run (grid: repeats of the whole grid); null: as many as "
                             "search.budget allows (a budget must be set; not with grid).", ge=1, nullable=True,
                             tunable=False),
        "budget": Section("When the sweep stops, besides num_samples: when one limit is reached it stops proposing "
                          "and stops its running trials (their checkpoints and rows kept); the reason is in the "
                          "summary, results.csv's stop_reason, best.json, budget.json and the report. A resume "
                          "continues the same budget.", {
            "time": Field("any", None, "Wall-clock limit over the sweep's whole run, counted across resumes: "
                          "seconds, or 90s, 30m, 2h; null: none.", nullable=True, check=_budget_time_check,
                          tunable=False),
            "resource_hours": Field("float", None, "Limit on the trials' summed resource-hours (seconds a trial "
                                    "runs x what it holds): GPU-hours when trials use GPUs (gpus_per_worker x "
                                    "num_workers), else CPU-hours (cpus_per_worker x num_workers); null: none.",
                                    nullable=True, gt=0, tunable=False),
            "plateau": Section("Stop when the best stops improving.", {
                "trials": Field("int", None, "Stop when the best of the first search.metric did not improve by "
                                "min_delta or more within the last this-many finished trials; null: off.",
                                nullable=True, ge=1, tunable=False),
                "min_delta": Field("float", 0.0, "Smallest improvement of the best that counts (0: any).", ge=0,
                                   tunable=False),
            }),
        }),
        "seed": Field("int", None, "Searcher seed; null: the top-level seed.", nullable=True, ge=0, tunable=False),
        "warm_start": Field("list", None, "Earlier experiments (directories or s3:// URIs) whose finished trials "
                            "the searcher is told before its first proposal, not trained again: their configs and "
                            "last values (trials a scheduler stopped: pruned, with their epochs' values). Trials "
                            "outside today's space are left out; the metric and mode must be this sweep's. Optuna "
                            "and hyperopt learn from them; random and grid say they ignore them.", nullable=True,
                            check=_warm_start_check, tunable=False),
        "enqueue": Field("list", None, "Configs trained first, as given, before the searcher proposes: a list of "
                         "{space key: value} (keys left out are sampled by the searcher). Counts toward "
                         "num_samples.", nullable=True, check=_enqueue_check, tunable=False),
    }),
    "scheduler": scheduler_section("Trial scheduler (early stopping across trials); time unit: epochs.", {
        "name": Field("str", "fifo", " | ".join(SCHEDULERS) + ".", choices=SCHEDULERS, tunable=False),
    }),
    "space": Section("Search space: dotted recipe key -> domain (see README).", open=True),
    "promote": _promote_section("What happens to the best trial when the sweep ends.", {
        "enabled": Field("bool", True, "Run promotion at the end of `raytune-opt run`.", tunable=False),
        "targets": Field("list", list(DEFAULT_TARGETS), "Artifacts to build: " + " | ".join(PROMOTION_TARGETS) +
                         ", run in that order. prune and distill (only when listed) compress the model first; the "
                         "last one accepted by its gate is what the later steps convert. Your own step, "
                         "'module:callable' taking the step context, runs after them (see 'Your own promotion step').",
                         check=_targets_check, tunable=False),
        "select": Field("dict", None, "Which trial to promote; null: the best by the first search.metric among "
                        "feasible trials. {metric: NAME, where: {KEY: {min, max}}}: the best by NAME among trials whose "
                        "values keep every bound of where (e.g. where: {latency_ms: {max: 2.0}}). The manifest records "
                        "the rule and why that trial.", nullable=True, check=_select_check, tunable=False),
        "latency_batch": Field("int", 1, "Batch size of every trial's latency_ms measure (median forward time on "
                               "the trial's own device, one thread on a CPU, after warm-up).", ge=1, tunable=False),
        "parity_atol": Field("float", 1e-4, "Largest allowed |ONNX - PyTorch| logit difference (a regression: "
                             "times its largest |output| when above 1).", gt=0, tunable=False),
        "ort_threads": Field("int", None, "Intra-op threads of ONNX Runtime and PyTorch when measuring latency "
                             "(recorded in the manifest); null: the machine's cores.", nullable=True, ge=1,
                             tunable=False),
    }),
    "tracking": Section("Where the sweep is also logged besides its own files (report.html is always written).", {
        "tensorboard": Field("bool", True, "TensorBoard event files per trial under EXPERIMENT/tensorboard/<trial>/: "
                             "every epoch's metrics and the trial's hyperparameters (hparams plugin).", tunable=False),
        "mlflow": Section("MLflow: a parent run for the sweep, a nested run per trial (needs the mlflow extra).", {
            "tracking_uri": Field("str", None, "MLflow tracking URI (http://HOST:PORT, sqlite:///FILE.db; "
                                  "file:///DIR only with MLFLOW_ALLOW_FILE_STORE=true: MLflow 3 refuses it otherwise); "
                                  "null: MLflow off.", nullable=True, check=_tracking_uri_check,
                                  tunable=False),
            "experiment": Field("str", None, "MLflow experiment name; null: the sweep's name.", nullable=True,
                                tunable=False),
        }),
        "wandb": Section("Weights & Biases: a run per trial grouped by sweep (config, every epoch's metrics, status), "
                         "the best trial tagged best, a sweep-level run with the leaderboard table (needs the wandb "
                         "extra). The API key comes from WANDB_API_KEY or 'wandb login', never from the spec.", {
            "project": Field("str", None, "W&B project; null: W&B off.", nullable=True, check=_wandb_project_check,
                             tunable=False),
            "entity": Field("str", None, "W&B entity (user or team); null: the API key's default entity.",
                            nullable=True, tunable=False),
            "group": Field("str", None, "W&B group of the sweep's runs; null: the sweep's name.", nullable=True,
                           tunable=False),
            "mode": Field("str", None, "online | offline (run files under EXPERIMENT/wandb/, no key, no network; "
                          "'wandb sync' them later) | disabled (nothing logged); null: $WANDB_MODE, else online.",
                          choices=WANDB_MODES, nullable=True, tunable=False),
        }),
    }),
    "storage": Section("Where results and checkpoints go.", {
        "path": Field("str", "./results", "Local directory, a directory mounted on every node, or "
                      "s3://bucket/prefix (several nodes need one of the last two).", check=_storage_path_check,
                      tunable=False),
        "endpoint_url": Field("str", None, "S3-compatible endpoint (e.g. http://127.0.0.1:9000); null: "
                              "$AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, else AWS.", check=_endpoint_check,
                              nullable=True, tunable=False),
    }),
})


def lookup(path: tuple) -> Field | Section | None:
    """The schema node at ``path`` (a tuple of keys), or None if there is none."""
    node: Field | Section = SPEC
    for key in path:
        if not isinstance(node, Section):
            return None
        if node.open:
            return Field("any", None, "passed through")
        if key not in node.fields:
            return None
        node = node.fields[key]
    return node


def iter_fields(section: Section = SPEC, prefix: tuple = ()):
    """Yield ``(path, Field)`` for every leaf, depth first, in declaration order."""
    for key, node in section.fields.items():
        if isinstance(node, Section):
            yield from iter_fields(node, prefix + (key,))
        else:
            yield prefix + (key,), node


def defaults(section: Section = SPEC) -> dict:
    """A fresh nested dict holding every default."""
    out: dict = {}
    for key, node in section.fields.items():
        if isinstance(node, Section):
            out[key] = {} if node.open else defaults(node)
        else:
            out[key] = list(node.default) if isinstance(node.default, list) else node.default
    return out


#: ``promote.<step>`` at its defaults, for each step registered with ``hash_neutral=True`` (a
#: section added after experiments were recorded): ``Spec.sha256`` leaves it out there
#: (:data:`raytune_opt.spec.validate.HASH_NEUTRAL` takes these), so those experiments still resume.
PROMOTE_HASH_NEUTRAL = {("promote", n): defaults(registry.PROMOTION_STEPS[n].meta["settings"])
                        for n in PROMOTION_TARGETS if registry.PROMOTION_STEPS[n].meta.get("hash_neutral")
                        and registry.PROMOTION_STEPS[n].meta.get("settings") is not None}
#: ``scheduler.<key>`` at its default, for each key only newer schedulers read (their entries
#: say ``hash_neutral``): :data:`raytune_opt.spec.validate.HASH_NEUTRAL` takes these too.
SCHEDULER_HASH_NEUTRAL = _scheduler_hash_neutral()


def reference_markdown() -> str:
    """The README's spec reference, generated from :data:`SPEC` so that it cannot drift."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(section: Section, prefix: str) -> None:
        for key, node in section.fields.items():
            path = f"{prefix}{key}"
            if isinstance(node, Section):
                rows.append(f"| `{path}` | section | | {node.doc} |")
                if not node.open:
                    walk(node, path + ".")
                continue
            typ = node.type + (" or null" if node.nullable else "")
            bounds = node.bounds_text()
            default = "null" if node.default is None else str(node.default).replace("'", "")
            meaning = node.doc + (f" ({bounds})" if bounds else "") + ("" if node.tunable else " Not tunable.")
            rows.append(f"| `{path}` | {typ} | `{default}` | {meaning.replace('|', '/')} |")

    walk(SPEC, "")
    return "\n".join(rows)
