"""What a training loop gets for one trial on one rank: :class:`TrialContext`.

Every loop, the built-in recipe (:func:`raytune_opt.recipe.loop.builtin_loop`) and a user's
``train.loop: module:callable``, is ``fn(config, ctx) -> None`` and is written against this
one object: the device, rank and world size; the data set and the model the spec names;
the trial's distributed strategy (DDP or DeepSpeed ZeRO: wrapping, backward, optimizer step,
precision); and :meth:`TrialContext.report`, the one way a loop reports an epoch, which keeps
the self-describing ``best.pt`` / ``last.pt`` checkpoints by the sweep's metric. So
schedulers, resume, results, reports and promotion work the same for every loop.

A user loop, in full::

    def train(config, ctx):
        model = ctx.build_model()                       # model.name with model.args, from the data
        optimizer = torch.optim.AdamW(model.parameters(), lr=ctx.settings.train.optimizer.lr)
        model = ctx.prepare_model(model, optimizer)     # DDP / DeepSpeed; restored when resuming
        train_loader, val_loader = ctx.loader("train"), ctx.loader("val")
        for epoch in range(ctx.start_epoch, ctx.epochs + 1):
            ctx.begin_epoch(epoch, train_loader)
            for x, y in train_loader:
                x, y = x.to(ctx.device), y.to(ctx.device)
                with ctx.autocast():
                    loss = F.cross_entropy(model(x), y)
                ctx.backward(loss)
                ctx.step()
            ctx.report({"val_accuracy": evaluate(model, val_loader)}, epoch=epoch)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from raytune_opt import objectives
from raytune_opt.recipe.bundle import DataBundle, load_bundle, make_loader
from raytune_opt.recipe.checkpoint import load_checkpoint, make_checkpoint, write_checkpoints
from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.recipe.models import build_model_from_spec, model_spec
from raytune_opt.spec.view import view

__all__ = ["TrialContext", "run_loop", "epoch_seed", "seed_all"]


class TrialContext:
    """One trial's runner, data, model and strategy, as a loop sees them on one rank.

    Attributes:
        config: the trial's resolved spec (``seed``, ``data``, ``model``, ``train``, ``search``),
            the searched values filled in.
        settings: the same as a typed read-only view (``ctx.settings.train.optimizer.lr``;
            :mod:`raytune_opt.spec.view`): the schema's default for a key the config lacks, an
            error naming a key the schema does not have.
        start_epoch: the first epoch to train: 1, or one past a resumed checkpoint's.
        epochs: ``train.epochs``.
        state: the ``state`` the resumed checkpoint's :meth:`report` stored (None when fresh).
    """

    def __init__(self, config: dict, session, strategy, *, spec_sha256: str = "", resume_from: str | None = None):
        self.config = config
        self.settings = view((), config)
        self.session = session
        self.strategy = strategy
        self.spec_sha256 = spec_sha256
        self.resume_path = resume_from
        self.resumed = load_checkpoint(resume_from, map_location=session.device) if resume_from is not None else None
        self.start_epoch = int(self.resumed["epoch"]) + 1 if self.resumed is not None else 1
        self.epochs = int(self.settings.train.epochs)
        loop_state = (self.resumed or {}).get("loop_state") or {}
        self.best: float | None = loop_state.get("best")
        self.loop_state = dict(loop_state)  # what the loop kept in its checkpoint (the built-in: bad_epochs)
        self.last_metrics: dict = dict((self.resumed or {}).get("metrics") or {})
        self.state = (self.resumed or {}).get("user_state")
        self.reports = 0  # epochs reported by this run
        self._data: DataBundle | None = None
        self._spec: dict | None = None
        self._model: nn.Module | None = None
        self._epoch_start = time.perf_counter()

    # ---- where and who ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.session.device

    @property
    def rank(self) -> int:
        return self.session.rank

    @property
    def world_size(self) -> int:
        return self.session.world_size

    @property
    def is_rank_zero(self) -> bool:
        return self.session.is_rank_zero

    @property
    def metric(self) -> str:
        return objectives.primary(self.settings.search)[0]

    @property
    def mode(self) -> str:
        return objectives.primary(self.settings.search)[1]

    # ---- data and model ---------------------------------------------------------------
    @property
    def data(self) -> DataBundle:
        """The data set ``data.dataset`` names (loaded on first use), without its test split:
        a trial trains and validates; the test split is measured after the sweep only."""
        if self._data is None:
            data_cfg, seed = self.config["data"], int(self.config["seed"])
            # A warm slot's worker reads it from the node cache once for the slot's trials.
            key = ("raytune_opt.data", json.dumps(data_cfg, sort_keys=True, default=str), seed)
            make = lambda: load_bundle(data_cfg, seed)  # noqa: E731
            bundle = self.session.keep(key, make) if self.session is not None else make()  # None: no trial
            self._data = dataclasses.replace(bundle, test=None)
        return self._data

    def keep(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` computed once per worker process and returned to every later trial there:
        with ``resources.warm_workers: true`` a slot's workers serve one trial after another,
        so a frozen base model, a tokenizer or a large table is loaded once per slot (without
        warm workers each trial makes its own). Keep only what no trial changes: the value is
        shared, not copied.

        Args:
            key: names the value (the same key gives the same value to every trial of the slot).
            make: builds it; called once per process for each key.
        """
        return self.session.keep(("user", key), make) if self.session is not None else make()

    def build_model(self, *, spec_extra: dict | None = None) -> nn.Module:
        """The model ``model.name`` names, built for the data (on :attr:`device`, not yet
        wrapped). Checkpoints record it, so ``load_model`` and promotion rebuild it.

        Args:
            spec_extra: plain values added to the model's spec, which
                :func:`~raytune_opt.recipe.models.build_model_from_spec` reads (an integration's
                ``hf``: the model's LoRA adapter).
        """
        data = self.data
        self._spec = {**model_spec(self.config["model"], data.input_shape, data.num_classes), **(spec_extra or {})}
        return build_model_from_spec(self._spec).to(self.device)

    @property
    def model_spec(self) -> dict | None:
        return self._spec

    def measures(self, model: nn.Module) -> dict:
        """What ``model`` costs to serve, as the built-in loop reports it with every epoch:
        ``params``, ``macs``, ``model_bytes`` and ``latency_ms`` (median forward time at
        ``promote.latency_batch``, one thread on a CPU). Pass the model as built (not the DDP
        wrapper); add the result to :meth:`report`'s metrics to optimise or constrain them
        (``search.metric``, ``search.constraints``). Call it on every rank."""
        from raytune_opt.recipe import footprint

        module = getattr(model, "module", model)  # DDP and DeepSpeed keep the model as .module
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        example = self.data.input_example[:1].to(device)
        batch = int((self.config.get("promote") or {}).get("latency_batch") or 1)
        return footprint.measures(module, example, latency_batch=batch,
                                  threads=1 if device.type == "cpu" else None)

    def prepare_model(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
        """Wrap ``model`` and ``optimizer`` for the trial's strategy (DDP, a DeepSpeed engine),
        restoring their state when the trial resumes; returns the module to call.

        Raises:
            RecipeConfigError: the model was not made by :meth:`build_model`.
        """
        if self._spec is None:
            raise RecipeConfigError("ctx.prepare_model: build the model with ctx.build_model(), so that checkpoints "
                                    "can rebuild it (set model.name to your model's 'module:callable')")
        self._model = self.strategy.setup(model, optimizer, resume=self.resumed, resume_path=self.resume_path)
        if self.resumed is not None and self.start_epoch <= self.epochs:
            self._replay_unrecorded_epoch()
        return self._model

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        """Shard ``loader`` across the trial's ranks (a DistributedSampler; as is with one rank)."""
        return self.session.prepare_loader(loader)

    def loader(self, split: str = "train", batch_size: int | None = None, shuffle: bool | None = None,
               **kwargs: Any) -> DataLoader:
        """A prepared DataLoader over the data set's ``split`` ("train" or "val"): batch size
        ``train.batch_size`` per rank unless given, shuffled for "train", the bundle's collate;
        ``kwargs`` go to DataLoader."""
        if split not in ("train", "val"):
            raise RecipeConfigError(f"ctx.loader: split must be 'train' or 'val' (got {split!r})")
        shuffle = split == "train" if shuffle is None else shuffle
        if shuffle:
            kwargs.setdefault("generator", torch.Generator())
        loader = make_loader(self.data, split, batch_size or self.settings.train.batch_size, shuffle=shuffle,
                             **kwargs)
        return self.prepare_loader(loader)

    def begin_epoch(self, epoch: int, *loaders: DataLoader) -> int:
        """Seed this epoch's randomness (dropout, shuffling) from the seed, the epoch and the
        rank only, so that a resumed trial draws what a straight one would; the seed (for
        the loop's own generators)."""
        self._epoch_start = time.perf_counter()
        seed = epoch_seed(int(self.config["seed"]), epoch, self.rank)
        torch.manual_seed(seed)
        for loader in loaders:
            sampler = loader.sampler
            if hasattr(sampler, "set_epoch"):  # DistributedSampler
                sampler.set_epoch(epoch)
            elif getattr(sampler, "generator", None) is not None:
                sampler.generator.manual_seed(seed)
        return seed

    # ---- the step, through the strategy ---------------------------------------------------
    def autocast(self):
        """The context the forward pass runs in (``train.precision``)."""
        return self.strategy.autocast()()

    def sync(self, boundary: bool):
        """The context a micro-batch runs in under gradient accumulation: DDP all-reduces only
        where ``boundary`` (the micro-batch before :meth:`step`)."""
        return self.strategy.sync_context(boundary)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch's mean loss (scaled for accumulation and fp16)."""
        self.strategy.backward(loss)

    def step(self) -> torch.Tensor:
        """Clip (``train.grad_clip_norm``), step the optimizer, zero the gradients; the
        gradient norm before clipping."""
        return self.strategy.step()

    def all_sum(self, *values: float | torch.Tensor) -> list[float]:
        """``values`` summed over the trial's ranks (as they are with one rank): reduce
        per-rank sums before :meth:`report`, which wants the same metrics on every rank."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(t)
        return t.tolist()

    # ---- reporting ----------------------------------------------------------------------
    def report(self, metrics: dict, *, epoch: int, state: dict | None = None) -> None:
        """Report one epoch: to Tune (schedulers, results, the report), and as the trial's
        checkpoint (``last.pt``; ``best.pt`` when the sweep's metric improved).

        Call it on every rank with the same metrics (reduce them first; rank zero writes).

        Args:
            metrics: numbers, including the sweep's metric (``search.metric``).
            epoch: the epoch just finished (1-based).
            state: plain values to get back as :attr:`state` when the trial resumes.

        Raises:
            RecipeConfigError: the sweep's metric is missing, a value is not a number, or a
                key names a test-split metric (``test_*``).
        """
        if self._model is None:
            raise RecipeConfigError("ctx.report: call ctx.prepare_model(model, optimizer) first; the checkpoint "
                                    "holds the prepared model")
        tested = sorted(k for k in metrics if str(k).startswith("test_"))
        if tested:  # the search must never see the test split, not even in a user loop's own figures
            raise RecipeConfigError(f"ctx.report(epoch={epoch}): {tested[0]} names a test-split metric (got keys "
                                    f"{sorted(metrics)}); report validation metrics (val_*): the test split is "
                                    f"measured once, after the sweep")
        bad = [k for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float, type(None)))]
        missing = [m for m, _ in objectives.objectives(self.settings.search) if m not in metrics]
        if missing or bad:
            hint = " (ctx.measures(model) gives the deployment measures)" if set(missing) & set(objectives.MEASURES) \
                else ""
            what = f"{bad[0]}={metrics[bad[0]]!r} is not a number" if bad else \
                f"it lacks {', '.join(missing)} (search.metric){hint}"
            raise RecipeConfigError(f"ctx.report(epoch={epoch}): {what}; report numbers, the sweep's metric among "
                                    f"them (got keys {sorted(metrics)})")
        out = {**metrics, "epoch": int(epoch)}
        out.setdefault("epoch_s", time.perf_counter() - self._epoch_start)  # since begin_epoch or the last report
        is_best = self.track(out)
        out.setdefault("stop_reason", "completed" if epoch >= self.epochs else None)
        directory, shards = self.save(out, epoch, is_best, extra={"user_state": copy.deepcopy(state)})
        self.send(out, directory, shards)

    def send(self, metrics: dict, directory: str | None = None, shards: Sequence[str] = ()) -> None:
        """Hand one epoch's finished metrics (and its checkpoint) to the runner and count it:
        :meth:`report`'s last step, and the built-in loop's, which checks and saves itself."""
        self.session.report(metrics, directory, shards)
        self.last_metrics = metrics
        self.reports += 1
        self._epoch_start = time.perf_counter()

    def track(self, metrics: dict) -> bool:
        """Whether ``metrics`` holds the best value of the sweep's metric so far (then
        remembered); sets ``best_<metric>``."""
        value = metrics[self.metric]
        is_best = value is not None and math.isfinite(value) and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best))
        if is_best:
            self.best = value
        metrics[f"best_{self.metric}"] = self.best
        return is_best

    def save(self, metrics: dict, epoch: int, is_best: bool, *, scheduler_state: dict | None = None,
             loop_state: dict | None = None, extra: dict | None = None) -> tuple[str | None, Sequence[str]]:
        """Write the epoch's checkpoint (when ``train.checkpoint``); the directory to report
        and this rank's shard files. Every rank calls it (ZeRO gathers the weights)."""
        if not self.settings.train.checkpoint:
            return None, ()
        root = self.session.checkpoint_root()
        # Shards first (every rank; DeepSpeed only), then the consolidated checkpoint that
        # names them: a crash in between leaves last.pt pointing at complete shards.
        shards = self.strategy.save_shards(root, epoch)
        model_state = self.strategy.model_state_dict()  # full fp32 weights on rank zero; a collective
        if self.is_rank_zero:
            recipe = {key: copy.deepcopy(self.config[key]) for key in ("data", "model", "train")}
            ckpt = make_checkpoint(
                model_spec=self._spec, model_state=model_state, optimizer_state=self.strategy.optimizer_state_dict(),
                scheduler_state=scheduler_state, epoch=epoch, metrics=metrics, recipe=recipe,
                spec_sha256=self.spec_sha256,
                extra={"loop_state": {"best": self.best, **(loop_state or {})}, **(extra or {}),
                       **self.strategy.checkpoint_extra(epoch)})
            write_checkpoints(ckpt, root, is_best=is_best)
        return (str(root) if self.is_rank_zero or shards else None), shards

    def _replay_unrecorded_epoch(self) -> None:
        """Report the checkpoint's epoch again if its runner never recorded it.

        A driver killed after a trial saved epoch E but before it took E's report loses that
        report; the resumed trial continues from E's checkpoint, so without this its history
        would have no epoch E (and schedulers no result at E). Marked ``replayed``: should the
        report have arrived after all, the history keeps the first one.
        """
        done = self.start_epoch - 1
        recorded = self.session.recorded_epoch()
        if recorded is None or recorded >= done:
            return
        self.session.report({**self.last_metrics, "epoch": done, "replayed": 1}, None)

    def finish(self) -> None:
        """After the loop: a trial resumed from a finished run reports its last metrics once
        more, so that a restarted trial (a resumed sweep) still ends with a result and its
        checkpoint."""
        if self.resumed is None or self.start_epoch <= self.epochs or self.reports:
            return
        self.last_metrics["stop_reason"] = "completed"
        self.last_metrics["replayed"] = 1  # not a new epoch: the history keeps the first report of it
        checkpoint = bool(self.settings.train.checkpoint)
        root = self.session.checkpoint_root() if checkpoint else None
        shards = self.strategy.resumed_shards(root, self.resumed) if checkpoint else ()
        self.session.report(dict(self.last_metrics), root if checkpoint and self.is_rank_zero else None, shards)


def run_loop(fn: Callable[[dict, TrialContext], Any], label: str, cfg: dict, session, strategy, *,
             spec_sha256: str = "", resume_from: str | None = None) -> dict:
    """Run the loop ``fn`` (named ``label``) for one trial on one rank; its last metrics.

    Raises:
        RecipeConfigError: the loop returned without reporting an epoch it had to train.
        Whatever the loop raises (a user loop's own exception errors the trial with its traceback).
    """
    if session.num_threads:
        torch.set_num_threads(session.num_threads)
    seed_all(int(cfg["seed"]))  # the model is initialised from the same seed on every rank
    ctx = TrialContext(cfg, session, strategy, spec_sha256=spec_sha256, resume_from=resume_from)
    fn(copy.deepcopy(cfg), ctx)
    ctx.finish()
    if ctx.start_epoch <= ctx.epochs and not ctx.reports:
        raise RecipeConfigError(f"train.loop {label} returned without calling ctx.report(); report every epoch "
                                f"(ctx.report(metrics, epoch=epoch)), at least once")
    return ctx.last_metrics


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Distinct, reproducible streams per (seed, epoch, rank), independent of resuming."""
    return (seed * 1_000_003 + epoch * 10_007 + rank) % 2**63
