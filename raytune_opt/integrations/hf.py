"""``train.loop: hf_trainer``: a Hugging Face model trained by ``transformers.Trainer`` inside
a trial, optionally through a LoRA adapter (peft).

The loop is written against :class:`~raytune_opt.recipe.context.TrialContext`, as the
Lightning loop is, so the trial's checkpoints, schedulers (epochs as their time unit), warm
worker slots, resume, PBT, the report and promotion work as for any loop:

- ``model.name`` returns a ``transformers.PreTrainedModel`` (with ``model.args``).
  ``train.peft`` (``peft.LoraConfig``'s arguments; ``task_type`` defaults to ``SEQ_CLS``, so
  the classification head trains with the adapter) wraps it with ``peft.get_peft_model``.
  The sweep sees it as :class:`HFClassifier`: token ids in, logits out (the attention mask
  is where the ids are not the model's ``pad_token_id``), which is what the data facts,
  ``validate --smoke``, ``load_model`` and promotion call.
- ``data.dataset`` returns the Trainer's data arguments as a dict: ``train_dataset`` and
  ``eval_dataset`` (items are dicts of ``input_ids``, ``attention_mask``..., and ``labels``),
  and optionally ``data_collator``, ``compute_metrics`` and ``test_dataset`` (held out from
  the search: measured after the sweep). :func:`trainer_data_bundle` gives the sweep its
  view of them: ``(input_ids, label)`` pairs.
- ``Trainer(args=TrainingArguments(num_train_epochs=train.epochs, eval_strategy="epoch",
  **train.args))`` with no saving or reporting of its own; :class:`_ReportEpoch` reports every
  epoch's evaluation (``eval_loss`` and ``eval_<name>`` of ``compute_metrics``) with the
  epoch's training ``loss``, ``grad_norm`` and ``learning_rate``, through ``ctx.report``.
- Checkpoints (``best.pt`` / ``last.pt``) hold the adapter and the head (the trainable
  parameters; the whole model without ``train.peft``), the Trainer's optimizer, LR schedule
  and ``TrainerState``, and a model spec (``model.name``, its args, ``train.peft``) that
  rebuilds the model. A resumed trial continues through the Trainer's own resume path
  (``resume_from_checkpoint``), fed from our checkpoint instead of its files.
- With several workers (``resources.num_workers``), each rank runs the Trainer inside Ray
  Train's process group (the Trainer's DDP, through accelerate) and ``prepare_trainer``, as
  Ray Train documents; reports go through the context rather than ``RayTrainReportCallback``.

The validation rules are in :mod:`raytune_opt.integrations.hf_rules`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import tempfile
from typing import Mapping

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from raytune_opt._imports import require
from raytune_opt.integrations._common import TrainerOwned, numbers, param_groups, restore_keeping_config
from raytune_opt.integrations.hf_rules import deepspeed_config
from raytune_opt.recipe.bundle import DataBundle
from raytune_opt.recipe.errors import DataError, RecipeConfigError

__all__ = ["hf_trainer_loop", "trainer_data_bundle", "HFClassifier", "wrap", "spec_extra",
           "smoke_metrics", "merged"]

#: What ``data.dataset`` may return for ``hf_trainer`` (the Trainer's data arguments, and the held-out test set).
DATA_KEYS = ("train_dataset", "eval_dataset", "test_dataset", "data_collator", "compute_metrics")
_USE_DEEPSPEED = "ACCELERATE_USE_DEEPSPEED"
# Timings that differ between ranks and runs: the sweep's epoch_s measures the epoch instead.
_DROPPED = ("epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def _transformers():
    transformers = require("transformers", "train.loop: hf_trainer")
    # Its per-run notices (the model card, unused columns) would repeat in every trial's log.
    transformers.logging.set_verbosity_warning()
    return transformers


# ---------------------------------------------------------------- data

class _Pairs(Dataset):
    """``(input_ids, label)`` samples of a data set of tokenized dicts: what the sweep's data
    facts, smoke test and promotion read. :attr:`items` is the data set the Trainer gets."""

    def __init__(self, items, trainer_data: Mapping):
        self.items = items
        self.trainer_data = trainer_data

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        label = item["labels"] if "labels" in item else item["label"]
        return torch.as_tensor(item["input_ids"]), torch.as_tensor(label)


class _PairCollate:
    """Batches ``(input_ids, label)`` pairs with the user's ``data_collator`` (its padding)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, batch):
        out = self.collator([{"input_ids": x, "labels": y} for x, y in batch])
        return out["input_ids"], out["labels"]


