"""The training loop: one function, read top to bottom, for every case.

:func:`train` runs one trial: local or one rank of a distributed group, fresh or resumed,
fp32/bf16/fp16, DDP or DeepSpeed ZeRO. Everything that differs between runners is behind
the :class:`~raytune_opt.recipe.session.Session`; everything that differs between
distributed strategies (wrapping, backward, optimizer step, precision, what a checkpoint
holds) is behind the :class:`~raytune_opt.strategies.Strategy`; everything that differs
between recipes is in the spec dict. Per epoch it reports (see :data:`METRIC_KEYS`)
through the session.

The hot path avoids host syncs: the loss is accumulated as a tensor, and the check for a
non-finite loss reads the device once per :data:`CHECK_EVERY` micro-batches, on every device
and world size (each read waits for the device, and with several ranks for a collective);
the micro-batch that diverged is still named exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from raytune_opt import objectives, registry
from raytune_opt.recipe import footprint
from raytune_opt.recipe.augment import Augmenter
from raytune_opt.recipe.bundle import collate, make_loader, train_labels
from raytune_opt.recipe.context import TrialContext, run_loop
from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.recipe.losses import build_loss
from raytune_opt.recipe.models import output_problem
from raytune_opt.recipe.optim import build_optimizer, build_scheduler, hyperparameters, reapply_hyperparameters
from raytune_opt.recipe.session import Session
from raytune_opt.spec.view import SectionView, view
from raytune_opt.strategies import build_strategy
from raytune_opt.timeline import mark

__all__ = ["train", "METRIC_KEYS", "REGRESSION_KEYS", "classification_metrics", "regression_metrics"]

# Micro-batches between non-finite checks: even on one CPU process, reading the loss every
# step cut the digits CNN's throughput from 0.98x to 0.96x of a plain loop
# (benchmarks/loop_throughput.py).
CHECK_EVERY = 16
# Reported after every epoch, plus best_<search.metric> and stop_reason (REGRESSION_KEYS for
# a regression data set).
METRIC_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
               "grad_norm", "lr", "samples_per_s", "epoch_s", *objectives.MEASURES)
REGRESSION_KEYS = ("epoch", "train_loss", "val_loss", "val_rmse", "val_mae", "val_r2", "grad_norm", "lr",
                   "samples_per_s", "epoch_s", *objectives.MEASURES)


def train(cfg: dict, session: Session, *, spec_sha256: str = "", resume_from: str | None = None) -> dict:
    """Train one trial and report every epoch through ``session``.

    Args:
        cfg: the resolved spec (``seed``, ``data``, ``model``, ``train``, ``search``); keys
            left out take the schema's defaults.
        session: the runner: device, rank, model/loader wrapping, reporting, checkpoints.
            The distributed strategy is ``train.strategy`` (ddp: the session's wrapping).
        spec_sha256: hash of the sweep's spec, stored in checkpoints.
        resume_from: a checkpoint file or directory to continue from (model, optimizer,
            schedule, epoch count, early-stopping state).

    With several ranks, each trains and validates on the shard its session's loaders give
    it, and sums, confusion matrix and the slowest rank's time are all-reduced, so every
    rank reports the same numbers (a DistributedSampler pads the validation shards with a
    few repeated samples to equal length; they count like the others).

    Returns:
        The last reported metrics; ``stop_reason`` is ``"completed"``, ``"early_stopping"``
        or ``"diverged: non-finite loss at epoch E step S"`` (S counts micro-batches from 1).
        Divergence ends the run without an exception.

    Raises:
        DataError: the data set cannot be read.
        CheckpointError: ``resume_from`` is not a readable checkpoint.
        RecipeConfigError: a setting that cannot work here (fp16 on CPU, class weights of
            the wrong length...).
        MissingDependencyError: train.strategy is deepspeed and DeepSpeed is not installed.
    """
    cfg = _with_defaults(cfg)
    fn, label = loop_callable(view((), cfg).train.loop)
    strategy = build_strategy(session, cfg["train"])
    try:
        return run_loop(fn, label, cfg, session, strategy, spec_sha256=spec_sha256, resume_from=resume_from)
    finally:
        strategy.close()


def loop_callable(name: str) -> tuple[Callable, str]:
    """The loop ``train.loop`` names (a registered name or ``module:callable``) and its label.

    Raises:
        RecipeConfigError: it does not import or is not callable.
    """
    target = registry.LOOPS.target_of(name)
    try:
        return registry.import_target(target), target
    except registry.ImportTargetError as exc:
        raise RecipeConfigError(f"train.loop: {exc}; {exc.fix}") from None


def builtin_loop(config: dict, ctx: TrialContext) -> None:
    """The built-in recipe, registered as the loop ``builtin``: the spec's optimizer, schedule,
    loss, augmentation, precision, accumulation, clipping, early stopping and metrics."""
    run = _setup(config, ctx)
    if run.infeasible:  # breaks a constraint known before training: never trained
        ctx.send(_nan_metrics(run, ctx.start_epoch - 1, run.infeasible, 0.0))  # epoch 0: none trained
        return
    for epoch in range(ctx.start_epoch, run.epochs + 1):
        epoch_start = time.perf_counter()
        _reseed(run, epoch)
        sums, diverged_at = _train_epoch(run)
        train_s = time.perf_counter() - epoch_start
        if diverged_at is not None:
            ctx.send(_diverged_metrics(run, epoch, diverged_at, epoch_start))
            return
        metrics = _validate(run, epoch, sums, train_s)
        _measure(run)
        metrics.update(run.measures)
        _early_stopping(run, metrics, epoch)
        late = objectives.violations(run.measures, run.constraints, only=("latency_ms",))
        if late and metrics["stop_reason"] is None:
            metrics["stop_reason"] = f"{objectives.INFEASIBLE}: {'; '.join(late)}"
        checkpoint_dir, shards = _checkpoint(run, metrics, epoch, epoch_start)
        metrics["epoch_s"] = time.perf_counter() - epoch_start
        ctx.send(metrics, checkpoint_dir, shards)
        mark("reported", rank=ctx.rank, epoch=epoch)
        if metrics["stop_reason"] is not None:
            break


@dataclass
class _Run:
    """One trial's parts and the state the epochs carry forward (bad epochs; the context keeps the best value)."""

    cfg: dict
    ctx: TrialContext
    model: torch.nn.Module  # as the strategy wrapped it
    loss_fn: Any
    augment: Augmenter
    train_loader: DataLoader
    val_loader: DataLoader
    schedule: Any
    autocast: Any
    batches_per_epoch: int
    epochs: int
    bad_epochs: int = 0
    confusion: Any = None  # the last validation's (true x predicted) counts
    stepped: bool = False  # an optimizer step has been taken (the timeline's first_step mark)
    shape_checked: bool = False  # the model's output shape was checked on a first batch
    measures: dict = field(default_factory=dict)  # params, macs, model_bytes, latency_ms (footprint.py)
    infeasible: str = ""  # the static constraints the model breaks, when it breaks one
    plain: Any = None  # the model as built, before the strategy wrapped it (what the measures measure)

    @property
    def settings(self) -> SectionView:
        """The trial's spec as a typed read-only view."""
        return view((), self.cfg)

    @property
    def constraints(self) -> dict:
        return self.settings.search.constraints or {}

    @property
    def session(self) -> Session:
        return self.ctx.session

    @property
    def strategy(self):
        return self.ctx.strategy

    @property
    def data(self):
        return self.ctx.data

    @property
    def tcfg(self) -> SectionView:
        return self.settings.train

    @property
    def metric(self) -> str:
        return objectives.primary(self.settings.search)[0]

    @property
    def mode(self) -> str:
        return objectives.primary(self.settings.search)[1]

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


def _setup(cfg: dict, ctx: TrialContext) -> _Run:
    """Data, model, loss, augmentation, loaders, optimizer and schedule; restored when resuming."""
    spec = view((), cfg)
    tcfg, seed, device, session = spec.train, int(spec.seed), ctx.device, ctx.session
    mark("loop_start", rank=session.rank)
    data = ctx.data
    mark("data_loaded", rank=session.rank)
    model = ctx.build_model()
    mark("model_built", rank=session.rank)
    plain, measures, infeasible = model, {}, ""
    constraints = spec.search.constraints or {}
    static = [k for k in constraints if k in objectives.STATIC_MEASURES]
    if static:  # known before training: a model that breaks one is not trained
        measures = footprint.static_measures(model, _example(data, model))
        infeasible = "; ".join(objectives.violations(measures, constraints, only=static))
        if infeasible:
            infeasible = f"{objectives.INFEASIBLE}: {infeasible}"
    # Only balanced class weights read the labels (a user data set may have to be iterated for them).
    labels = train_labels(data.train) if tcfg.loss.class_weights == "balanced" else None
    loss_fn = build_loss(tcfg.loss, labels, data.num_classes, data.task).to(device)
    _check_task(cfg, data.task)
    augment = Augmenter(tcfg.augment, data.num_classes, data.in_channels or 1, seed=seed, device=device)
    workers = int(spec.data.loader_workers)
    train_loader = session.prepare_loader(_loader(data, "train", tcfg.batch_size, True, workers, device))
    val_loader = session.prepare_loader(_loader(data, "val", tcfg.batch_size, False, workers, device))
    limit = tcfg.limit_batches
    batches_per_epoch = len(train_loader) if limit is None else min(len(train_loader), int(limit))
    steps_per_epoch = math.ceil(batches_per_epoch / int(tcfg.grad_accum_steps))
    optimizer = build_optimizer(model.parameters(), tcfg.optimizer.to_dict())
    configured = hyperparameters(optimizer)  # before the schedule scales the lr
    schedule = build_scheduler(optimizer, tcfg.lr_schedule.to_dict(), steps_per_epoch, int(tcfg.epochs))
    # Wraps the model (DDP / a DeepSpeed engine) and restores its weights and optimizer state.
    model = ctx.prepare_model(model, optimizer)
    mark("setup_done", rank=session.rank)
    run = _Run(cfg=cfg, ctx=ctx, model=model, loss_fn=loss_fn, augment=augment, train_loader=train_loader,
               val_loader=val_loader, schedule=schedule, autocast=ctx.strategy.autocast(),
               batches_per_epoch=batches_per_epoch, epochs=int(tcfg.epochs), measures=measures,
               infeasible=infeasible, plain=plain)
    if ctx.resumed is not None:
        if ctx.resumed.get("scheduler_state") is not None:
            schedule.load_state_dict(ctx.resumed["scheduler_state"])
        run.bad_epochs = int(ctx.loop_state.get("bad_epochs", 0))
        # The optimizer and schedule states carry the lr, momentum... they were saved with. A
        # PBT trial that adopted another trial's checkpoint trains on with its own, perturbed
        # values (for a plain resume they are the same).
        reapply_hyperparameters(optimizer, schedule, configured)
    return run


def _reseed(run: _Run, epoch: int) -> None:
    """Per-epoch seeds (dropout, augmentation, shuffling): a resumed run draws what a straight run would."""
    run.augment.reseed(run.ctx.begin_epoch(epoch, run.train_loader))


def _train_epoch(run: _Run) -> tuple[dict, int | None]:
    """One epoch of micro-batches: the on-device sums, and the micro-batch (from 1) that diverged, if any."""
    device, world_size, strategy = run.session.device, run.session.world_size, run.strategy
    accum, n = int(run.tcfg.grad_accum_steps), run.batches_per_epoch
    run.model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)  # sum of per-sample losses
    norm_sum = torch.zeros((), device=device, dtype=torch.float64)
    steps, samples = 0, 0
    recent: list[torch.Tensor] = []  # losses since the last check, to name the step that diverged
    for i, (x, y) in enumerate(_batches(run.train_loader)):
        if i >= n:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if run.augment.active:
            x, y = run.augment(x, y)
        boundary = (i + 1) % accum == 0 or i + 1 == n
        with strategy.sync_context(boundary):  # DDP: no gradient all-reduce inside a group
            with run.autocast():
                out = run.model(x)
                if not run.shape_checked:  # shapes are host metadata: no device sync
                    _check_output(run, x, out)
                loss = run.loss_fn(out, y)
            strategy.backward(loss)
        loss = loss.detach()
        loss_sum.add_(loss, alpha=x.shape[0])
        recent.append(loss)
        samples += x.shape[0]
        if boundary:
            norm_sum += strategy.step()  # clip, step, zero the gradients; the norm before clipping
            steps += 1
            if steps == 1 and not run.stepped:
                run.stepped = True
                mark("first_step", rank=run.session.rank)
            run.schedule.step_batch()
        if len(recent) >= CHECK_EVERY or i + 1 == n:
            # A non-finite loss makes the running sum non-finite: one read checks them all.
            if _any_nonfinite(loss_sum, world_size):
                return {}, i + 2 - len(recent) + _first_nonfinite(recent)
            recent.clear()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"loss": loss_sum, "samples": samples, "norm": norm_sum, "steps": steps}, None


