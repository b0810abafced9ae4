"""DeepSpeed's config as a trial gets it, and DeepSpeed's own check of it, without torch.

``train.deepspeed`` is DeepSpeed's own config, passed through; the recipe owns a few of its
keys (:data:`RECIPE_OWNED`) and writes them itself (:func:`build_config`). Validation reads
this module (the keys the spec may not set there, the merged config DeepSpeed's classes must
accept) as the trial does (:mod:`raytune_opt.strategies.deepspeed`), so it lives apart from
the strategy: importing it imports neither torch nor DeepSpeed (:func:`check_config` imports
DeepSpeed when called, and validation calls it in a child interpreter unless torch is
loaded already: :func:`check_configs`). Its :func:`check` is the deepspeed strategy's rules on a spec
(``registry.STRATEGIES``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.registry import Finding, SpecView


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


@dataclasses.dataclass(frozen=True)
class Ownership:
    """The DeepSpeed config keys a loop sets itself, and from what.

    Attributes:
        owned: DeepSpeed key -> the spec key that sets it (refused in ``train.deepspeed``).
        values: ``train`` section -> the settings it gives DeepSpeed, as values (what the
            config check judges them with).
        reads: the spec keys those values come from (a finding's ``reads``).
    """

    owned: Mapping[str, str]
    values: Callable[[dict], dict]
    reads: str


# DeepSpeed keys whose default we change; the spec may still set them.
DEFAULTS = {
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
    user = train_cfg.get("deepspeed") or {}
    clash = conflicts(user)
    if clash:
        ds_key, ours = clash[0]
        raise RecipeConfigError(f"train.deepspeed.{ds_key}: the recipe sets it from {ours} (got "
                                f"{user[ds_key]!r}); remove train.deepspeed.{ds_key} and set {ours} instead")
    return merged_config(user, recipe_config(train_cfg))


def merged_config(user: dict, owned: dict) -> dict:
    """DeepSpeed's config: our :data:`DEFAULTS`, then ``user``'s keys (``train.deepspeed``),
    then ``owned``, what the loop sets from its own keys; a deep copy (DeepSpeed and the
    Trainer fill their "auto" values in place)."""
    return copy.deepcopy({**DEFAULTS, **user, **owned})


def zero_stage(config: dict) -> int:
    """The ZeRO stage of a DeepSpeed config (0 when it names none)."""
    return int((config.get("zero_optimization") or {}).get("stage", 0))


def conflicts(user_cfg: dict, owned: Mapping[str, str] = RECIPE_OWNED) -> list[tuple[str, str]]:
    """``(deepspeed key, spec key)`` for every key of ``user_cfg`` the loop owns (``owned``:
    the built-in recipe's by default)."""
    return [(key, owned[key]) for key in user_cfg if key in owned]


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


class ConfigCheckError(RuntimeError):
    """DeepSpeed's config check could not run (its child interpreter failed or hung)."""


#: The child's limit: it imports torch and DeepSpeed (a few seconds here); a hang must end.
CHECK_TIMEOUT_S = 300


def check_configs(configs: list[dict]) -> list[list[tuple[tuple, str]]]:
    """:func:`check_config` of each of ``configs``, in order.

    DeepSpeed imports torch (a few seconds and about a gigabyte): a process that has imported
    neither (``raytune-opt validate``, the API's validation) asks a child interpreter, so that
    validation keeps them out of it; a process that holds torch already (a trial, a notebook,
    the test suite) checks in-process, where a child would only add its start-up.

    Raises:
        ConfigCheckError: the child failed (with its last line of stderr) or ran past
            :data:`CHECK_TIMEOUT_S`.
    """
    if "torch" in sys.modules or "deepspeed" in sys.modules:
        return [check_config(config) for config in configs]
    root = str(Path(__file__).resolve().parents[2])  # the child imports this very package
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
    try:
        proc = subprocess.run([sys.executable, "-c", f"from {__name__} import _child; _child()"],
                              input=json.dumps(configs, default=str), capture_output=True, text=True, env=env,
                              timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConfigCheckError(f"it ran past {CHECK_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise ConfigCheckError(lines[-1] if lines else f"exit status {proc.returncode}")
    return [[(tuple(where), what) for where, what in found] for found in json.loads(proc.stdout)]


def _child() -> None:
    """:func:`check_configs` in a child: configs as JSON on stdin, their problems as JSON on stdout."""
    configs = json.load(sys.stdin)
    with contextlib.redirect_stdout(sys.stderr):  # what DeepSpeed prints must not garble the answer
        found = [check_config(config) for config in configs]
    json.dump(found, sys.stdout)


# ---------------------------------------------------------------- the spec's rules

DEEPSPEED_DOCS = "see https://www.deepspeed.ai/docs/config-json/"
# The recipe's keys build_config writes into the merged config: a rule over the merged config
# would only repeat a problem already reported with one of them.
_RECIPE_KEYS = "train.batch_size train.grad_accum_steps train.precision train.grad_clip_norm"
#: What the built-in recipe (and a user loop on the trial context) sets in DeepSpeed's config.
RECIPE = Ownership(RECIPE_OWNED, recipe_config, _RECIPE_KEYS)


def ownership(train: dict) -> Ownership | None:
    """What ``train.loop`` sets in DeepSpeed's config: the recipe's keys for the built-in loop
    and user loops, a trainer's own (its ``LOOPS`` entry's ``deepspeed`` meta: the import path of a function that returns it)
    for a trainer that takes DeepSpeed; None for a trainer that does not (its rules refuse
    ``train.strategy``)."""
    from raytune_opt import registry

    entry = registry.LOOPS.get(train["loop"])
    if entry is None or entry.name == "builtin":
        return RECIPE
    path = entry.meta.get("deepspeed")
    return registry.import_target(path)() if path else None


def check(view: SpecView) -> list[Finding]:
    """The deepspeed strategy's rules on a spec (its registry entry's ``check``; validation
    runs it when the sweep may use DeepSpeed and train.deepspeed is valid).

    train.deepspeed is DeepSpeed's own config: the keys the recipe owns may not be set there
    (fixed or searched), and the merged config must pass DeepSpeed's own config classes (when
    DeepSpeed is installed; a DeepSpeed spec without it is a problem)."""
    from raytune_opt import _imports
    from raytune_opt.spec.checker import fmt

    train, space, out = view.data["train"], view.space, []
    owner = ownership(train)
    if owner is None:
        return []  # a trainer without DeepSpeed: its own rules refuse train.strategy
    who = "the recipe" if owner is RECIPE else f"train.loop {train['loop']}"
    for key, ours in conflicts(train["deepspeed"], owner.owned):
        out.append(Finding(("train", "deepspeed", key), f"{who} sets train.deepspeed.{key} from {ours} "
                           f"(got {fmt(train['deepspeed'][key])})", f"remove train.deepspeed.{key} and set {ours} instead"))
    searched = [p for p in space.params if p.key.startswith("train.deepspeed.")]
    for p in searched:
        top = p.key.split(".")[2]
        if top in owner.owned:
            ours = owner.owned[top]
            out.append(Finding(("space", p.key), f"{who} sets train.deepspeed.{top} from {ours} (got {fmt(p.key)})",
                               f"search {ours} instead", at=p.key))
    if not _imports.is_available("deepspeed"):
        out.append(Finding(("train", "strategy"), "deepspeed trials need the deepspeed package, which is not installed "
                           "(got strategy=deepspeed)", f"install it with: {INSTALL}"))
        return out
    # Clashing keys are reported above; the rest of the config is still checked.
    own = {k: v for k, v in train["deepspeed"].items() if k not in owner.owned}
    base = merged_config(own, owner.values(train))
    # Every option of a searched DeepSpeed key must pass too (numeric ranges are not sampled
    # here). DeepSpeed judges them with the merged config, all at once (one child at most).
    options = [(p, option, _with_option(base, p.key, option)) for p in searched
               if p.domain.categorical and p.key.split(".")[2] not in owner.owned for option in p.domain.args]
    try:
        verdicts = check_configs([base, *(config for _, _, config in options)])
    except ConfigCheckError as exc:
        return out + [Finding(("train", "strategy"), f"DeepSpeed's own config check did not run: {exc} (got "
                              "strategy=deepspeed)", "check that DeepSpeed imports here: python -c 'import deepspeed'",
                              reads=owner.reads)]
    found = verdicts[0]
    for path, what in found:
        out.append(Finding(("train", "deepspeed", *path), what, DEEPSPEED_DOCS, reads=owner.reads))
    if found:
        return out
    rejected = set()  # the first option DeepSpeed rejects is reported, for each key
    for (p, option, _), found in zip(options, verdicts[1:]):
        if found and p.key not in rejected:
            rejected.add(p.key)
            where, what = found[0]
            out.append(Finding(("space", p.key), f"DeepSpeed rejects option {fmt(option)}: {what}", DEEPSPEED_DOCS,
                               reads=owner.reads, at=p.key))
    return out


def _with_option(config: dict, key: str, option: Any) -> dict:
    """A copy of ``config`` with the searched ``train.deepspeed.<path>`` key set to ``option``."""
    config = json.loads(json.dumps(config))  # a deep copy of plain values
    node = config
    *parents, leaf = key.split(".")[2:]
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = option
    return config
