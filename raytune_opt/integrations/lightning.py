"""``train.loop: lightning``: a LightningModule and a LightningDataModule, trained by
Lightning's ``Trainer`` inside a trial.

The loop is written against :class:`~raytune_opt.recipe.context.TrialContext`, so the
trial's checkpoints (best.pt / last.pt: the module's state dict, the optimizer and LR
schedule states, a model spec that rebuilds the module), schedulers, resume, PBT, the
report and promotion work as for any loop:

- ``model.name`` names the LightningModule (with ``model.args``; built by
  ``ctx.build_model()``, so ``load_model`` and promotion rebuild it); ``data.dataset`` names
  the LightningDataModule (with ``data.args``), which the trainer fits on. The same data
  module, read through :func:`datamodule_bundle`, gives the sweep its data facts (classes,
  input shape, ``input_example``) and promotion its calibration and test data.
- ``Trainer(max_epochs=train.epochs, **train.trainer)`` with no logger and no checkpointing
  of its own; :class:`_ReportEpoch` reports every epoch's ``callback_metrics`` (what the
  module ``self.log``s) with the epoch through ``ctx.report``.
- With several workers (``resources.num_workers``) each rank runs the Trainer the way Ray
  documents it: ``RayDDPStrategy``, ``RayLightningEnvironment`` and ``prepare_trainer``.

The validation rules are in :mod:`raytune_opt.integrations.lightning_rules`.
"""

from __future__ import annotations

import logging
from typing import Any

from raytune_opt import registry
from raytune_opt._imports import require
from raytune_opt.integrations._common import TrainerOwned, numbers, restore_keeping_config
from raytune_opt.recipe.bundle import DataBundle, _is_datamodule
from raytune_opt.recipe.errors import DataError, RecipeConfigError
from raytune_opt.spec.view import view

__all__ = ["lightning_loop", "datamodule_bundle", "smoke_metrics"]


def _pl():
    pl = require("lightning.pytorch", "train.loop: lightning")
    # Its per-fit notices (accelerators found, tips) would repeat in every trial's log.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    return pl


def datamodule_bundle(dm: Any, label: str) -> DataBundle:
    """The data sets of a LightningDataModule's loaders, as every loop and promotion take them.

    ``test`` is its ``test_dataloader``'s data set when it defines one; ``input_example``
    and ``num_classes`` are its attributes of those names when it has them.

    Raises:
        DataError: one of its hooks raised.
    """
    pl = _pl()
    try:
        dm.prepare_data()
        dm.setup("fit")
        train, val = dm.train_dataloader(), dm.val_dataloader()
        test = None
        if type(dm).test_dataloader is not pl.LightningDataModule.test_dataloader:  # it defines one
            dm.setup("test")
            test = dm.test_dataloader().dataset
    except Exception as exc:  # the user's hooks: one line naming where; the cause keeps the rest
        from raytune_opt.errors import describe_raised

        raise DataError(f"data.dataset {label}: the LightningDataModule raised {describe_raised(exc)}; fix its "
                        f"prepare_data/setup/*_dataloader hooks") from exc
    return DataBundle(train=train.dataset, val=val.dataset, test=test, num_classes=getattr(dm, "num_classes", None),
                      input_example=getattr(dm, "input_example", None))


def _datamodule(config: dict, dirs=()) -> Any:
    """A fresh LightningDataModule as ``data.dataset`` names it, called as a data set callable is
    (``data.args`` plus whichever of seed, val_fraction, test_fraction it names, as
    :func:`raytune_opt.recipe.bundle.load_bundle` calls it) for the trainer to fit on."""
    spec = view((), config)
    data = spec.data
    fn = registry.import_target(registry.DATASETS.target_of(data.dataset), dirs)
    # test_fraction: absent (an older caller's spec) means no test split, as load_bundle reads it.
    injected = {"seed": int(spec.seed), "val_fraction": float(data.val_fraction),
                "test_fraction": float(config["data"].get("test_fraction") or 0.0)}
    sig = registry.signature_of(fn)
    dm = fn(**dict(data.args), **{k: v for k, v in injected.items() if sig is not None and k in sig.names})
    if not _is_datamodule(dm):
        raise RecipeConfigError(f"data.dataset {data.dataset}: train.loop lightning needs a LightningDataModule "
                                f"(got {type(dm).__name__}); return a LightningDataModule, or use train.loop: builtin")
    return dm