def trainer_data_bundle(result: Mapping, label: str) -> DataBundle:
    """The sweep's view of an ``hf_trainer`` data function's result (see the module's doc).

    Raises:
        DataError: a key it does not know, or a sample that is not a dict with ``input_ids``
            and ``labels`` (or ``label``).
    """
    unknown = sorted(set(result) - set(DATA_KEYS))
    if unknown:
        raise DataError(f"data.dataset {label} returned a dict with {unknown[0]!r}, which train.loop hf_trainer does "
                        f"not take; return the keys {', '.join(DATA_KEYS)}")
    for key in ("train_dataset", "eval_dataset", "test_dataset"):
        split = result.get(key)
        if split is None:
            continue
        try:
            first = split[0]
        except Exception as exc:
            raise DataError(f"data.dataset {label}: {key}[0] raised {type(exc).__name__}: {exc}; return map-style "
                            f"data sets of tokenized samples") from exc
        if not isinstance(first, Mapping) or "input_ids" not in first or not ({"labels", "label"} & set(first)):
            got = sorted(first) if isinstance(first, Mapping) else type(first).__name__
            raise DataError(f"data.dataset {label}: a {key} sample is {got}, not a dict with input_ids and labels; "
                            f"return tokenized samples (tokenizer(text) plus labels)")
    collator = result.get("data_collator")
    pairs = {key: None if result.get(key) is None else _Pairs(result[key], result)
             for key in ("train_dataset", "eval_dataset", "test_dataset")}
    return DataBundle(train=pairs["train_dataset"], val=pairs["eval_dataset"], test=pairs["test_dataset"],
                      collate_fn=None if collator is None else _PairCollate(collator), info={"layout": "token ids"})


# ---------------------------------------------------------------- model

class HFClassifier(nn.Module):
    """A Hugging Face sequence classifier (or regressor) as the sweep calls a model: token ids
    ``(batch, length)`` in, logits out. The attention mask is where the ids are not the
    model's ``pad_token_id`` (all ones without one). :attr:`hf` is the model the Trainer trains.

    With a LoRA adapter, a checkpoint keeps only the trainable tensors (:meth:`saved_keys`):
    loading one restores them and leaves the frozen base as the model's builder made it.
    """

    def __init__(self, model: nn.Module, lora: dict | None = None):
        super().__init__()
        self.hf = model
        self.lora = dict(lora) if lora else None
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
        self.pad_token_id = None if pad is None else int(pad)
        self._saved = frozenset(self.saved_keys())
        if self.lora:
            self.register_load_state_dict_post_hook(_frozen_base_may_be_missing)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = None if self.pad_token_id is None else (input_ids != self.pad_token_id).long()
        return self.hf(input_ids=input_ids, attention_mask=mask).logits

    def saved_keys(self) -> list[str]:
        """The state-dict keys a checkpoint keeps: the trainable ones under LoRA (the adapter
        and the head), else all."""
        state = self.state_dict()
        if not self.lora:
            return list(state)
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return [k for k in state if k in trainable]


def _frozen_base_may_be_missing(module: HFClassifier, incompatible) -> None:
    # A LoRA checkpoint holds the trainable tensors only; strict loading still fails on a
    # missing adapter or head tensor, and on any unexpected key.
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k in module._saved]


def spec_extra(config: dict) -> dict:
    """What the checkpoint's model spec adds for ``hf_trainer`` (read by :func:`wrap`)."""
    return {"hf": {"lora": dict(config["train"].get("peft") or {}) or None}}


