"""Registries of named components, and user components named by import path.

A registry maps a name to an :class:`Entry` whose target is a ``"module:callable"``
string, imported only when it is used (so that validating a spec never imports torch for a
built-in). A spec may name a registered entry or give an import path itself::

    model:
      name: mypkg.models:Net     # or a registered name such as small_cnn
      args: {hidden: 64}

User code is imported from the spec file's directory and the current directory first,
then ``sys.path`` (:func:`import_target`). The built-in models register here exactly as a
user's would (:data:`MODELS`); the conventions of a model callable are in
:mod:`raytune_opt.recipe.models`. An import path named by a file rather than by the spec being
run (a checkpoint, an experiment's spec.yaml) is imported only when the user trusts the file,
unless it is exactly a registered entry's target (:mod:`raytune_opt.trust`).

This module imports neither torch nor Ray.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from raytune_opt.errors import RaytuneOptError

__all__ = ["Entry", "Registry", "ImportTargetError", "Finding", "SpecView",
           "MODELS", "DATASETS", "LOOPS", "OPTIMIZERS", "LR_SCHEDULES", "LOSSES", "STRATEGIES", "SEARCHERS", "OPTUNA_SAMPLERS", "SCHEDULERS",
           "PROMOTION_STEPS", "INJECTED", "DATA_INJECTED", "OPTIMIZER_INJECTED", "LR_SCHEDULE_INJECTED",
           "is_import_path", "import_target", "code_path", "add_code_paths", "Signature", "signature_of",
           "user_modules"]

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_PATH = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*")
#: What a model callable may receive from the data besides its args, when its signature names it.
INJECTED = ("num_classes", "input_shape", "in_channels")
#: What a data set callable may receive from the spec besides its args, when its signature names it.
DATA_INJECTED = ("seed", "val_fraction", "test_fraction")


class ImportTargetError(RaytuneOptError):
    """An import path that does not import, names nothing, or names something not callable.

    ``fix`` says how to fix it (the validator puts it after the message)."""

    def __init__(self, message: str, fix: str = "check the module path"):
        super().__init__(message)
        self.fix = fix


class Finding(NamedTuple):
    """A problem an entry's ``check`` finds in a spec.

    ``path``: the key it is reported at (a tuple, e.g. ``("scheduler", "grace_period")``);
    ``what`` and ``fix`` as every problem has them; ``reads``: space-separated dotted keys
    the rule reads (it is dropped when one of them was already reported invalid, since it
    would only repeat that problem); ``at``: where in the file the problem points, instead
    of ``path``'s place: a searched key (its place in ``space``) or another key path."""

    path: tuple
    what: str
    fix: str
    reads: str = ""
    at: str | tuple | None = None


@dataclass(frozen=True)
class SpecView:
    """What an entry's ``check`` gets (a built-in data set's, searcher's, scheduler's,
    strategy's, loss's or promotion step's): the spec's settings (defaults filled in, every value already valid on
    its own), its parsed search space, ``given(path)``: whether the user wrote a key
    (rather than it holding its default), and ``code_dirs``: where code the spec names by
    import path is imported from first."""

    data: dict
    space: Any  # raytune_opt.space.Space
    given: Callable[[tuple], bool]
    code_dirs: tuple = ()

    @property
    def settings(self):
        """``data`` as a typed read-only view (:mod:`raytune_opt.spec.view`): ``view.settings.scheduler.max_t``."""
        from raytune_opt.spec.view import view

        return view((), self.data)


@dataclass(frozen=True)
class Entry:
    """One registered component.

    Attributes:
        name: what a spec writes.
        target: ``"module:callable"``, imported when first used.
        doc: one line for the README and the schema's documentation.
        check: the entry's own validation rules, a callable or a ``"module:callable"`` import
            path loaded when a spec is checked (it must import neither torch nor Ray). What it
            gets depends on the registry: a model, or a data set called with ``args``, gets
            the arguments the spec gives it and returns ``[(key_path, what, fix), ...]``
            relative to its section; a built-in data set (``keys`` meta), searcher,
            scheduler, strategy, loss or promotion step gets a :class:`SpecView` and returns
            :class:`Finding` s. None: no rules beyond the generic ones.
        meta: plain facts the validator reads without importing the target (a model's
            input kinds, the section keys a built-in reads).
    """

    name: str
    target: str
    doc: str = ""
    check: Callable | str | None = None
    meta: dict = field(default_factory=dict)

    def load(self, dirs: Sequence[str] = ()) -> Callable:
        """The target callable (see :func:`import_target`)."""
        return import_target(self.target, dirs)

    def checks(self, arg: Any) -> list:
        """Run this entry's ``check`` on ``arg`` (nothing when it has none)."""
        if self.check is None:
            return []
        fn = import_target(self.check) if isinstance(self.check, str) else self.check
        return list(fn(arg))


