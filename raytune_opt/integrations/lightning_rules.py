"""Validation rules of ``train.loop: lightning`` (imports neither torch nor Lightning).

What Lightning owns (the optimizers of ``configure_optimizers``, the module's LR schedule,
its precision and gradient settings under ``train.trainer``) is the user's; what the spec's
own ``train.*`` keys would set and Lightning does not read is refused, not silently dropped.
``train.trainer`` keys are checked against :data:`TRAINER_PARAMS`, the keyword arguments
of ``lightning.Trainer`` written out here because importing Lightning (and torch) takes
6.4 s on a quiet 2-core machine (torch alone 2.6 s; ~19 s measured under load), too slow
for ``validate``; a test compares the list with the installed ``lightning.Trainer``
signature.
"""

from __future__ import annotations

__all__ = ["TRAINER_PARAMS", "OWNED", "READ", "check"]

#: ``lightning.Trainer.__init__``'s keyword arguments (lightning 2.6).
TRAINER_PARAMS = (
    "accelerator", "strategy", "devices", "num_nodes", "precision", "logger", "callbacks", "fast_dev_run",
    "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches", "limit_val_batches",
    "limit_test_batches", "limit_predict_batches", "overfit_batches", "val_check_interval", "check_val_every_n_epoch",
    "num_sanity_val_steps", "log_every_n_steps", "enable_checkpointing", "enable_progress_bar",
    "enable_model_summary", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
    "deterministic", "benchmark", "inference_mode", "use_distributed_sampler", "profiler", "detect_anomaly",
    "barebones", "plugins", "sync_batchnorm", "reload_dataloaders_every_n_epochs", "default_root_dir",
    "enable_autolog_hparams", "model_registry",
)

#: Trainer arguments the sweep sets itself, and what sets them instead.
OWNED = {
    "max_epochs": "train.epochs (the schedulers' time unit)",
    "min_epochs": "train.epochs",
    "max_steps": "train.epochs",
    "min_steps": "train.epochs",
    "max_time": "search.budget or the scheduler",
    "accelerator": "resources.gpus_per_worker",
    "devices": "resources.num_workers and resources.gpus_per_worker",
    "num_nodes": "resources.num_workers",
    "strategy": "resources.num_workers (Ray's DDP strategy for several workers)",
    "plugins": "Ray's environment plugin (several workers)",
    "logger": "the sweep's results and tracking",
    "callbacks": "the sweep (it reports every epoch through its own callback)",
    "enable_checkpointing": "train.checkpoint (best.pt / last.pt in the sweep's format)",
    "default_root_dir": "storage.path",
    "fast_dev_run": "raytune-opt validate --smoke (one training and one validation step)",
}

#: The ``train`` keys a Lightning trial reads; every other one is refused when given.
READ = ("loop", "epochs", "limit_batches", "checkpoint", "trainer")

_OWNER = {  # what takes the place of a built-in train key, for the fix
    "optimizer": "return the optimizer from your LightningModule's configure_optimizers",
    "lr_schedule": "return the schedule from configure_optimizers",
    "batch_size": "give it to your LightningDataModule in data.args (search it as data.args.batch_size)",
    "precision": "set train.trainer.precision (e.g. bf16-mixed)",
    "grad_accum_steps": "set train.trainer.accumulate_grad_batches",
    "grad_clip_norm": "set train.trainer.gradient_clip_val",
    "loss": "compute the loss in your LightningModule's training_step",
    "augment": "augment in your LightningDataModule",
    "early_stopping": "use a scheduler (ASHA) to stop trials early",
    "strategy": "several workers (resources.num_workers) train with Ray's DDP strategy; Lightning's DeepSpeed "
                "strategy runs on CUDA GPUs only and is not offered (see the README's Lightning section)",
    "deepspeed": "several workers (resources.num_workers) train with Ray's DDP strategy; Lightning's DeepSpeed "
                 "strategy runs on CUDA GPUs only and is not offered (see the README's Lightning section)",
}


def check(view) -> list:
    """The rules of ``train.loop: lightning`` (``validate`` calls it).

    Args:
        view: a :class:`raytune_opt.registry.SpecView`.

    Returns:
        :class:`raytune_opt.registry.Finding` s.
    """
    from raytune_opt.integrations import _rules
    from raytune_opt.registry import Finding
    from raytune_opt.spec.checker import fmt

    out = _rules.missing_extra(view, "lightning", "lightning", "lightning")
    out += _rules.refuse_unread(view, READ, _OWNER, "Lightning's Trainer", "lightning", "the LightningModule owns it")
    out += _rules.check_arguments(view, "trainer", TRAINER_PARAMS, OWNED, "lightning.Trainer")
    train = view.data["train"]
    trainer = train.get("trainer") or {}
    if train["limit_batches"] is not None and "limit_train_batches" in trainer:
        out.append(Finding(("train", "trainer", "limit_train_batches"), f"train.limit_batches sets it already (got "
                           f"{fmt(trainer['limit_train_batches'])} and train.limit_batches {train['limit_batches']})",
                           "keep one of the two"))
    return out