def wrap(model: nn.Module, hf: dict) -> HFClassifier:
    """The model ``model.name`` returned, with the LoRA adapter ``hf["lora"]`` when given, as the
    sweep calls it (:class:`HFClassifier`): how a model spec with ``hf`` is rebuilt.

    Raises:
        RecipeConfigError: the model is not a Hugging Face model, or peft refuses the adapter's settings.
    """
    transformers = _transformers()
    if not isinstance(model, transformers.PreTrainedModel):
        raise RecipeConfigError(f"train.loop hf_trainer needs model.name to return a transformers.PreTrainedModel "
                                f"(got {type(model).__name__}); return e.g. "
                                f"AutoModelForSequenceClassification.from_pretrained(...)")
    lora = hf.get("lora")
    if lora:
        peft = require("peft", "train.peft (LoRA)")
        try:
            config = peft.LoraConfig(**{"task_type": "SEQ_CLS", **lora})
            model = peft.get_peft_model(model, config)
        except (TypeError, ValueError) as exc:
            raise RecipeConfigError(f"train.peft {lora}: peft refused it: {exc}; fix train.peft") from None
    return HFClassifier(model, lora)


def merged(model: HFClassifier) -> tuple[HFClassifier, dict | None]:
    """A copy of ``model`` with its LoRA adapter merged into the base weights (peft's
    ``merge_and_unload``: a plain model of the base's class, as fast as the base), and what was
    merged (None: there was no adapter; ``model`` itself)."""
    if not model.lora:
        return model, None
    peft = require("peft", "train.peft (LoRA)")
    lora = model.hf.peft_config["default"]
    adapter = sum(p.numel() for n, p in model.hf.named_parameters() if "lora_" in n)
    # The modules trained whole, as wrapped: task_type SEQ_CLS names every head peft knows
    # ("classifier", "score"), and a model has one of them (BERT's classifier, GPT-2's score).
    whole = sorted({name.rsplit(".", 1)[-1] for name, module in model.hf.named_modules()
                    if isinstance(module, peft.utils.ModulesToSaveWrapper)})
    base = copy.deepcopy(model.hf).merge_and_unload()  # the trial's model stays as it is
    what = {"adapter": "lora", "r": lora.r, "lora_alpha": lora.lora_alpha,
            "target_modules": sorted(lora.target_modules) if lora.target_modules else None,
            "modules_to_save": whole, "adapter_params": int(adapter),
            "params": int(sum(p.numel() for p in base.parameters())), "into": type(base).__name__}
    return HFClassifier(base).eval(), what


# ---------------------------------------------------------------- the trial

class _HFStrategy(TrainerOwned):
    """What the context's checkpoints read when the Trainer owns the model: the trainable
    tensors, and the Trainer's optimizer, LR schedule and ``TrainerState``.

    Under DeepSpeed (``train.strategy: deepspeed``, the Trainer's own DeepSpeed integration)
    the weights are gathered from the ranks' ZeRO partitions and the optimizer state stays in
    DeepSpeed's shards (:meth:`save_shards`, tag ``global_step<N>``, the name the Trainer's
    resume looks for), as the built-in DeepSpeed strategy keeps them."""

    name = loop = "hf_trainer"

    @property
    def engine(self):
        """The Trainer's DeepSpeed engine (None without DeepSpeed, or before training starts)."""
        t = self.trainer
        wrapped = getattr(t, "model_wrapped", None)
        return wrapped if getattr(t, "is_deepspeed_enabled", False) and hasattr(wrapped, "save_checkpoint") else None

    def saved_state(self) -> dict:
        state = self.module.state_dict()
        return {k: state[k] for k in self.module.saved_keys()}

    def model_state_dict(self) -> dict | None:
        if self.engine is None:
            return super().model_state_dict()
        from raytune_opt.strategies.deepspeed import full_state_dict

        return full_state_dict(self.module, self.is_rank_zero, keys=self.module.saved_keys())  # a collective

    def optimizer_state_dict(self) -> dict | None:
        t = self.trainer
        # TrainerState as HF's own checkpoints keep it (trainer_state.json): plain text in ours.
        state = {"lr_scheduler": t.lr_scheduler.state_dict(),
                 "trainer_state": json.dumps(dataclasses.asdict(t.state), sort_keys=True)}
        if self.engine is None:  # under ZeRO each rank holds a part: the shards keep it
            state["optimizer"] = t.optimizer.state_dict()
        return state

    def _tag(self) -> str:
        return f"global_step{self.trainer.state.global_step}"

    def checkpoint_extra(self, epoch: int) -> dict:
        engine = self.engine
        if engine is None:
            return {}
        from raytune_opt.strategies.deepspeed import zero_record

        return zero_record(self._tag(), self.session.world_size, int(engine.zero_optimization_stage()))

    def save_shards(self, directory: str, epoch: int):
        engine = self.engine
        if engine is None:
            return ()
        from raytune_opt.strategies.deepspeed import save_shards

        # Under LoRA the frozen base is the model builder's: the shards keep the adapter and head.
        return save_shards(engine, directory, self._tag(), self.session.rank,
                           exclude_frozen=bool(self.module.lora))

    def resumed_shards(self, directory: str, resumed: dict | None):
        from raytune_opt.strategies.deepspeed import resumed_shard_paths

        return resumed_shard_paths(directory, resumed, self.session.rank)


