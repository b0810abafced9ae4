"""The training loop: one function, read top to bottom, for every case.

:func:`train` runs one trial: local or one rank of a distributed group, fresh or resumed,
fp32/bf16/fp16, DDP or DeepSpeed ZeRO. Everything that differs between runners is behind
the :class:`~raytune_opt.recipe.session.Session`; everything that differs between
distributed strategies (wrapping, backward, optimizer step, precision, what a checkpoint
holds) is behind the :class:`~raytune_opt.strategies.Strategy`; everything that differs
between recipes is in the spec dict. Per epoch it reports (see :data:`METRIC_KEYS`)
through the session.

The hot path avoids host syncs: the loss is accumulated as a tensor, and the check for a
non-finite loss reads the device once per :func:`_check_every` micro-batches (every batch
on a single CPU process, where reading a value costs nothing).
"""

from __future__ import annotations

import copy
import math
import random
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from raytune_opt.recipe.augment import Augmenter
from raytune_opt.recipe.checkpoint import load_checkpoint, make_checkpoint, write_checkpoints
from raytune_opt.recipe.data import load_data
from raytune_opt.recipe.losses import build_loss
from raytune_opt.recipe.models import build_model, model_spec
from raytune_opt.recipe.optim import build_optimizer, build_scheduler, hyperparameters, reapply_hyperparameters
from raytune_opt.recipe.session import Session
from raytune_opt.strategies import build_strategy

__all__ = ["train", "METRIC_KEYS", "classification_metrics"]

# Reported after every epoch, plus best_<search.metric> and stop_reason.
METRIC_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1",
               "grad_norm", "lr", "samples_per_s", "epoch_s")


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
    strategy = build_strategy(session, cfg["train"])
    try:
        return _train(cfg, session, strategy, spec_sha256, resume_from)
    finally:
        strategy.close()