def _check_output(run: _Run, x: torch.Tensor, out: Any) -> None:
    problem = output_problem(out, x, run.data.num_classes)
    if problem:
        raise RecipeConfigError(f"model {run.ctx.model_spec.get('name')}: {problem}")
    run.shape_checked = True


def _check_task(cfg: dict, task: str) -> None:
    """The sweep's metric and the augmentation must suit the data set's task."""
    from raytune_opt.spec.schema import METRIC_TASK

    spec = view((), cfg)
    for metric, _ in objectives.objectives(spec.search):
        if METRIC_TASK.get(metric, task) != task:
            fit = ", ".join(m for m, t in METRIC_TASK.items() if t == task)
            raise RecipeConfigError(f"search.metric {metric} is a {METRIC_TASK[metric]} metric but the data set holds "
                                    f"a {task} task; use {fit}, or val_loss")
    augment = spec.train.augment
    if task == "regression" and (augment.mixup_alpha or augment.cutmix_alpha):
        raise RecipeConfigError("train.augment: Mixup and CutMix mix class labels, and the data set holds a "
                                "regression task; set mixup_alpha and cutmix_alpha to 0")


def _diverged_metrics(run: _Run, epoch: int, step: int, epoch_start: float) -> dict:
    return _nan_metrics(run, epoch, f"diverged: non-finite loss at epoch {epoch} step {step}",
                        time.perf_counter() - epoch_start)