class Registry:
    """Names -> :class:`Entry`, in registration order; entries with an ``order`` meta (a
    number) come first, by it (a promotion step's: the order the steps run in)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: str, *, doc: str = "", check: Callable | str | None = None,
                 **meta: Any) -> Entry:
        """Register ``target`` (``"module:callable"``) under ``name``.

        Raises:
            ValueError: ``name`` is taken or looks like an import path, or ``target`` is not one.
        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already (as {self._entries[name].target})")
        if is_import_path(name) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise ValueError(f"a {self.kind} name must be letters, digits, '_', '.' or '-' (got {name!r})")
        if not is_import_path(target):
            raise ValueError(f"a {self.kind} target must be 'module:callable' (got {target!r})")
        if isinstance(check, str) and not is_import_path(check):
            raise ValueError(f"a {self.kind} check must be a callable or 'module:callable' (got {check!r})")
        entry = Entry(name, target, doc, check, dict(meta))
        self._entries[name] = entry
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> Entry:
        return self._entries[name]

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries, key=lambda n: self._entries[n].meta.get("order", math.inf)))

    def discover(self, package: str) -> None:
        """Import ``package`` and every module of it whose name does not start with ``_``: each
        registers its entries itself when imported (a built-in promotion step is one file in
        :mod:`raytune_opt.promote.steps`; the built-in schedulers register in
        :mod:`raytune_opt.schedulers` itself). Those modules must import neither torch nor Ray."""
        import pkgutil

        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")

    def target_of(self, name: str) -> str:
        """The import path ``name`` stands for: a registered entry's target, or ``name`` itself."""
        entry = self._entries.get(name)
        return entry.target if entry is not None else name


def is_import_path(text: Any) -> bool:
    """Whether ``text`` has the shape ``pkg.module:callable`` (it may still fail to import)."""
    return isinstance(text, str) and _IMPORT_PATH.fullmatch(text) is not None


def _code_dirs(dirs: Sequence[str]) -> list[str]:
    out = []
    for d in [*dirs, os.getcwd()]:
        d = os.path.abspath(d)
        if d not in out:
            out.append(d)
    return out


@contextlib.contextmanager
def code_path(dirs: Sequence[str] = ()) -> Iterator[None]:
    """Import from ``dirs`` and the current directory first, then ``sys.path``; restores
    ``sys.path`` afterwards (modules imported meanwhile stay imported)."""
    added = _code_dirs(dirs)
    saved = list(sys.path)
    sys.path[:0] = added
    importlib.invalidate_caches()  # a package written after start-up (tests, notebooks) must be seen
    try:
        yield
    finally:
        sys.path[:] = saved


def add_code_paths(dirs: Sequence[str]) -> None:
    """Put ``dirs`` at the front of ``sys.path`` for good (inside a trial: the model is
    built, and may import lazily, long after validation)."""
    for d in reversed([os.path.abspath(d) for d in dirs]):
        if d not in sys.path:
            sys.path.insert(0, d)
    importlib.invalidate_caches()


IMPORT_TIMEOUT_S = 120  # validation's limit on importing one user module (a hang is an error, not a stall)


class _Exited(SystemExit):
    """``os._exit`` called by a module that validation imports (guarded: see :func:`_guarded`)."""


class _TookTooLong(Exception):
    """An import still running when validation's time limit ran out (see :func:`_guarded`)."""


@contextlib.contextmanager
def _guarded(limit_s: float | None) -> Iterator[None]:
    """While validation imports user code: ``os._exit`` raises (a module that would end the
    process silently becomes an error), and an import still running after ``limit_s`` seconds
    raises _TookTooLong naming where it was. The time limit needs the main thread (SIGALRM);
    elsewhere only ``os._exit`` is guarded."""
    import signal
    import threading

    def refuse_exit(code: int = 0) -> None:
        raise _Exited(code)

    def out_of_time(signum, frame) -> None:
        from raytune_opt.errors import is_user_file

        while frame is not None and not is_user_file(frame.f_code.co_filename):
            frame = frame.f_back
        where = f" (it was at {frame.f_code.co_filename}:{frame.f_lineno})" if frame is not None else ""
        raise _TookTooLong(f"still importing after {limit_s:g} s{where}")

    alarm = (limit_s is not None and threading.current_thread() is threading.main_thread()
             and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None))
    saved_exit = os._exit
    os._exit = refuse_exit
    if alarm:
        saved = signal.signal(signal.SIGALRM, out_of_time)
        signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        yield
    finally:
        os._exit = saved_exit
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, saved)