def _train(cfg: dict, session: Session, strategy, spec_sha256: str, resume_from: str | None) -> dict:
    tcfg, seed = cfg["train"], int(cfg["seed"])
    metric, mode = cfg["search"]["metric"], cfg["search"]["mode"]
    device, rank, world_size = session.device, session.rank, session.world_size
    if session.num_threads:
        torch.set_num_threads(session.num_threads)
    autocast = strategy.autocast()
    accum = int(tcfg["grad_accum_steps"])
    epochs, limit = int(tcfg["epochs"]), tcfg["limit_batches"]

    # Data, model, loss, augmentation. The model is initialised from the same seed on
    # every rank (DDP would broadcast rank 0's weights anyway).
    _seed_all(seed)
    data = load_data(cfg["data"], seed)
    spec = model_spec(cfg["model"], data.in_channels, data.num_classes, data.image_size, data.spatial_dims)
    model = build_model(cfg["model"], data.in_channels, data.num_classes, data.image_size, data.spatial_dims).to(device)
    loss_fn = build_loss(tcfg["loss"], data.y_train, data.num_classes).to(device)
    augment = Augmenter(tcfg["augment"], data.num_classes, data.in_channels, seed=seed, device=device)
    workers = int(cfg["data"]["loader_workers"])
    train_loader = session.prepare_loader(_loader(data.x_train, data.y_train, tcfg["batch_size"], True, workers,
                                                  device))
    val_loader = session.prepare_loader(_loader(data.x_val, data.y_val, tcfg["batch_size"], False, workers, device))
    batches_per_epoch = len(train_loader) if limit is None else min(len(train_loader), int(limit))
    steps_per_epoch = math.ceil(batches_per_epoch / accum)

    optimizer = build_optimizer(model.parameters(), tcfg["optimizer"])
    configured = hyperparameters(optimizer)  # before the schedule scales the lr
    schedule = build_scheduler(optimizer, tcfg["lr_schedule"], steps_per_epoch, epochs)

    # Early stopping and the best checkpoint both follow the sweep's metric.
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    patience, min_delta = tcfg["early_stopping"]["patience"], float(tcfg["early_stopping"]["min_delta"])
    best, bad_epochs, start_epoch, last_metrics = None, 0, 1, {}
    ckpt = load_checkpoint(resume_from, map_location=device) if resume_from is not None else None
    # Wraps the model (DDP / a DeepSpeed engine) and restores its weights and optimizer state.
    model = strategy.setup(model, optimizer, resume=ckpt, resume_path=resume_from)
    if ckpt is not None:
        if ckpt.get("scheduler_state") is not None:
            schedule.load_state_dict(ckpt["scheduler_state"])
        start_epoch = int(ckpt["epoch"]) + 1
        loop_state = ckpt.get("loop_state") or {}
        best, bad_epochs = loop_state.get("best"), int(loop_state.get("bad_epochs", 0))
        last_metrics = dict(ckpt.get("metrics") or {})
        # The optimizer and schedule states carry the lr, momentum... they were saved with. A
        # PBT trial that adopted another trial's checkpoint trains on with its own, perturbed
        # values (for a plain resume they are the same).
        reapply_hyperparameters(optimizer, schedule, configured)
    check_every = _check_every(device, world_size)
    recipe = {key: copy.deepcopy(cfg[key]) for key in ("data", "model", "train")}

    for epoch in range(start_epoch, epochs + 1):
        epoch_start = time.perf_counter()
        epoch_seed = _epoch_seed(seed, epoch, rank)
        torch.manual_seed(epoch_seed)  # dropout etc.: a resumed run draws what a straight run would
        augment.reseed(epoch_seed)
        _set_loader_epoch(train_loader, epoch, epoch_seed)

        # ---- train ---------------------------------------------------------------------
        model.train()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)  # sum of per-sample losses
        norm_sum = torch.zeros((), device=device, dtype=torch.float64)
        steps, samples, diverged_at = 0, 0, None
        recent: list[torch.Tensor] = []  # losses since the last check, to name the step that diverged
        for i, (x, y) in enumerate(_batches(train_loader)):
            if i >= batches_per_epoch:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if augment.active:
                x, y = augment(x, y)
            boundary = (i + 1) % accum == 0 or i + 1 == batches_per_epoch
            with strategy.sync_context(boundary):  # DDP: no gradient all-reduce inside a group
                with autocast():
                    loss = loss_fn(model(x), y)
                strategy.backward(loss)
            loss = loss.detach()
            loss_sum.add_(loss, alpha=x.shape[0])
            recent.append(loss)
            samples += x.shape[0]
            if boundary:
                norm_sum += strategy.step()  # clip, step, zero the gradients; the norm before clipping
                steps += 1
                schedule.step_batch()
            if len(recent) >= check_every or i + 1 == batches_per_epoch:
                # A non-finite loss makes the running sum non-finite: one read checks them all.
                if _any_nonfinite(loss_sum, world_size):
                    diverged_at = i + 2 - len(recent) + _first_nonfinite(recent)
                    break
                recent.clear()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_s = time.perf_counter() - epoch_start

        if diverged_at is not None:
            nan = float("nan")
            metrics = {"epoch": epoch, "train_loss": nan, "val_loss": nan, "val_accuracy": nan,
                       "val_precision": nan, "val_recall": nan, "val_f1": nan, "grad_norm": nan,
                       "lr": schedule.lr, "samples_per_s": nan, "epoch_s": time.perf_counter() - epoch_start,
                       f"best_{metric}": best,
                       "stop_reason": f"diverged: non-finite loss at epoch {epoch} step {diverged_at}"}
            session.report(metrics, None)
            return metrics

        # ---- validate ------------------------------------------------------------------
        strategy.before_validation()
        val_loss_sum, confusion = _evaluate(model, val_loader, autocast, device, data.num_classes)

        # ---- metrics, averaged over ranks ----------------------------------------------
        totals = torch.stack([loss_sum, torch.tensor(float(samples), dtype=torch.float64, device=device),
                              norm_sum, torch.tensor(steps - strategy.pop_skipped_steps(), dtype=torch.float64,
                                                     device=device), val_loss_sum.double()])
        times = torch.tensor([train_s], dtype=torch.float64, device=device)
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
            dist.all_reduce(confusion)
            dist.all_reduce(times, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
        loss_total, sample_total, norm_total, norm_n, val_loss_total = totals.tolist()
        val_scores = classification_metrics(confusion)
        metrics = {
            "epoch": epoch,
            "train_loss": loss_total / max(sample_total, 1),
            "val_loss": val_loss_total / max(val_scores.pop("support"), 1),
            **val_scores,
            "grad_norm": norm_total / norm_n if norm_n else float("nan"),
            "lr": schedule.lr,
            "samples_per_s": sample_total / max(times.item(), 1e-9),
        }
        schedule.step_epoch(metrics["val_loss"])

        # ---- early stopping, checkpoint, report ----------------------------------------
        value = metrics[metric]
        is_best = math.isfinite(value) and (best is None or better(value, best))
        improved = math.isfinite(value) and (best is None or better(value, best + (min_delta if mode == "max"
                                                                                   else -min_delta)))
        bad_epochs = 0 if improved else bad_epochs + 1
        if is_best:
            best = value
        metrics[f"best_{metric}"] = best
        stop_reason = None
        if patience is not None and bad_epochs >= patience and epoch < epochs:
            stop_reason = "early_stopping"
        elif epoch == epochs:
            stop_reason = "completed"
        metrics["stop_reason"] = stop_reason
        checkpoint_dir, shards = None, ()
        if tcfg["checkpoint"]:
            metrics["epoch_s"] = time.perf_counter() - epoch_start  # provisional, for the file
            root = session.checkpoint_root()
            # Shards first (every rank; DeepSpeed only), then the consolidated checkpoint that
            # names them: a crash in between leaves last.pt pointing at complete shards.
            shards = strategy.save_shards(root, epoch)
            model_state = strategy.model_state_dict()  # full fp32 weights on rank zero; a collective
            if session.is_rank_zero:
                ckpt = make_checkpoint(
                    model_spec=spec, model_state=model_state, optimizer_state=strategy.optimizer_state_dict(),
                    scheduler_state=schedule.state_dict(), epoch=epoch, metrics=metrics, recipe=recipe,
                    spec_sha256=spec_sha256,
                    extra={"loop_state": {"best": best, "bad_epochs": bad_epochs}, **strategy.checkpoint_extra(epoch)})
                write_checkpoints(ckpt, root, is_best=is_best)
            checkpoint_dir = str(root) if session.is_rank_zero or shards else None
        metrics["epoch_s"] = time.perf_counter() - epoch_start
        session.report(metrics, checkpoint_dir, shards)
        last_metrics = metrics
        if stop_reason is not None:
            break
    if start_epoch > epochs:  # resumed from a finished run: nothing left to train
        # Report the finished run's last metrics once more so that a restarted trial (a resumed
        # sweep) still ends with a result and its checkpoint.
        last_metrics["stop_reason"] = "completed"
        has_files = tcfg["checkpoint"] and session.is_rank_zero
        session.report(dict(last_metrics), session.checkpoint_root() if has_files else None,
                       _last_shards(session, ckpt) if tcfg["checkpoint"] else ())
    return last_metrics


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


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Distinct, reproducible streams per (seed, epoch, rank), independent of resuming.
    return (seed * 1_000_003 + epoch * 10_007 + rank) % 2**63


def _check_every(device: torch.device, world_size: int) -> int:
    """Micro-batches between non-finite checks. Each read waits for the device (and, with
    several ranks, for a collective); even on one CPU process reading every step cut the
    digits CNN's throughput from 0.98x to 0.96x of a plain loop (benchmarks/loop_throughput.py).
    The diverging step is still named exactly (``recent``)."""
    return 16


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


class _TensorPairs(Dataset):
    """Images and labels in memory, fetched a whole batch at a time (no per-sample loop)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices)
        return self.x[index], self.y[index]


def _collate(batch):
    # __getitems__ returns a finished batch; a loader rebuilt without it passes samples.
    return batch if isinstance(batch, tuple) else default_collate(batch)


def _loader(x, y, batch_size: int, shuffle: bool, workers: int, device: torch.device) -> DataLoader:
    generator = torch.Generator() if shuffle else None
    return DataLoader(_TensorPairs(x, y), batch_size=int(batch_size), shuffle=shuffle, generator=generator,
                      collate_fn=_collate, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda")


def _batches(loader: DataLoader):
    """The loader's batches. In-process loaders of in-memory tensors are sliced directly:
    the DataLoader's iterator turns every batch's indices into a Python list and back
    (~50 us a batch, several % of a small model's step). The loader's (possibly
    distributed) sampler still decides which samples come in what order."""
    direct = (loader.num_workers == 0 and not loader.pin_memory and loader.batch_size is not None
              and isinstance(loader.dataset, _TensorPairs) and loader.collate_fn is _collate)
    if not direct:
        yield from loader
        return
    dataset, size = loader.dataset, loader.batch_size
    order = torch.as_tensor(list(loader.sampler), dtype=torch.long)  # one pass over the sampler per epoch
    stop = len(order) - len(order) % size if loader.drop_last else len(order)
    for start in range(0, stop, size):
        index = order[start:start + size]
        yield dataset.x[index], dataset.y[index]


def _set_loader_epoch(loader: DataLoader, epoch: int, epoch_seed: int) -> None:
    """Make this epoch's data order a function of the seed and the epoch only."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):  # DistributedSampler
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(epoch_seed)


def _last_shards(session: Session, ckpt: dict | None) -> list[str]:
    """This rank's shard files of a finished run's last checkpoint (re-reported on resume)."""
    zero = (ckpt or {}).get("zero")
    if not zero:
        return []
    from raytune_opt.strategies.deepspeed import shard_paths

    return shard_paths(session.checkpoint_root(), zero["tag"], session.rank)


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