def _nan_metrics(run: _Run, epoch: int, reason: str, epoch_s: float) -> dict:
    """A report without scores (a diverged or an untrained trial): every metric key (Tune's
    searchers and schedulers expect them) as NaN, its measures so far, and why it stopped."""
    nan = float("nan")
    keys = REGRESSION_KEYS if run.data.task == "regression" else METRIC_KEYS
    return {**{k: nan for k in keys}, **run.measures, "epoch": epoch, "lr": run.schedule.lr, "epoch_s": epoch_s,
            f"best_{run.metric}": run.ctx.best, "stop_reason": reason}


def _example(data, model: torch.nn.Module) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return data.input_example[:1].to(device)


def _measure(run: _Run) -> None:
    """The deployment measures, once per trial (after the first epoch: they depend on the
    architecture only, and by then the first optimizer step has paid PyTorch's lazy set-up,
    which FLOP counting would otherwise pay, ~1 s). Every rank measures (a ZeRO-3 model
    gathers its weights for the forward passes collectively); rank 0's are reported."""
    if "latency_ms" in run.measures:
        return
    example = _example(run.data, run.plain)
    if not run.measures:
        run.measures = footprint.static_measures(run.plain, example)
    batch = int(run.settings.promote.latency_batch)
    threads = 1 if example.device.type == "cpu" else None
    run.measures["latency_ms"] = footprint.forward_latency_ms(run.plain, example, batch=batch, threads=threads)


