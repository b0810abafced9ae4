"""DeepSpeed's config as a trial gets it, and DeepSpeed's own check of it, without torch.

``train.deepspeed`` is DeepSpeed's own config, passed through; the recipe owns a few of its
keys (:data:`RECIPE_OWNED`) and writes them itself (:func:`build_config`). Validation reads
this module (the keys the spec may not set there, the merged config DeepSpeed's classes must
accept) as the trial does (:mod:`raytune_opt.strategies.deepspeed`), so it lives apart from
the strategy: importing it imports neither torch nor DeepSpeed (:func:`check_config` imports
DeepSpeed when called).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from raytune_opt.recipe.errors import RecipeConfigError


INSTALL = "pip install 'raytune-opt[deepspeed]'"


#: DeepSpeed config keys the recipe sets, and the spec key that sets each.
RECIPE_OWNED = {
    "train_micro_batch_size_per_gpu": "train.batch_size",
    "train_batch_size": "train.batch_size",  # = batch_size x grad_accum_steps x num_workers
    "gradient_accumulation_steps": "train.grad_accum_steps",
    "gradient_clipping": "train.grad_clip_norm",
    "bf16": "train.precision",
    "bfloat16": "train.precision",  # DeepSpeed's older name for bf16
    "fp16": "train.precision",
    "amp": "train.precision",
    "torch_autocast": "train.precision",
    "optimizer": "train.optimizer",
    "scheduler": "train.lr_schedule",
}


# DeepSpeed keys whose default we change; the spec may still set them.
_DEFAULTS = {
    "zero_allow_untested_optimizer": True,  # the client optimizer is the recipe's choice (sgd, rmsprop...)
    "steps_per_print": 2**31 - 1,  # the loop reports its own metrics
}


def recipe_config(train_cfg: dict) -> dict:
    """The DeepSpeed settings that follow from the recipe's own keys."""
    precision = train_cfg["precision"]
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(train_cfg["batch_size"]),
        "gradient_accumulation_steps": int(train_cfg["grad_accum_steps"]),
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
    }
    if train_cfg["grad_clip_norm"] is not None:
        cfg["gradient_clipping"] = float(train_cfg["grad_clip_norm"])
    return cfg


def build_config(train_cfg: dict) -> dict:
    """DeepSpeed's config for a trial: ``train.deepspeed`` merged with what the recipe owns.

    Raises:
        RecipeConfigError: ``train.deepspeed`` sets a key the recipe owns (``validate``
            reports this first; see :func:`conflicts`).
    """
    user = copy.deepcopy(train_cfg.get("deepspeed") or {})
    clash = conflicts(user)
    if clash:
        ds_key, ours = clash[0]
        raise RecipeConfigError(f"train.deepspeed.{ds_key}: the recipe sets it from {ours} (got "
                                f"{user[ds_key]!r}); remove train.deepspeed.{ds_key} and set {ours} instead")
    return {**_DEFAULTS, **user, **recipe_config(train_cfg)}


def conflicts(user_cfg: dict) -> list[tuple[str, str]]:
    """``(deepspeed key, recipe key)`` for every key of ``user_cfg`` the recipe owns."""
    return [(key, RECIPE_OWNED[key]) for key in user_cfg if key in RECIPE_OWNED]


def import_deepspeed():
    """Import DeepSpeed without its accelerator-detection warning on stdout.

    Raises:
        MissingDependencyError: DeepSpeed is not installed (with the install command).
    """
    from raytune_opt import _imports

    ds_logger = logging.getLogger("DeepSpeed")
    quiet = _DropMessage("Setting accelerator to CPU")
    ds_logger.addFilter(quiet)
    try:
        return _imports.require("deepspeed", "train.strategy: deepspeed")
    finally:
        ds_logger.removeFilter(quiet)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def check_config(config: dict) -> list[tuple[tuple, str]]:
    """Check a merged DeepSpeed config with DeepSpeed's own config classes.

    Returns:
        ``(path inside the config, what is wrong)`` for the first problem DeepSpeed finds
        (its classes stop at the first bad section), or an empty list.
    """
    import_deepspeed()
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(copy.deepcopy(config))
    except Exception as exc:  # pydantic's ValidationError, or DeepSpeed's own asserts/ValueErrors
        errors = getattr(exc, "errors", None)
        if callable(errors):
            return [(_locate(config, tuple(err.get("loc", ()))), _pydantic_message(err)) for err in errors()]
        text = str(exc).strip().splitlines()
        return [((), f"DeepSpeed rejects the config: {text[0] if text else type(exc).__name__}")]
    return []


def _locate(config: dict, loc: tuple) -> tuple:
    """The full path of a pydantic error ``loc`` (relative to the section that failed)."""
    if not loc:
        return ()

    def has(node: Any, path: tuple) -> bool:
        for part in path:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    if has(config, loc):
        return loc
    for key, value in config.items():
        if isinstance(value, dict) and has(value, loc):
            return (key, *loc)
    return loc


def _pydantic_message(err: dict) -> str:
    msg = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        msg = "DeepSpeed has no such key"
    got = err.get("input")
    return f"{msg} (got {got!r})" if not isinstance(got, dict) else msg
