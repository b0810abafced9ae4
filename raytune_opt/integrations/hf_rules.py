"""Validation rules of ``train.loop: hf_trainer`` (imports neither torch nor transformers).

What ``transformers.Trainer`` owns (its optimizer and LR schedule, set through
``train.args``) is the user's; what the spec's own ``train.*`` keys would set and the
Trainer does not read is refused, not silently dropped. ``train.args`` keys are checked
against :data:`TRAINING_ARGS` and ``train.peft`` keys against :data:`LORA_PARAMS`, the
arguments of ``transformers.TrainingArguments`` and ``peft.LoraConfig`` written out here
because importing transformers (and torch) takes seconds, too slow for ``validate``; a test
compares the lists with the installed signatures.
"""

from __future__ import annotations

from raytune_opt.strategies.deepspeed_config import Ownership, merged_config

__all__ = ["TRAINING_ARGS", "LORA_PARAMS", "OWNED", "OWNED_PEFT", "READ", "DEEPSPEED_OWNED", "deepspeed_values",
           "deepspeed_config", "deepspeed_keys", "check"]

#: ``transformers.TrainingArguments``' arguments (transformers 5.25).
TRAINING_ARGS = (
    "output_dir", "per_device_train_batch_size", "num_train_epochs", "max_steps", "learning_rate",
    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim", "optim_args", "weight_decay", "adam_beta1",
    "adam_beta2", "adam_epsilon", "optim_target_modules", "gradient_accumulation_steps",
    "average_tokens_across_devices", "max_grad_norm", "label_smoothing_factor", "bf16", "fp16", "bf16_full_eval",
    "fp16_full_eval", "tf32", "activation_checkpointing", "activation_checkpointing_kwargs", "gradient_checkpointing",
    "gradient_checkpointing_kwargs", "torch_compile", "torch_compile_backend", "torch_compile_mode",
    "use_liger_kernel", "liger_kernel_config", "use_cache", "neftune_noise_alpha", "torch_empty_cache_steps",
    "auto_find_batch_size", "logging_strategy", "logging_steps", "logging_first_step", "log_on_each_node",
    "logging_nan_inf_filter", "include_num_input_tokens_seen", "log_level", "log_level_replica", "disable_tqdm",
    "report_to", "run_name", "project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "eval_strategy", "eval_steps", "eval_delay", "per_device_eval_batch_size", "prediction_loss_only",
    "eval_on_start", "eval_do_concat_batches", "eval_use_gather_object", "eval_accumulation_steps",
    "include_for_metrics", "batch_eval_metrics", "save_only_model", "save_strategy", "save_steps",
    "save_on_each_node", "save_total_limit", "enable_jit_checkpoint", "push_to_hub", "hub_token",
    "hub_private_repo", "hub_model_id", "hub_strategy", "hub_always_push", "hub_revision", "load_best_model_at_end",
    "metric_for_best_model", "greater_is_better", "ignore_data_skip", "restore_callback_states_from_checkpoint",
    "full_determinism", "seed", "data_seed", "use_cpu", "accelerator_config", "parallelism_config",
    "dataloader_drop_last", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "dataloader_in_order",
    "remove_unused_columns", "label_names", "train_sampling_strategy", "length_column_name",
    "ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "ddp_static_graph", "ddp_backend",
    "ddp_timeout", "fsdp", "fsdp_config", "deepspeed", "debug", "skip_memory_metrics", "do_train", "do_eval",
    "do_predict", "resume_from_checkpoint", "local_rank",
)

#: ``peft.LoraConfig``'s arguments (peft 0.21).
LORA_PARAMS = (
    "task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
    "inference_mode", "r", "target_modules", "exclude_modules", "lora_alpha", "lora_dropout", "fan_in_fan_out",
    "bias", "use_rslora", "modules_to_save", "init_lora_weights", "layers_to_transform", "layers_pattern",
    "rank_pattern", "alpha_pattern", "megatron_config", "megatron_core", "trainable_token_indices", "loftq_config",
    "eva_config", "corda_config", "lora_ga_config", "use_dora", "velora_config", "alora_invocation_tokens",
    "use_qalora", "qalora_group_size", "monteclora_config", "layer_replication", "runtime_config", "lora_bias",
    "target_parameters", "use_bdlora", "arrow_config", "kasa_config", "ensure_weight_tying",
)