def _validate(run: _Run, epoch: int, sums: dict, train_s: float) -> dict:
    """Validate, and average the epoch's numbers over ranks (every rank gets the same)."""
    device, world_size = run.session.device, run.session.world_size
    run.strategy.before_validation()
    regression = run.data.task == "regression"
    if regression:
        val_loss_sum, scores = _evaluate_regression(run.model, run.val_loader, run.autocast, device)
    else:
        val_loss_sum, scores = _evaluate(run.model, run.val_loader, run.autocast, device, run.data.num_classes)
    f64 = {"dtype": torch.float64, "device": device}
    totals = torch.stack([sums["loss"], torch.tensor(float(sums["samples"]), **f64), sums["norm"],
                          torch.tensor(sums["steps"] - run.strategy.pop_skipped_steps(), **f64),
                          val_loss_sum.double()])
    times = torch.tensor([train_s], **f64)
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
        dist.all_reduce(scores)  # the confusion matrix, or the regression's sums
        dist.all_reduce(times, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
    loss_total, sample_total, norm_total, norm_n, val_loss_total = totals.tolist()
    val_scores = regression_metrics(scores) if regression else classification_metrics(scores)
    run.confusion = None if regression else scores
    metrics = {
        "epoch": epoch,
        "train_loss": loss_total / max(sample_total, 1),
        "val_loss": val_loss_total / max(val_scores.pop("support"), 1),
        **val_scores,
        "grad_norm": norm_total / norm_n if norm_n else float("nan"),
        "lr": run.schedule.lr,
        "samples_per_s": sample_total / max(times.item(), 1e-9),
    }
    run.schedule.step_epoch(metrics["val_loss"])
    return metrics


def _early_stopping(run: _Run, metrics: dict, epoch: int) -> None:
    """Track the best value of the sweep's metric; set ``best_<metric>`` and ``stop_reason``."""
    stopping = run.tcfg.early_stopping
    patience, min_delta = stopping.patience, float(stopping.min_delta)
    best_before = run.ctx.best
    metrics["is_best"] = run.ctx.track(metrics)  # sets best_<metric>
    value = metrics[run.metric]
    margin = min_delta if run.mode == "max" else -min_delta
    improved = math.isfinite(value) and (best_before is None or run.better(value, best_before + margin))
    run.bad_epochs = 0 if improved else run.bad_epochs + 1
    stop_reason = None
    if patience is not None and run.bad_epochs >= patience and epoch < run.epochs:
        stop_reason = "early_stopping"
    elif epoch == run.epochs:
        stop_reason = "completed"
    metrics["stop_reason"] = stop_reason


def _checkpoint(run: _Run, metrics: dict, epoch: int, epoch_start: float) -> tuple[str | None, Sequence[str]]:
    """Write the epoch's checkpoint (if on); the directory to report and this rank's shard files."""
    is_best = metrics.pop("is_best")
    metrics["epoch_s"] = time.perf_counter() - epoch_start  # provisional, for the file
    # true x predicted counts on the validation set: the report's per-class view
    confusion = run.confusion.round().long().tolist() if run.confusion is not None else None
    return run.ctx.save(metrics, epoch, is_best, scheduler_state=run.schedule.state_dict(),
                        loop_state={"bad_epochs": run.bad_epochs}, extra={"val_confusion": confusion})


# --- the parts the loop calls ----------------------------------------------------------------

def _with_defaults(cfg: dict) -> dict:
    """``cfg`` with every missing data/model/train/search key filled from the schema."""
    from raytune_opt.spec import schema

    def merge(default: Any, given: Any) -> Any:
        if isinstance(default, dict) and isinstance(given, dict):
            out = dict(default)
            for key, value in given.items():
                out[key] = merge(default.get(key), value) if key in default else value
            return out
        return given

    return merge(schema.defaults(), cfg)


def _any_nonfinite(total: torch.Tensor, world_size: int) -> bool:
    """Whether ``total`` is non-finite on any rank (all ranks get the same answer)."""
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        # Every rank must stop at the same step, or the others wait forever in all_reduce.
        bad = (~torch.isfinite(total)).to(torch.float32)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad > 0)
    return not math.isfinite(total.item())


