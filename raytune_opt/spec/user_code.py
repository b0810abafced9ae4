"""User code a spec names by import path, checked against what the sweep will pass it.

A model, data set, optimizer or lr schedule given as ``module:callable`` (or a registered
entry that takes ``args``) must import, be callable and take its ``args`` and every searched
``<section>.args.*`` key by name, with every required parameter supplied; a user optimizer or
schedule may not be given the built-ins' settings; a user ``train.loop`` must take
``(config, ctx)``. Validation imports the user's module here (guarded: an exit or a hang is a
problem, not the end of the command). This module itself imports neither torch nor Ray.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from raytune_opt import registry
from raytune_opt.space import Param, Space
from raytune_opt.spec import schema
from raytune_opt.spec.checker import Checker, did_you_mean, fmt, values_of


class _UserKind(NamedTuple):
    """A section whose ``name`` key may be a user's callable with ``args`` (model, data,
    optimizer, lr schedule)."""

    section: str  # dotted: model, train.optimizer
    name_key: str  # model.name, data.dataset
    registry: registry.Registry
    injected: tuple[str, ...]  # what the callable gets besides its args, when its signature names it
    giver: str  # who gives the injected names
    builtin_reads: str  # what a built-in reads instead of args
    passes: str = ""  # the leading positional argument the recipe passes (an optimizer's params), if any
    # The section's other keys are the built-ins' settings: setting one for a user callable is
    # a problem (unless it is injected and the callable takes it).
    builtin_keys: bool = False


_MODEL = _UserKind("model", "name", registry.MODELS, registry.INJECTED, "the data set",
                   "model.width, model.dropout...")


_DATA = _UserKind("data", "dataset", registry.DATASETS, registry.DATA_INJECTED, "the spec",
                  "data.root, data.val_fraction...")


_OPTIMIZER = _UserKind("train.optimizer", "name", registry.OPTIMIZERS, registry.OPTIMIZER_INJECTED,
                       "train.optimizer", "its train.optimizer keys (lr, beta1...)", passes="params",
                       builtin_keys=True)


_LR_SCHEDULE = _UserKind("train.lr_schedule", "name", registry.LR_SCHEDULES, registry.LR_SCHEDULE_INJECTED,
                         "the recipe", "its train.lr_schedule keys (warmup_epochs, gamma...)", passes="optimizer",
                         builtin_keys=True)


CODE_PATH_FIX = "user code is imported from the spec's directory, the current directory, then sys.path"


def model_rules(ck: Checker, d: dict, space: Space) -> None:
    if ck.ok("model.name", "model.args"):
        user_callable_rules(ck, d, space, _MODEL)


def data_rules(ck: Checker, d: dict, space: Space) -> None:
    if ck.ok("data.dataset", "data.args"):
        user_callable_rules(ck, d, space, _DATA)


def optimizer_rules(ck: Checker, d: dict, space: Space) -> None:
    for kind in (_OPTIMIZER, _LR_SCHEDULE):
        if ck.ok(f"{kind.section}.name", f"{kind.section}.args"):
            user_callable_rules(ck, d, space, kind)


def user_callable_rules(ck: Checker, d: dict, space: Space, kind: _UserKind) -> None:
    """A user callable (``model.name`` / ``data.dataset`` given as ``module:callable``, or a
    registered name whose entry takes args) must import, be callable, and take its ``args``
    and every searched ``<section>.args.*`` key by name, with every required parameter
    supplied by the args or injected (a model: num_classes, input_shape, in_channels from the
    data; a data set: seed, val_fraction from the spec). Built-ins take no args."""
    sec, prefix = tuple(kind.section.split(".")), f"{kind.section}.args."
    args = _at(d, sec)["args"]
    searched = [p for p in space.params if p.key.startswith(prefix)]
    for key in args:
        if not isinstance(key, str) or not key.isidentifier():
            ck.add((*sec, "args", key), f"must be a parameter name (got {fmt(key)})", "write a Python identifier")
            return
    dotted = f"{kind.section}.{kind.name_key}"
    names = sorted(values_of(d, space, dotted), key=str)
    user = [n for n in names if "keys" not in getattr(kind.registry.get(n), "meta", {})]
    if not user:
        builtin = ", ".join(map(str, names))
        fix = f"remove it, or set {dotted} to your own 'module:callable'"
        what = f"only user {kind.registry.kind}s take args; built-in {builtin} read{'s' if len(names) == 1 else ''} " \
               f"{kind.builtin_reads}"
        if args:
            ck.add((*sec, "args"), f"{what} (got {fmt(args)})", fix)
        for p in searched:
            ck.add(("space", p.key), f"{what} (got {fmt(p.key)})", fix, at=ck.param_at.get(p.key))
        return
    name_at = ("space", dotted) if dotted in space.by_key else (*sec, kind.name_key)
    for name in user:
        obj = _check_user_callable(ck, kind, name, args, [p for p in searched if _active_for(p, dotted, name)],
                                   name_at, ck.param_at.get(dotted))
        if kind.builtin_keys and obj is not None:
            _builtin_settings_rule(ck, d, space, kind, name, registry.signature_of(obj, skip=bool(kind.passes)))


def _at(d: dict, path: tuple) -> Any:
    for key in path:
        d = d[key]
    return d


def _builtin_settings_rule(ck: Checker, d: dict, space: Space, kind: _UserKind, name: str,
                           sig: registry.Signature | None) -> None:
    """A user optimizer or schedule gets its ``args`` (and what is injected): the section's
    keys for the built-ins (momentum, warmup_epochs...), written or searched, would do nothing."""
    sec, dotted = tuple(kind.section.split(".")), f"{kind.section}.{kind.name_key}"
    target = kind.registry.target_of(name)
    for key in schema.lookup(sec).fields:
        p = space.by_key.get(f"{kind.section}.{key}")
        searched = p is not None and _active_for(p, dotted, name)
        if key in (kind.name_key, "args") or not (ck.given((*sec, key)) or searched):
            continue
        if key in kind.injected and (sig is None or sig.takes(key)):
            continue
        path, where = (("space", p.key), ck.param_at.get(p.key)) if searched else ((*sec, key), None)
        value = p.key if searched else _at(d, sec)[key]
        what = (f"{target} takes no argument {key!r}" if key in kind.injected else
                f"{kind.section}.{key} is a setting of the built-in {kind.registry.kind}s, not used by {target}")
        ck.add(path, f"{what} (got {fmt(value)})",
               f"remove it; give {target} its own arguments in {kind.section}.args", at=where)


def _active_for(p: Param, parent: str, value: str) -> bool:
    """Whether searched key ``p`` can be active while ``parent`` (e.g. model.name) is ``value``."""
    return all(value in c.values for c in p.conditions if c.parent == parent)


def _check_user_callable(ck: Checker, kind: _UserKind, name: str, args: dict, searched: list, name_at: tuple,
                         at: tuple | None) -> Any:
    """Check one user callable against what the sweep passes it; return it (None: it does not import)."""
    sec, prefix = tuple(kind.section.split(".")), f"{kind.section}.args."
    target = kind.registry.target_of(name)
    try:
        obj = registry.import_target(target, ck.code_dirs, guard_s=registry.IMPORT_TIMEOUT_S)
    except registry.ImportTargetError as exc:
        ck.add(name_at, f"{exc} (got {fmt(name)})", f"{exc.fix}; {CODE_PATH_FIX}", at=at)
        return None
    sig = registry.signature_of(obj, skip=bool(kind.passes))
    entry = kind.registry.get(name)
    if entry is not None and entry.check is not None:
        for path, what, fix in entry.check(dict(args)):
            ck.add((*sec, *path), what, fix)
    if sig is None:  # Python cannot read its signature (a C callable): the trial will tell
        return obj
    if sig.positional < bool(kind.passes):
        ck.add(name_at, f"{target} must take {kind.passes} as its first positional argument (got {fmt(name)})",
               f"define it as def build({kind.passes}, **kwargs)", at=at)
        return obj
    # (key path, where it is written, argument name, value) for every argument the sweep passes.
    given = [((*sec, "args", k), None, k, v) for k, v in args.items()]
    given += [(("space", p.key), ck.param_at.get(p.key), p.key[len(prefix):].split(".")[0], p.key)
              for p in searched]
    takes = [n for n in sig.names if n not in kind.injected]
    for path, where, arg, value in given:
        if arg in kind.injected:
            ck.add(path, f"{arg} is given by {kind.giver} (got {fmt(value)})",
                   f"remove it; {target} receives {arg} when its signature names it", at=where)
        elif not sig.takes(arg):
            hint = did_you_mean(arg, takes)
            ck.add(path, f"{target} takes no argument {arg!r} (got {fmt(value)})",
                   (hint + " " if hint else "") + (f"it takes: {', '.join(takes)}" if takes else
                                                    f"it takes no arguments besides what {kind.giver} gives"),
                   at=where)
    supplied = {arg for _, _, arg, _ in given} | set(kind.injected)
    for required in sig.required:
        if required not in supplied:
            ck.add(name_at, f"{target} needs argument {required!r}, which nothing supplies (got {kind.section}.args "
                   f"{fmt(args)})", f"set {prefix}{required}, or search {prefix}{required} in space", at=at)
    return obj


def loop_rules(ck: Checker, d: dict, space: Space) -> None:
    """A user loop must import, be callable, and take ``(config, ctx)``; a registered loop
    with rules of its own (lightning) is checked by them, and only it takes train.trainer."""
    if not ck.ok("train.loop"):
        return
    entry = registry.LOOPS.get(d["train"]["loop"])
    if entry is None or entry.check is None:  # a loop with rules of its own refuses what it does not read
        for other in (registry.LOOPS[n] for n in registry.LOOPS):
            for section, what in other.meta.get("sections", {}).items():
                if d["train"].get(section) or any(k.startswith(f"train.{section}.") for k in space.by_key):
                    ck.add(("train", section), f"{what}, but train.loop is {d['train']['loop']} (got "
                           f"{fmt(d['train'].get(section))})", f"set train.loop: {other.name}, or remove "
                           f"train.{section}")
    if entry is not None and entry.check is not None:  # its rules import neither torch nor the trainer
        for f in entry.checks(registry.SpecView(d, space, ck.given)):
            if ck.ok(*f.reads.split()):
                ck.add(f.path, f.what, f.fix, at=ck.param_at.get(f.at) if f.at else None)
        return
    if not user_loop(d):
        return
    target = registry.LOOPS.target_of(d["train"]["loop"])
    try:
        obj = registry.import_target(target, ck.code_dirs, guard_s=registry.IMPORT_TIMEOUT_S)
    except registry.ImportTargetError as exc:
        ck.add(("train", "loop"), f"{exc} (got {fmt(target)})", f"{exc.fix}; {CODE_PATH_FIX}")
        return
    import inspect

    try:
        inspect.signature(obj).bind(None, None)
    except TypeError:
        ck.add(("train", "loop"), f"{target} must take (config, ctx) (got a signature {inspect.signature(obj)})",
               "define it as def train(config, ctx): ...")
    except ValueError:  # no signature Python can read (a C callable): the trial will tell
        pass


def user_loop(d: dict) -> bool:
    entry = registry.LOOPS.get(d["train"]["loop"])
    return entry is None or entry.name != "builtin"