_EPOCHS = "train.epochs (the schedulers' time unit)"
#: TrainingArguments the sweep sets itself, and what sets them instead.
OWNED = {
    "num_train_epochs": _EPOCHS,
    "max_steps": _EPOCHS,
    "output_dir": "storage.path",
    "eval_strategy": "the sweep (it evaluates and reports every epoch)",
    "eval_steps": "the sweep (it evaluates and reports every epoch)",
    "eval_delay": "the sweep (it evaluates and reports every epoch)",
    "eval_on_start": "the sweep (it evaluates and reports every epoch)",
    "logging_strategy": "the sweep (it logs every epoch)",
    "save_strategy": "train.checkpoint (best.pt / last.pt in the sweep's format)",
    "save_steps": "train.checkpoint",
    "save_total_limit": "train.checkpoint",
    "save_only_model": "train.checkpoint",
    "save_on_each_node": "train.checkpoint",
    "enable_jit_checkpoint": "train.checkpoint",
    "load_best_model_at_end": "the sweep (best.pt holds the best epoch; promotion takes it)",
    "metric_for_best_model": "search.metric",
    "greater_is_better": "search.mode",
    "resume_from_checkpoint": "raytune-opt resume (the trial continues from its last.pt)",
    "ignore_data_skip": "raytune-opt resume",
    "restore_callback_states_from_checkpoint": "raytune-opt resume",
    "report_to": "tracking (the sweep's results, TensorBoard, MLflow, W&B)",
    "run_name": "tracking", "project": "tracking", "trackio_space_id": "tracking", "trackio_bucket_id": "tracking",
    "trackio_static_space_id": "tracking",
    "push_to_hub": "promotion (the best trial's model, merged and converted)", "hub_token": "promotion",
    "hub_private_repo": "promotion", "hub_model_id": "promotion", "hub_strategy": "promotion",
    "hub_always_push": "promotion", "hub_revision": "promotion",
    "seed": "the spec's seed", "data_seed": "the spec's seed", "full_determinism": "the spec's seed",
    "use_cpu": "resources.gpus_per_worker", "local_rank": "resources.num_workers",
    "ddp_backend": "resources.num_workers (Ray Train's process group)",
    "fsdp": "resources.num_workers (DDP; FSDP is not wired for hf_trainer yet)",
    "fsdp_config": "resources.num_workers (DDP; FSDP is not wired for hf_trainer yet)",
    "deepspeed": "train.strategy: deepspeed with train.deepspeed (DeepSpeed's config)",
    "parallelism_config": "resources.num_workers",
    "disable_tqdm": "the sweep (no progress bars in trial logs)",
    "do_train": "the sweep", "do_eval": "the sweep", "do_predict": "the sweep (the test split is measured after it)",
    "auto_find_batch_size": "train.args.per_device_train_batch_size (a trial that runs out of memory errors)",
}

#: LoraConfig arguments the sweep sets itself.
OWNED_PEFT = {
    "inference_mode": "the sweep (trials train the adapter; promotion merges it)",
    "peft_type": "train.peft (LoRA)",
    "base_model_name_or_path": "model.name and model.args (the model the adapter is on)",
    "revision": "model.name and model.args",
    "auto_mapping": "peft", "peft_version": "peft",
}

#: Keys transformers no longer takes, with the one that took their place.
RENAMED = {
    "warmup_ratio": "transformers 5 folds it into warmup_steps: a float below 1 is a ratio (warmup_steps: 0.1);",
    "evaluation_strategy": "it is eval_strategy, which the sweep sets;",
    "no_cuda": "resources.gpus_per_worker sets the device;",
}

#: The ``train`` keys a Hugging Face trial reads; every other one is refused when given.
READ = ("loop", "epochs", "limit_batches", "checkpoint", "args", "peft", "strategy", "deepspeed")