class _LightningStrategy(TrainerOwned):
    """What the context's checkpoints read, when Lightning owns the model and its optimizers:
    the module's weights, and the trainer's optimizer and LR schedule states (restored when
    the trial resumes, as Lightning's own checkpoint restore does)."""

    name = loop = "lightning"

    def optimizer_state_dict(self) -> dict | None:
        t = self.trainer
        return {"optimizers": [o.state_dict() for o in t.optimizers],
                "lr_schedulers": [c.scheduler.state_dict() for c in t.lr_scheduler_configs]}

    def restore(self, trainer) -> None:
        """Load the resumed checkpoint's optimizer and schedule states into the trainer's."""
        state = (self.resume or {}).get("optimizer_state")
        if not state:
            return

        def load():
            for opt, saved in zip(trainer.optimizers, state["optimizers"], strict=True):
                opt.load_state_dict(saved)
            for config, saved in zip(trainer.lr_scheduler_configs, state["lr_schedulers"], strict=True):
                # Saved at on_train_epoch_end, after the training epoch loop stepped a per-epoch
                # schedule (ReduceLROnPlateau steps later: its next step reads the next epoch's metric).
                config.scheduler.load_state_dict(saved)

        # A PBT exploit's own config (the module's lr...) over the donor's state.
        restore_keeping_config(trainer.optimizers, [c.scheduler for c in trainer.lr_scheduler_configs], load)


def _callback(ctx, strategy: _LightningStrategy):
    pl = _pl()

    class _ReportEpoch(pl.Callback):
        """Reports each epoch's ``callback_metrics`` to the sweep (and so checkpoints it)."""

        def on_fit_start(self, trainer, pl_module) -> None:
            # Lightning makes the first epoch's loader iterator before on_train_epoch_start
            # (FitLoop.setup_data) and a later epoch's after it (the epoch loop's on_run_start; a
            # resumed fit makes it at both): seeding at both draws every epoch's shuffle, resumed
            # or not, from the same state (the epoch's seed, then the same draws).
            ctx.begin_epoch(trainer.current_epoch + 1)

        def on_train_start(self, trainer, pl_module) -> None:
            strategy.trainer = trainer
            strategy.restore(trainer)

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            ctx.begin_epoch(trainer.current_epoch + 1)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            ctx.report(numbers(trainer.callback_metrics), epoch=trainer.current_epoch + 1)

    return _ReportEpoch()


def _trainer_kwargs(config: dict, ctx, callbacks: list) -> dict:
    train = config["train"]
    kwargs = {"max_epochs": ctx.epochs, "logger": False, "enable_checkpointing": False,
              "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
              "callbacks": callbacks}
    if train.get("limit_batches"):
        kwargs["limit_train_batches"] = int(train["limit_batches"])
    kwargs.update(train.get("trainer") or {})
    if ctx.world_size > 1:  # a Ray Train worker: Ray's documented Lightning set-up
        from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

        kwargs.update(strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()], devices="auto",
                      accelerator="auto")
    else:
        kwargs.update(accelerator="gpu" if ctx.device.type == "cuda" else "cpu", devices=1)
    return kwargs


def lightning_loop(config: dict, ctx) -> None:
    """The loop ``lightning``: fit the LightningModule ``model.name`` names on the
    LightningDataModule ``data.dataset`` names, reporting every epoch (see the module's doc)."""
    pl = _pl()
    model = ctx.build_model()
    if not isinstance(model, pl.LightningModule):
        raise RecipeConfigError(f"model.name {config['model']['name']}: train.loop lightning needs a LightningModule "
                                f"(got {type(model).__name__}); subclass lightning.LightningModule, or use "
                                f"train.loop: builtin")
    strategy = _LightningStrategy(ctx.session, config["train"])
    ctx.strategy = strategy  # the context's checkpoints read the module and the trainer's optimizers from it
    model = ctx.prepare_model(model, None)  # restores the weights when the trial resumes
    if ctx.start_epoch > ctx.epochs:
        return  # resumed from a finished run: the context reports its last epoch again
    trainer = pl.Trainer(**_trainer_kwargs(config, ctx, [_callback(ctx, strategy)]))
    if ctx.world_size > 1:
        from ray.train.lightning import prepare_trainer

        trainer = prepare_trainer(trainer)
    _start_at(trainer, ctx.start_epoch)
    trainer.fit(model, datamodule=_datamodule(config))


def _start_at(trainer, epoch: int) -> None:
    """Make the trainer's next epoch ``epoch`` (1-based), as Lightning's own checkpoint restore
    sets its fit loop's epoch counters: ``current_epoch`` is then the straight run's, so the
    distributed sampler's ``set_epoch``, ``check_val_every_n_epoch`` and the schedules'
    frequencies count as they did, and ``max_epochs`` stays ``train.epochs``."""
    progress = trainer.fit_loop.epoch_progress
    for tracker in (progress.total, progress.current):
        tracker.ready = tracker.started = tracker.processed = tracker.completed = epoch - 1


def smoke_metrics(model, config: dict, dirs=()) -> dict:
    """What the module logs in one training and one validation step (``validate --smoke``).

    Raises:
        RecipeConfigError: the model is not a LightningModule or the data not a LightningDataModule.
    """
    pl = _pl()
    if not isinstance(model, pl.LightningModule):
        raise RecipeConfigError(f"model.name {config['model']['name']}: train.loop lightning needs a LightningModule "
                                f"(got {type(model).__name__})")
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         **{k: v for k, v in (config["train"].get("trainer") or {}).items()
                            if k in ("precision", "gradient_clip_val", "accumulate_grad_batches")})
    with registry.code_path(dirs):
        trainer.fit(model, datamodule=_datamodule(config, dirs))
    return numbers(trainer.callback_metrics)