def _first_nonfinite(losses: list[torch.Tensor]) -> int:
    """Index of the first non-finite loss in ``losses`` (0 if only another rank's was)."""
    bad = (~torch.isfinite(torch.stack(losses))).nonzero()
    return int(bad[0, 0]) if len(bad) else 0


def _loader(data, split: str, batch_size: int, shuffle: bool, workers: int, device: torch.device) -> DataLoader:
    generator = torch.Generator() if shuffle else None
    return make_loader(data, split, batch_size, shuffle=shuffle, generator=generator, num_workers=workers,
                  persistent_workers=workers > 0, pin_memory=device.type == "cuda")


def _batches(loader: DataLoader):
    """The loader's batches. In-process loaders of in-memory tensors are sliced directly:
    the DataLoader's iterator turns every batch's indices into a Python list and back
    (~50 us a batch, several % of a small model's step). The loader's (possibly
    distributed) sampler still decides which samples come in what order."""
    direct = (loader.num_workers == 0 and not loader.pin_memory and loader.batch_size is not None
              and isinstance(loader.dataset, TensorDataset) and len(loader.dataset.tensors) == 2
              and loader.collate_fn is collate)
    if not direct:
        yield from loader
        return
    (x, y), size = loader.dataset.tensors, loader.batch_size
    order = torch.as_tensor(list(loader.sampler), dtype=torch.long)  # one pass over the sampler per epoch
    stop = len(order) - len(order) % size if loader.drop_last else len(order)
    for start in range(0, stop, size):
        index = order[start:start + size]
        yield x[index], y[index]