#: DeepSpeed config keys the Trainer fills from its TrainingArguments (``"auto"``), and the
#: ``train.args`` key that sets each; ``train.deepspeed`` may not set them. DeepSpeed's own
#: optimizer and schedule are refused too: the Trainer's (``train.args.optim``,
#: ``lr_scheduler_type``) run under ZeRO as they do without it, and DeepSpeed's fused Adam would
#: JIT-compile on CPU (about a minute, ../FACTS).
DEEPSPEED_OWNED = {
    "train_micro_batch_size_per_gpu": "train.args.per_device_train_batch_size",
    "train_batch_size": "train.args.per_device_train_batch_size",  # x gradient_accumulation_steps x workers
    "gradient_accumulation_steps": "train.args.gradient_accumulation_steps",
    "gradient_clipping": "train.args.max_grad_norm",
    "bf16": "train.args.bf16", "bfloat16": "train.args.bf16", "torch_autocast": "train.args.bf16",
    "fp16": "train.args.fp16", "amp": "train.args.fp16",
    "optimizer": "train.args.optim (and learning_rate, weight_decay, adam_beta1...)",
    "scheduler": "train.args.lr_scheduler_type (and warmup_steps)",
}
#: TrainingArguments' defaults (transformers 5.25) of what fills DeepSpeed's "auto" keys.
DEEPSPEED_ARG_DEFAULTS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_grad_norm": 1.0,
                          "bf16": False, "fp16": False}
_AUTO = {"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
         "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}


def deepspeed_values(train: dict) -> dict:
    """The DeepSpeed settings ``train.args`` gives (what the Trainer fills into the ``"auto"``
    keys), as values: what validation's DeepSpeed config check judges."""
    args = {**DEEPSPEED_ARG_DEFAULTS, **(train.get("args") or {})}
    values = {"train_micro_batch_size_per_gpu": int(args["per_device_train_batch_size"]),
              "gradient_accumulation_steps": int(args["gradient_accumulation_steps"]),
              "bf16": {"enabled": bool(args["bf16"])}, "fp16": {"enabled": bool(args["fp16"])}}
    if args["max_grad_norm"] is not None:
        values["gradient_clipping"] = float(args["max_grad_norm"])
    return values


def deepspeed_config(train: dict) -> dict:
    """DeepSpeed's config for a trial (``TrainingArguments(deepspeed=...)``): ``train.deepspeed``
    with ``"auto"`` for what the Trainer fills from ``train.args``."""
    user = {k: v for k, v in (train.get("deepspeed") or {}).items() if k not in DEEPSPEED_OWNED}
    return merged_config(user, _AUTO)


def deepspeed_keys() -> Ownership:
    """What this loop sets in DeepSpeed's config (its ``LOOPS`` entry's ``deepspeed`` meta)."""
    return Ownership(DEEPSPEED_OWNED, deepspeed_values, "train.args")

_OWNER = {  # what takes the place of a built-in train key, for the fix
    "optimizer": "set train.args.optim, learning_rate, weight_decay, adam_beta1...",
    "lr_schedule": "set train.args.lr_scheduler_type and warmup_steps",
    "batch_size": "set train.args.per_device_train_batch_size (search it as train.args.per_device_train_batch_size)",
    "precision": "set train.args.bf16 (or fp16 on a GPU)",
    "grad_accum_steps": "set train.args.gradient_accumulation_steps",
    "grad_clip_norm": "set train.args.max_grad_norm",
    "loss": "the model computes its loss from the labels (or override Trainer.compute_loss)",
    "augment": "augment in your data function",
    "early_stopping": "use a scheduler (ASHA) to stop trials early",
    "trainer": "those are Lightning's Trainer arguments; Hugging Face's go in train.args",
}


def check(view) -> list:
    """The rules of ``train.loop: hf_trainer`` (``validate`` calls it).

    Args:
        view: a :class:`raytune_opt.registry.SpecView`.

    Returns:
        :class:`raytune_opt.registry.Finding` s.
    """
    from raytune_opt.integrations import _rules

    out = []
    for module in ("transformers", "peft", "accelerate"):
        out += _rules.missing_extra(view, module, "hf_trainer", "hf")
    out += _rules.refuse_unread(view, READ, _OWNER, "Hugging Face's Trainer", "hf_trainer",
                                "the Trainer or your model owns it")
    out += _rules.check_arguments(view, "args", TRAINING_ARGS, OWNED, "transformers.TrainingArguments", RENAMED)
    out += _rules.check_arguments(view, "peft", LORA_PARAMS, OWNED_PEFT, "peft.LoraConfig")
    return out