def _trainer_class(transformers):
    class _Trainer(transformers.Trainer):
        """The Trainer, resuming from the sweep's checkpoint through its own resume path: the
        weights are restored already (``ctx.prepare_model``), the optimizer and schedule come
        from the checkpoint, and every epoch reseeds (``ctx.begin_epoch``), so there is no RNG
        state to load. HF reads the resumed ``TrainerState`` (global step, epoch) from the
        ``trainer_state.json`` the loop writes, and skips the epochs done."""

        resumed: dict | None = None
        fresh: list | None = None  # this trial's optimizer hyperparameters, before a resume loads any

        def create_scheduler(self, num_training_steps, optimizer=None):
            scheduler = super().create_scheduler(num_training_steps, optimizer)
            # Under DeepSpeed the Trainer loads the optimizer's shards before the method below.
            self.fresh = param_groups([self.optimizer])
            return scheduler

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            pass

        def _load_optimizer_and_scheduler(self, checkpoint):
            if checkpoint is None or not self.resumed:
                return

            def load():
                if not self.is_deepspeed_enabled:  # DeepSpeed loaded the optimizer from its shards
                    if "optimizer" not in self.resumed:
                        raise RecipeConfigError(
                            "train.loop hf_trainer: the resumed checkpoint was written under DeepSpeed (its optimizer "
                            "state is in ZeRO shards) and this trial runs without it; resume it with "
                            "train.strategy: deepspeed")
                    self.optimizer.load_state_dict(self.resumed["optimizer"])
                self.lr_scheduler.load_state_dict(self.resumed["lr_scheduler"])

            # A PBT exploit's own config over the donor's state (see restore_keeping_config).
            restore_keeping_config([self.optimizer], [self.lr_scheduler], load, fresh=self.fresh)

        def _load_rng_state(self, checkpoint):
            pass

        def _load_scaler(self, checkpoint):
            pass

    return _Trainer