@torch.no_grad()
def _evaluate(model, loader, autocast, device: torch.device, num_classes: int):
    """Summed cross-entropy and the (true x predicted) confusion matrix over ``loader``.

    The validation loss is plain cross-entropy whatever the training loss, so it compares
    across trials that tune the loss.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    return loss_sum, confusion.view(num_classes, num_classes)


@torch.no_grad()
def _evaluate_regression(model, loader, autocast, device: torch.device):
    """Summed squared error (the validation loss: plain MSE whatever the training loss) and
    the sums :func:`regression_metrics` needs, over ``loader``."""
    model.eval()
    sums = torch.zeros(5, device=device, dtype=torch.float64)  # n, sum err^2, sum |err|, sum y, sum y^2
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        pred, y = out.double().reshape(y.shape), y.double()
        err = pred - y
        sums += torch.stack([torch.tensor(float(len(y)), device=device, dtype=torch.float64), (err * err).sum(),
                             err.abs().sum(), y.sum(), (y * y).sum()])
    return sums[1].clone(), sums


def split_metrics(model: torch.nn.Module, data, split: str = "test", prefix: str = "test_") -> dict:
    """The metrics trials report on validation, measured on ``data``'s ``split`` instead, with
    ``prefix`` for ``val_``: accuracy, precision, recall, F1 and loss of a classification; RMSE,
    MAE, R² and loss of a regression. Plain fp32 on the CPU, batch by batch, as validation
    computes them (the loss: cross-entropy / MSE whatever the training loss).

    Returns:
        ``{prefix + name: value}``, and ``samples`` (the split's size).
    """
    from contextlib import nullcontext

    loader = make_loader(data, split, 256, shuffle=False)
    device = torch.device("cpu")
    model = model.to(device).float()
    if data.task == "regression":
        loss_sum, sums = _evaluate_regression(model, loader, nullcontext, device)
        scores = regression_metrics(sums)
    else:
        loss_sum, confusion = _evaluate(model, loader, nullcontext, device, data.num_classes)
        scores = classification_metrics(confusion)
    n = scores.pop("support")
    out = {prefix + k.removeprefix("val_"): float(v) for k, v in scores.items()}
    out[prefix + "loss"] = float(loss_sum) / max(n, 1)
    out["samples"] = int(n)
    return out


def regression_metrics(sums: torch.Tensor) -> dict:
    """RMSE, MAE and R² (as scikit-learn's ``r2_score``: 1 - SSE / SST) from
    (n, sum of squared errors, sum of absolute errors, sum of targets, sum of squared targets).

    Returns:
        ``val_rmse``, ``val_mae``, ``val_r2`` and ``support`` (the number of samples).
    """
    n, sse, sae, sy, syy = sums.tolist()
    sst = syy - sy * sy / n if n else 0.0
    return {"val_rmse": math.sqrt(sse / n) if n else float("nan"), "val_mae": sae / n if n else float("nan"),
            "val_r2": 1.0 - sse / sst if sst > 0 else float("nan"), "support": n}


def classification_metrics(confusion: torch.Tensor) -> dict:
    """Accuracy and macro precision/recall/F1 from a (true x predicted) confusion matrix.

    As scikit-learn's ``average="macro"`` with ``zero_division=0``: the mean runs over the
    classes that occur in the labels or the predictions.

    Returns:
        ``val_accuracy``, ``val_precision``, ``val_recall``, ``val_f1`` and ``support``
        (the number of samples).
    """
    cm = confusion.double()
    tp, true_n, pred_n = cm.diagonal(), cm.sum(1), cm.sum(0)
    precision = torch.where(pred_n > 0, tp / pred_n.clamp_min(1), 0.0)
    recall = torch.where(true_n > 0, tp / true_n.clamp_min(1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300), 0.0)
    present = (true_n + pred_n) > 0
    total = cm.sum()
    return {
        "val_accuracy": (tp.sum() / total).item() if total > 0 else float("nan"),
        "val_precision": precision[present].mean().item() if present.any() else float("nan"),
        "val_recall": recall[present].mean().item() if present.any() else float("nan"),
        "val_f1": f1[present].mean().item() if present.any() else float("nan"),
        "support": total.item(),
    }