def import_target(path: str, dirs: Sequence[str] = (), guard_s: float | None = None) -> Callable:
    """Import ``"module:callable"`` (attribute paths like ``mod:Outer.build`` allowed).

    Args:
        path: the import path.
        dirs: directories searched before the current directory and ``sys.path``.
        guard_s: validation's guard: ``os._exit`` in the module is an error, and so is an import
            that takes longer than this many seconds (main thread only).

    Raises:
        ImportTargetError: not an import path, the module does not import (the error's own
            message is kept), the attribute is missing, or the object is not callable.
    """
    if not is_import_path(path):
        raise ImportTargetError(f"{path!r} is not an import path", "write 'package.module:callable'")
    module_name, _, attr_path = path.partition(":")
    # Our own modules import through the package already loaded, never from the user's
    # directories: a file there cannot stand in for them or for what they import.
    ours = module_name.split(".")[0] == __name__.split(".")[0]
    with contextlib.nullcontext() if ours else code_path(dirs):
        try:
            with _guarded(guard_s) if guard_s is not None else contextlib.nullcontext():
                obj: Any = importlib.import_module(module_name)
        except SystemExit as exc:  # sys.exit() at the module's top level: an error, never the command's end
            from raytune_opt.errors import raised_at

            where = raised_at(exc)
            how = "os._exit" if isinstance(exc, _Exited) else "sys.exit"
            raise ImportTargetError(f"cannot import {path!r} (its module called {how}({exc.code!r})"
                                    f"{f' at {where}' if where else ''})",
                                    "a module must not exit when it is imported: move that call under "
                                    "'if __name__ == \"__main__\":'") from None
        except _TookTooLong as exc:
            raise ImportTargetError(f"cannot import {path!r} ({exc})", "a module's top level should define things, "
                                    "not wait or loop: look there for a loop, a wait or a download") from None
        except Exception as exc:  # ImportError, or whatever the user's module raises on import
            what = str(exc).strip().splitlines()
            detail = what[0] if what else ""
            if not isinstance(exc, ImportError):
                detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            raise ImportTargetError(f"cannot import {path!r} ({detail})") from None
    owner = module_name
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            import difflib

            close = difflib.get_close_matches(part, public, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ImportTargetError(f"cannot import {path!r} ({owner!r} has no attribute {part!r}{hint})")
        obj = getattr(obj, part)
        owner = f"{owner}.{part}" if owner != module_name else f"{module_name}:{part}"
    if not callable(obj):
        raise ImportTargetError(f"{path!r} names an object of type {type(obj).__name__}, not a class or function",
                                "point it at an nn.Module class or a function that returns one")
    return obj


def user_modules(targets: Sequence[str], dirs: Sequence[str]) -> list:
    """The top-level modules of ``targets`` (import paths) that live under ``dirs`` (the
    user's project, as opposed to installed packages), imported: what a joined cluster's
    other nodes need shipped (Ray's ``runtime_env`` ``py_modules`` takes module objects, a
    package or a single file). Targets that do not import are left out (validation said so)."""
    roots = [os.path.abspath(d) for d in dirs]
    out: dict[str, Any] = {}
    for target in targets:
        if not is_import_path(target):
            continue
        top = target.partition(":")[0].split(".")[0]
        if top in out:
            continue
        with code_path(dirs):
            try:
                module = importlib.import_module(top)
            except Exception:  # validation reports it
                continue
        paths = list(getattr(module, "__path__", []) or []) or [getattr(module, "__file__", None) or ""]
        if any(p and os.path.commonpath([os.path.abspath(p), r]) == r for p in paths for r in roots):
            out[top] = module
    return list(out.values())


@dataclass(frozen=True)
class Signature:
    """What a callable takes by keyword."""

    names: tuple[str, ...]  # parameters that can be passed by keyword
    required: tuple[str, ...]  # of those, without a default (plus required positional-only ones)
    var_keyword: bool  # takes **kwargs
    positional: float = 0  # how many positional arguments it takes (math.inf: *args), skipped ones included

    def takes(self, name: str) -> bool:
        return self.var_keyword or name in self.names


def signature_of(obj: Callable, skip: int = 0) -> Signature | None:
    """The keyword interface of ``obj`` (a class: its constructor), or None when Python
    cannot tell (some C callables). ``skip``: leading positional arguments the caller passes
    itself (an optimizer's parameters), left out of ``names`` and ``required``."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    names, required, var_kw = [], [], False
    params = list(sig.parameters.values())
    leading = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    positional = math.inf if any(p.kind is p.VAR_POSITIONAL for p in params) else len(leading)
    for p in params:
        if p in leading[:skip]:
            continue
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is p.VAR_POSITIONAL:
            continue
        elif p.kind is p.POSITIONAL_ONLY:
            if p.default is p.empty:
                required.append(p.name)  # nobody passes it: the recipe calls by keyword
        else:
            names.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return Signature(tuple(names), tuple(required), var_kw, positional)


# ---------------------------------------------------------------- models

#: Models by name. A model target is a class or function returning an ``nn.Module``, called
#: with keyword arguments: an import-path model gets ``model.args``; a built-in gets the
#: ``model`` section keys listed in its ``keys`` meta. Either also gets whichever of
#: :data:`INJECTED` its signature names. ``inputs``: the input dimensionalities it takes
#: (1: signals (N, C, L), 2: images (N, C, H, W)).
MODELS = Registry("model")

_M = "raytune_opt.recipe.models"
_CNN_KEYS = ("width", "depth", "dropout")
_TV_KEYS = ("dropout", "cifar_stem")
MODELS.register("mlp", f"{_M}:mlp", doc="fully connected; width hidden units x depth layers",
                inputs=(0, 1, 2), keys=_CNN_KEYS)
MODELS.register("small_cnn", f"{_M}:small_cnn", doc="conv blocks doubling width, then global pooling",
                inputs=(2,), keys=_CNN_KEYS)
MODELS.register("cnn1d", f"{_M}:cnn1d", doc="1-D conv blocks for signals", inputs=(1,),
                keys=_CNN_KEYS + ("kernel_size",))
for _name in ("resnet18", "resnet34", "resnet50"):
    MODELS.register(_name, f"{_M}:{_name}", doc=f"torchvision {_name}", inputs=(2,),
                    keys=_TV_KEYS + ("squeeze_excitation",))
for _name in ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"):
    MODELS.register(_name, f"{_M}:{_name}", doc=f"torchvision {_name}", inputs=(2,), keys=_TV_KEYS)
MODELS.register("tabular_mlp", f"{_M}:tabular_mlp", doc="for tables: width hidden units x depth blocks "
                "(linear, layer norm, ReLU, dropout)", inputs=(0,), keys=_CNN_KEYS)
del _name


# ---------------------------------------------------------------- data sets

#: Data sets by name. A data set target returns a ``DataBundle``, a ``(train, val)`` pair or a
#: ``(train, val, test)`` triple (:mod:`raytune_opt.recipe.bundle`), called with keyword arguments: an import-path data set
#: gets ``data.args`` plus whichever of :data:`DATA_INJECTED` its signature names; a built-in
#: gets the ``data`` section keys listed in its ``keys`` meta, and ``seed``. Meta of the
#: built-ins: ``inputs`` (1: signals, 2: images), ``needs_root`` (data.root is required
#: unless ``data.download`` fetches it, where ``downloads``), ``requires`` (other data keys it
#: needs). A built-in's ``check`` gets a :class:`SpecView`: its rules on the spec
#: (:mod:`raytune_opt.recipe.data_rules`); an entry without ``keys``, called with ``data.args``,
#: gets its args, as a model's does.
DATASETS = Registry("dataset")

_D = "raytune_opt.recipe.data"
_DC = "raytune_opt.recipe.data_rules:check"
DATASETS.register("digits", f"{_D}:digits", doc="8x8 digits that ship with scikit-learn (1,797 images)",
                  inputs=2, needs_root=False, task="classification", num_classes=10,
                  keys=("val_fraction", "test_fraction"), check=_DC)
DATASETS.register("mnist1d", f"{_D}:mnist1d", doc="1-D signals generated by the mnist1d package (4,000)",
                  inputs=1, needs_root=False, task="classification", num_classes=10,
                  keys=("val_fraction", "test_fraction"), check=_DC)
for _name, _n in (("cifar10", 10), ("cifar100", 100)):
    DATASETS.register(_name, f"{_D}:{_name}", doc=f"{_name.upper()} in torchvision's on-disk format under data.root",
                      inputs=2, needs_root=True, downloads=True, task="classification", num_classes=_n,
                      keys=("root", "download", "val_fraction", "test_fraction"), check=_DC)
DATASETS.register("imagefolder", f"{_D}:imagefolder", doc="one sub-folder of images per class under data.root, "
                  "resized to data.image_size", inputs=2, needs_root=True, task="classification",
                  keys=("root", "image_size", "val_fraction", "test_fraction"), check=_DC)
DATASETS.register("csv", "raytune_opt.recipe.tabular:csv", doc="a CSV or Parquet table: data.path, data.target, "
                  "data.features", inputs=0, needs_root=False, requires=("path", "target"),
                  keys=("path", "target", "features", "task", "val_fraction", "test_fraction", "test_column"),
                  check=_DC)
del _name, _n


# ---------------------------------------------------------------- training loops

#: Training loops by name: ``fn(config, ctx)`` with a
#: :class:`~raytune_opt.recipe.context.TrialContext`; ``train.loop`` names one, or gives a
#: ``module:callable`` itself. The built-in recipe is one of them.
LOOPS = Registry("loop")
LOOPS.register("builtin", "raytune_opt.recipe.loop:builtin_loop", doc="the built-in recipe: every train.* key")
# meta: sections, the train sections only the loop reads (what each holds, for the message that
# refuses it under another loop); deploy, (model) -> (model, what changed): the model promotion
# converts, made from the checkpoint's (hf_trainer merges the LoRA adapter); int8_op_types, the
# operators promotion's INT8 quantizes (default: all): quantizing a transformer's mask arithmetic
# (Where, Add, Softmax...) took the example from 70.3 % to 52.7 %; its matrix products alone: 70.3 %
# (GPT-2's Conv1D layers export as Gemm: the GPT-2 example's 8 Gemm and 5 MatMul are all quantized);
# int8_fallback_op_types, smaller sets tried in order when no calibration method passes the gate
# with int8_op_types (the 10-epoch GPT-2 example lost 2.0 points with its embedding lookup, the
# Gather, quantized, and none without it);
# deepspeed, a trainer that takes train.strategy deepspeed: the import path of a function
# returning its strategies.deepspeed_config.Ownership (the DeepSpeed keys it sets itself);
# pbt_mutable, the searched keys PBT may perturb mid-trial (keys, and prefixes ending in a dot)
# when they are not the recipe's: a trainer builds its optimizer from its own arguments (an
# exploit gets them through integrations._common.restore_keeping_config). A LightningModule's
# args are the user's: one that changes the module's shapes fails the exploit's load, with why.
LOOPS.register("lightning", "raytune_opt.integrations.lightning:lightning_loop", doc="Lightning's Trainer: "
               "model.name a LightningModule, data.dataset a LightningDataModule, train.trainer its arguments",
               check="raytune_opt.integrations.lightning_rules:check",
               sections={"trainer": "Lightning's Trainer arguments"},
               pbt_mutable=("model.args.", "train.trainer.gradient_clip_val"))
LOOPS.register("hf_trainer", "raytune_opt.integrations.hf:hf_trainer_loop", doc="Hugging Face's Trainer: "
               "model.name returns a PreTrainedModel, data.dataset the Trainer's data sets, train.args its "
               "TrainingArguments, train.peft an optional LoRA adapter", check="raytune_opt.integrations.hf_rules:check",
               sections={"args": "Hugging Face's TrainingArguments", "peft": "a LoRA adapter (peft.LoraConfig)"},
               deploy="raytune_opt.integrations.hf:merged", int8_op_types=("MatMul", "Gemm", "Gather"),
               int8_fallback_op_types=(("MatMul", "Gemm"),),
               deepspeed="raytune_opt.integrations.hf_rules:deepspeed_keys",
               pbt_mutable=tuple(f"train.args.{k}" for k in (
                   "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                   "label_smoothing_factor")) + ("train.peft.lora_dropout",))


# ---------------------------------------------------------------- losses

#: Training losses by name: a target called with the ``train.loss`` section's keys it names
#: (and ``weight``: class weights) returns an ``nn.Module`` taking (output, target). ``task``:
#: what it trains. ``check`` gets a :class:`SpecView` when the sweep may use the loss (one
#: shared by several entries runs once): the rules of ``train.loss``.
LOSSES = Registry("loss")
_L = "raytune_opt.recipe.losses"
_LC = "raytune_opt.recipe.loss_rules:check"
# meta: task; args (train.loss key -> constructor argument); a classification loss also
# gets weight (the class weights); fixed: constructor arguments of the entry itself.
LOSSES.register("cross_entropy", f"{_L}:CrossEntropy", doc="cross-entropy, label smoothing, class weights",
                task="classification", args={"label_smoothing": "label_smoothing"}, check=_LC)
LOSSES.register("focal", f"{_L}:FocalLoss", doc="focal loss (focal_gamma), class weights", task="classification",
                args={"focal_gamma": "gamma"}, check=_LC)
for _name, _doc in (("mse", "mean squared error"), ("l1", "mean absolute error"), ("huber", "Huber, delta 1")):
    LOSSES.register(_name, f"{_L}:RegressionLoss", doc=_doc, task="regression", fixed={"name": _name}, check=_LC)
del _name, _doc

# ---------------------------------------------------------------- optimizers and lr schedules

#: What an optimizer may receive from ``train.optimizer`` besides its args, when its signature names it.
OPTIMIZER_INJECTED = ("lr", "weight_decay")
#: What an lr schedule may receive from the recipe besides its args, when its signature names it.
LR_SCHEDULE_INJECTED = ("steps_per_epoch", "epochs", "total_steps")

#: Optimizers by name (``train.optimizer.name``). A target is called as ``target(params, **kwargs)``
#: and returns a ``torch.optim.Optimizer`` (an Optimizer subclass is such a callable): a
#: built-in gets the ``train.optimizer`` keys listed in its ``keys`` meta; an import-path
#: optimizer (or an entry without ``keys``) gets ``train.optimizer.args``. Either also gets
#: whichever of :data:`OPTIMIZER_INJECTED` its signature names
#: (:func:`raytune_opt.recipe.optim.build_optimizer`). ``check`` gets a :class:`SpecView`, when
#: the sweep may use the optimizer: its rules on the spec (torch-free: :mod:`raytune_opt.recipe.optim_rules`).
OPTIMIZERS = Registry("optimizer")
_O = "raytune_opt.recipe.optim"
OPTIMIZERS.register("sgd", f"{_O}:sgd", doc="SGD with momentum (and Nesterov's)", keys=("momentum", "nesterov"),
                    check="raytune_opt.recipe.optim_rules:check_sgd")
OPTIMIZERS.register("adam", f"{_O}:adam", doc="Adam (L2 weight decay)", keys=("beta1", "beta2", "eps"))
OPTIMIZERS.register("adamw", f"{_O}:adamw", doc="AdamW (decoupled weight decay)", keys=("beta1", "beta2", "eps"))
OPTIMIZERS.register("rmsprop", f"{_O}:rmsprop", doc="RMSprop with momentum", keys=("momentum", "eps"))
OPTIMIZERS.register("adagrad", f"{_O}:adagrad", doc="Adagrad", keys=("eps",))

#: Learning-rate schedules by name (``train.lr_schedule.name``), stepped after every optimizer
#: step. A target is called as ``target(optimizer, **kwargs)`` and returns a
#: ``torch.optim.lr_scheduler.LRScheduler`` (``ReduceLROnPlateau``: stepped once per epoch with
#: val_loss instead) or an object with the recipe's own schedule interface
#: (:class:`raytune_opt.recipe.optim.LRSchedule`). A built-in gets the ``train.lr_schedule``
#: keys listed in its ``keys`` meta; an import-path schedule (or an entry without ``keys``)
#: gets ``train.lr_schedule.args``. Either also gets whichever of :data:`LR_SCHEDULE_INJECTED`
#: its signature names.
LR_SCHEDULES = Registry("lr schedule")
LR_SCHEDULES.register("constant", f"{_O}:constant", doc="the peak lr throughout (after the warmup)",
                      keys=("warmup_epochs",))
LR_SCHEDULES.register("step", f"{_O}:step", doc="times gamma every step_size epochs",
                      keys=("warmup_epochs", "step_size", "gamma"))
LR_SCHEDULES.register("cosine", f"{_O}:cosine", doc="cosine from the peak down to min_lr",
                      keys=("warmup_epochs", "min_lr"))
LR_SCHEDULES.register("onecycle", f"{_O}:onecycle", doc="one cycle: up from peak/25 for pct_start of the steps, "
                      "then down", keys=("warmup_epochs", "pct_start"))
LR_SCHEDULES.register("plateau", f"{_O}:plateau", doc="times plateau_factor when val_loss stalls for "
                      "plateau_patience epochs", keys=("warmup_epochs", "plateau_patience", "plateau_factor"))


# ---------------------------------------------------------------- distributed strategies

#: Distributed strategies by name (``train.strategy``): a :class:`~raytune_opt.strategies.Strategy`
#: subclass, constructed with the trial's session and ``train`` section. Meta ``keys``: the
#: ``train`` settings only this strategy reads (set under another strategy: a problem). ``check``
#: gets a :class:`SpecView`, when the sweep may use the strategy: its rules on the spec.
STRATEGIES = Registry("strategy")
STRATEGIES.register("ddp", "raytune_opt.strategies.ddp:DDPStrategy", doc="PyTorch DDP (and the single process)")
STRATEGIES.register("deepspeed", "raytune_opt.strategies.deepspeed:DeepSpeedStrategy",
                    doc="DeepSpeed ZeRO stage 1-3 (pip install 'raytune-opt[deepspeed]')",
                    check="raytune_opt.strategies.deepspeed_config:check", keys=("deepspeed",))


# ---------------------------------------------------------------- searchers

#: Search algorithms by name (``search.algorithm``). A target is called as
#: ``target(spec, seed=, metric=, mode=, limit=)`` and returns ``(search_alg, param_space)``
#: for ``tune.Tuner`` (:func:`raytune_opt.searchers.build_searcher`). Meta: ``caps``, what the
#: searcher can express (:class:`raytune_opt.searchers.Capabilities`; ``"sampler"``: what the
#: chosen :data:`OPTUNA_SAMPLERS` entry can); ``sequential``: it proposes one trial at a time
#: (``"conditional"``: only for a conditional space); ``explores``: it learns from results
#: (PBT, which explores by itself, takes only those that do not); ``scheduler``: the only
#: scheduler it works with; ``requires``: modules it needs, from the ``extra`` of that name.
#: ``check`` gets a :class:`SpecView`: rules beyond the capabilities.
SEARCHERS = Registry("searcher")
_S = "raytune_opt.searchers"
SEARCHERS.register("grid", f"{_S}:build_basic", doc="every point of the grid, num_samples times",
                   caps=dict(grid=True, conditional=False, normal=False, categorical=True, qloguniform=False,
                             all_grid=True), sequential=False, explores=False, multi_objective=True)
SEARCHERS.register("random", f"{_S}:build_random", doc="random samples (Ray's variant generator; Optuna's "
                   "RandomSampler for a conditional space)", check=f"{_S}:check_random",
                   caps=dict(grid=True, conditional=True, normal=True, categorical=True, qloguniform=True),
                   sequential="conditional", explores=False, multi_objective=True, enqueue=True)
SEARCHERS.register("optuna", f"{_S}:build_optuna", doc="Optuna with search.sampler (define-by-run for a "
                   "conditional space)", caps="sampler", sequential=True, explores=True, multi_objective="sampler",
                   enqueue=True)
SEARCHERS.register("hyperopt", f"{_S}:build_hyperopt", doc="HyperOpt TPE (nested hp.choice for a conditional "
                   "space)", check=f"{_S}:check_hyperopt",
                   caps=dict(grid=False, conditional=True, normal=True, categorical=True, qloguniform=True),
                   sequential=True, explores=True, multi_objective=False, enqueue="complete")
SEARCHERS.register("bohb", f"{_S}:build_bohb", doc="BOHB: kernel-density models of the good configs at each "
                   "budget (Ray's TuneBOHB, hpbandster), with scheduler.name: hyperband_bohb (the bohb extra)",
                   check=f"{_S}:check_bohb",
                   caps=dict(grid=False, conditional=False, normal=False, categorical=True, qloguniform=False),
                   sequential=False, explores=True, multi_objective=False, scheduler="hyperband_bohb",
                   requires=("hpbandster", "ConfigSpace"), extra="bohb", enqueue="complete")

#: Optuna samplers by name (``search.sampler``, with ``search.algorithm: optuna``): a target
#: is an ``optuna.samplers.BaseSampler`` class or factory called with ``seed=``. Meta ``caps``
#: as for :data:`SEARCHERS`; ``multi_objective``: it takes several objectives; ``constraints``:
#: it takes Optuna's ``constraints_func`` (``search.constraints`` are told to it). Ray's Optuna
#: adapter drops a log-uniform quantization silently: no Optuna sampler claims ``qloguniform``.
OPTUNA_SAMPLERS = Registry("optuna sampler")
OPTUNA_SAMPLERS.register("tpe", "optuna.samplers:TPESampler", doc="tree-structured Parzen estimator",
                         caps=dict(grid=False, conditional=True, normal=False, categorical=True, qloguniform=False),
                         multi_objective=True, constraints=True)
OPTUNA_SAMPLERS.register("gp", "optuna.samplers:GPSampler", doc="Gaussian-process Bayesian optimization",
                         caps=dict(grid=False, conditional=False, normal=False, categorical=True, qloguniform=False),
                         multi_objective=True, constraints=True)
OPTUNA_SAMPLERS.register("cmaes", "optuna.samplers:CmaEsSampler", doc="CMA evolution strategy (numeric spaces)",
                         caps=dict(grid=False, conditional=False, normal=False, categorical=False,
                                   qloguniform=False), multi_objective=False, constraints=False)
OPTUNA_SAMPLERS.register("random", "optuna.samplers:RandomSampler", doc="independent random samples",
                         caps=dict(grid=False, conditional=True, normal=False, categorical=True, qloguniform=False),
                         multi_objective=True, constraints=False, learns=False)
OPTUNA_SAMPLERS.register("nsga2", "raytune_opt.optuna_samplers:NSGAIISampler", doc="NSGA-II, the genetic multi-objective "
                         "classic", caps=dict(grid=False, conditional=True, normal=False, categorical=True,
                                              qloguniform=False), multi_objective=True, constraints=True)
OPTUNA_SAMPLERS.register("nsga3", "raytune_opt.optuna_samplers:NSGAIIISampler", doc="NSGA-III, reference points for many "
                         "objectives", caps=dict(grid=False, conditional=True, normal=False, categorical=True,
                                                 qloguniform=False), multi_objective=True, constraints=True)


# ---------------------------------------------------------------- schedulers

#: Trial schedulers by name (``scheduler.name``): a target is called as ``target(spec, where)``
#: (``where``: the experiment's storage, for a scheduler that keeps files there) and returns a
#: ``ray.tune.schedulers.TrialScheduler`` (:func:`raytune_opt.schedulers.build_scheduler`). Each
#: built-in registers itself beside its builder in :mod:`raytune_opt.schedulers`, found and
#: imported here; a new one may be a module of its own there. Meta ``settings``: the
#: ``scheduler.*`` keys it reads, key -> :class:`raytune_opt.spec.fields.Field` (the schema puts
#: their union under ``scheduler``; a key several entries read is one Field they share; setting
#: a key the chosen scheduler does not read is a problem); ``hash_neutral``: its settings came
#: after experiments were recorded, so ``Spec.sha256`` leaves out each key only such entries read
#: while it holds its default; ``order``: where it is listed; ``needs_storage``: it keeps files in
#: the experiment; ``exploits``: it restarts trials from other trials' checkpoints with changed
#: configs (PBT's exploit), so every epoch a trial reports records the config it trained with;
#: ``multi_objective``: it takes several objectives. ``check`` gets a :class:`SpecView`.
SCHEDULERS = Registry("scheduler")
SCHEDULERS.discover("raytune_opt.schedulers")


# ---------------------------------------------------------------- promotion steps

#: Promotion steps by name (``promote.targets``). A target is ``step(ctx)`` with a
#: :class:`raytune_opt.promote.StepContext` (what the step may read, and ``record``, ``use``,
#: ``leave`` for what it adds); ``promote.targets`` may also name one by import path. Each
#: built-in is one module of :mod:`raytune_opt.promote.steps`, found and imported here, that
#: registers itself as a user's would. Meta ``order``: when it runs (steps run by it); ``needs``:
#: steps that run first (built even when not listed; validation asks for them to be listed);
#: ``compresses``: it makes a smaller model the later steps convert; ``by_default`` (default
#: true): in the default ``promote.targets``; ``settings``: its ``promote.<name>`` section (a
#: :class:`raytune_opt.spec.fields.Section`, put under ``promote`` by the schema);
#: ``hash_neutral``: that section came after experiments were recorded, so ``Spec.sha256``
#: leaves it out while it holds its defaults (they still resume; a new step with settings sets
#: it); ``gpu``: it builds on a GPU node, which the pipeline finds before any step runs.
#: ``check`` gets a :class:`SpecView`: the step's own rules on the spec.
PROMOTION_STEPS = Registry("promotion step")
PROMOTION_STEPS.discover("raytune_opt.promote.steps")


# ---------------------------------------------------------------- the README's table

#: Every registry, with the spec key that names its entries.
EXTENSION_POINTS = (("MODELS", MODELS, "model.name"), ("DATASETS", DATASETS, "data.dataset"),
                    ("LOOPS", LOOPS, "train.loop"), ("OPTIMIZERS", OPTIMIZERS, "train.optimizer.name"),
                    ("LR_SCHEDULES", LR_SCHEDULES, "train.lr_schedule.name"), ("LOSSES", LOSSES, "train.loss.name"),
                    ("STRATEGIES", STRATEGIES, "train.strategy"), ("SEARCHERS", SEARCHERS, "search.algorithm"),
                    ("OPTUNA_SAMPLERS", OPTUNA_SAMPLERS, "search.sampler"), ("SCHEDULERS", SCHEDULERS, "scheduler.name"),
                    ("PROMOTION_STEPS", PROMOTION_STEPS, "promote.targets"))


def extension_points_markdown() -> str:
    """The README's table of registries and their built-in entries, generated so it cannot drift."""
    rows = ["| registry | spec key | built-in entries |", "|---|---|---|"]
    for attr, reg, key in EXTENSION_POINTS:
        rows.append(f"| `{attr}` | `{key}` | {', '.join(reg)} |")
    return "\n".join(rows)