def _callback(transformers, ctx):
    class _ReportEpoch(transformers.TrainerCallback):
        """Seeds every epoch, and reports its evaluation to the sweep (and so checkpoints it)."""

        def __init__(self):
            self.logged: dict = {}

        def on_epoch_begin(self, args, state, control, **kwargs):
            # Before the Trainer makes the epoch's loader iterator.
            ctx.begin_epoch(int(round(state.epoch or 0)) + 1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # the epoch's training loss, logged just before its evaluation
                self.logged = {k: logs[k] for k in ("loss", "grad_norm", "learning_rate") if k in logs}

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            out = numbers({k: v for k, v in {**self.logged, **(metrics or {})}.items() if k not in _DROPPED})
            ctx.report(out, epoch=int(round(state.epoch)))

    return _ReportEpoch()


def _training_args(transformers, config: dict, ctx, output_dir: str):
    train = config["train"]
    # average_tokens_across_devices off unless train.args sets it. transformers 5 turns it on by
    # default and then multiplies the loss by the number of ranks, right only for a model whose
    # loss divides by the items counted across ranks: BertForSequenceClassification's does not,
    # so on two workers its loss, eval_loss and gradients came out doubled (transformers 5.25:
    # eval_loss 1.383 vs 0.691 on one rank, an untrained 2-class model;
    # huggingface/transformers#35078 reported the eval half). Off, each rank averages its own
    # batch and DDP averages the ranks: the right scale for every model.
    kwargs = {"per_device_eval_batch_size": 64, "average_tokens_across_devices": False, **(train.get("args") or {})}
    kwargs.update(output_dir=output_dir, num_train_epochs=ctx.epochs, eval_strategy="epoch",
                  logging_strategy="epoch", save_strategy="no", report_to="none", disable_tqdm=True,
                  seed=int(config["seed"]), use_cpu=ctx.device.type != "cuda")
    if train["strategy"] == "deepspeed":
        kwargs["deepspeed"] = deepspeed_config(train)
    return transformers.TrainingArguments(**kwargs)


@contextlib.contextmanager
def _deepspeed_group(ctx, train: dict):
    """Under DeepSpeed, what the Trainer's DeepSpeed needs of the process for the trial
    (:func:`raytune_opt.strategies.deepspeed.process_group`). accelerate marks the process
    ``ACCELERATE_USE_DEEPSPEED=true`` when it takes the plugin and leaves it so: the next
    trial in the process, without DeepSpeed, ran under a default DeepSpeed plugin. The mark
    goes with the trial."""
    if train["strategy"] != "deepspeed":
        yield
        return
    from raytune_opt.strategies.deepspeed import process_group
    from raytune_opt.strategies.deepspeed_config import import_deepspeed

    import_deepspeed()
    before = os.environ.get(_USE_DEEPSPEED)
    try:
        with process_group(ctx.device):
            yield
    finally:
        if before is None:
            os.environ.pop(_USE_DEEPSPEED, None)
        else:
            os.environ[_USE_DEEPSPEED] = before


def _resume_dir(ctx, train: dict, out_dir: str, state: dict) -> str:
    """The directory the Trainer resumes from: the resumed ``TrainerState`` and, under
    DeepSpeed, the checkpoint's ZeRO shards (linked, with DeepSpeed's ``latest``).

    Raises:
        RecipeConfigError: under DeepSpeed, the shards do not fit this trial (another world size
            or ZeRO stage: DeepSpeed cannot reshard an optimizer state, deepspeedai/DeepSpeed#2898).
    """
    resume = os.path.join(out_dir, "resumed")
    os.makedirs(resume)
    with open(os.path.join(resume, "trainer_state.json"), "w") as f:
        f.write(state["trainer_state"])
    if train["strategy"] == "deepspeed":
        from raytune_opt.strategies.deepspeed import resumable_shards
        from raytune_opt.strategies.deepspeed_config import zero_stage

        found, why = resumable_shards(ctx.resumed, ctx.resume_path, zero_stage(train.get("deepspeed") or {}),
                                      ctx.world_size)
        if found is None:
            raise RecipeConfigError(f"train.loop hf_trainer with DeepSpeed resumes from {ctx.resume_path}'s ZeRO shards, "
                                    f"but {why}; resume it with the world size and ZeRO stage it ran with (a PBT sweep "
                                    f"should not search resources.num_workers or the ZeRO stage)")
        load_dir, tag = found
        os.symlink(os.path.join(load_dir, tag), os.path.join(resume, tag))
        with open(os.path.join(resume, "latest"), "w") as f:
            f.write(tag)
    return resume


def _train_split(config: dict, items, args, world_size: int):
    """``train.limit_batches`` batches per epoch (per rank) of the training split, or all of it."""
    limit = config["train"].get("limit_batches")
    if not limit:
        return items
    n = int(limit) * int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * world_size
    return Subset(items, range(min(n, len(items))))


def _reset_accelerate() -> None:
    """Forget the accelerate state an earlier trial left in this process. accelerate keeps it
    per process (singletons), and a process serves one trial after another (a warm slot's
    worker, an actor Tune reuses): a stopped trial left its loaders registered in the gradient
    state, and a DeepSpeed trial its DeepSpeed plugin, which the next trial without DeepSpeed
    then ran under. The process group itself is Ray Train's, not accelerate's: it stays."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def hf_trainer_loop(config: dict, ctx) -> None:
    """The loop ``hf_trainer``: train the model ``model.name`` returns (through a LoRA adapter
    when ``train.peft`` is given) with ``transformers.Trainer`` on the data sets
    ``data.dataset`` returns, reporting every epoch (see the module's doc)."""
    transformers = _transformers()
    _reset_accelerate()
    if config["train"].get("peft"):
        require("peft", "train.peft (LoRA)")
    # Loading the data the first time in a process draws from torch's generator (a DataLoader
    # reads the labels), taking it from the process's cache does not: seed after it, so that
    # the adapter (and a new head) start the same in every trial with the same seed.
    ctx.data
    torch.manual_seed(int(config["seed"]))
    model = ctx.build_model(spec_extra=spec_extra(config))
    strategy = _HFStrategy(ctx.session, config["train"])
    ctx.strategy = strategy  # the context's checkpoints read the model and the Trainer's optimizer from it
    model = ctx.prepare_model(model, None)  # restores the adapter (or the weights) when the trial resumes
    if ctx.start_epoch > ctx.epochs:
        return  # resumed from a finished run: the context reports its last epoch again
    data = ctx.data.train.trainer_data
    with tempfile.TemporaryDirectory(prefix="raytune-opt-hf-") as out_dir, _deepspeed_group(ctx, config["train"]):
        args = _training_args(transformers, config, ctx, out_dir)
        trainer = _trainer_class(transformers)(
            model=model.hf, args=args, train_dataset=_train_split(config, data["train_dataset"], args, ctx.world_size),
            eval_dataset=data["eval_dataset"], data_collator=data.get("data_collator"),
            compute_metrics=data.get("compute_metrics"), callbacks=[_callback(transformers, ctx)])
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # our report prints the epochs
        strategy.trainer = trainer
        resume = None
        if ctx.resumed is not None and (ctx.resumed.get("optimizer_state") or {}).get("trainer_state"):
            trainer.resumed = ctx.resumed["optimizer_state"]
            resume = _resume_dir(ctx, config["train"], out_dir, trainer.resumed)
        if ctx.world_size > 1:  # a Ray Train worker: Ray's documented Trainer set-up
            from ray.train.huggingface.transformers import prepare_trainer

            trainer = prepare_trainer(trainer)
        trainer.train(resume_from_checkpoint=resume)


def smoke_metrics(model: HFClassifier, config: dict, data: DataBundle) -> dict:
    """The evaluation metrics after one training step and one evaluation step through the
    Trainer (``validate --smoke``): ``eval_loss`` and those of ``compute_metrics``."""
    transformers = _transformers()
    trainer_data = data.train.trainer_data
    with tempfile.TemporaryDirectory(prefix="raytune-opt-hf-smoke-") as out_dir:
        kwargs = {"per_device_eval_batch_size": 8, **(config["train"].get("args") or {})}
        kwargs.update(output_dir=out_dir, max_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                      use_cpu=True, seed=int(config["seed"]))
        args = transformers.TrainingArguments(**kwargs)
        eval_items = trainer_data["eval_dataset"]
        trainer = transformers.Trainer(
            model=model.hf, args=args, train_dataset=trainer_data["train_dataset"],
            eval_dataset=Subset(eval_items, range(min(len(eval_items), args.per_device_eval_batch_size))),
            data_collator=trainer_data.get("data_collator"), compute_metrics=trainer_data.get("compute_metrics"))
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        trainer.train()
        metrics = trainer.evaluate()
    return numbers({k: v for k, v in metrics.items() if k not in _DROPPED})

