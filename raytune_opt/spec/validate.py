"""Load a spec, merge ``key=value`` overrides, and check everything before Ray starts.

Every problem found is collected; :func:`load_spec` raises one :class:`SpecError` that
holds them all, each as ``FILE:LINE:COL: key.path: what is wrong (got VALUE); how to fix``.
"""

from __future__ import annotations

import hashlib
import json
import os
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raytune_opt import registry, searchers
from raytune_opt.errors import Problem, SpecError
from raytune_opt.redact import redact_data
from raytune_opt.space import Space
from raytune_opt.spec import cross_rules, schema, user_code
from raytune_opt.spec.checker import Checker as _Checker, coerce, did_you_mean, fmt
from raytune_opt.spec.checker import values_of as _values_of
from raytune_opt.spec.cross_rules import check_local_resources
from raytune_opt.spec.space_parser import parse_space, space_from_data  # noqa: F401 (report reads it here)
from raytune_opt.spec.schema import Section
from raytune_opt.spec.view import SectionView, view
from raytune_opt.spec.yaml_loader import load_value, load_yaml_file


# Keys added after experiments had been run, each with the value that does what those
# experiments did; Spec.sha256 leaves a key out at that value, so an old experiment's
# recorded hash still matches it (and resume can tell an old experiment from a changed spec).
HASH_NEUTRAL = {("data", "test_fraction"): 0.0, ("data", "test_column"): None,
                ("train", "optimizer", "args"): {}, ("train", "lr_schedule", "args"): {},
                ("search", "budget"): {"time": None, "resource_hours": None,
                                       "plateau": {"trials": None, "min_delta": 0.0}},
                ("search", "warm_start"): None, ("search", "enqueue"): None,
                ("resources", "warm_workers"): True, ("train", "trainer"): {},
                ("train", "args"): {}, ("train", "peft"): {},
                ("tracking", "wandb"): {"project": None, "entity": None, "group": None, "mode": None}}
HASH_NEUTRAL.update(schema.PROMOTE_HASH_NEUTRAL)  # the sections of newer promotion steps (their entries say so)
HASH_NEUTRAL.update(schema.SCHEDULER_HASH_NEUTRAL)  # the settings of newer schedulers (their entries say so)


@dataclass
class Spec:
    """A validated spec: the resolved settings (defaults filled in) and the parsed space."""

    data: dict
    space: Space
    source: str
    overrides: tuple = ()  # the key=value strings merged on top of the file
    # Absolute directories user code (model.name: module:callable) is imported from before
    # sys.path: the spec file's directory and the directory it was loaded from. Trials put
    # them on their sys.path too.
    code_dirs: tuple = ()

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def settings(self) -> SectionView:
        """The resolved settings as a typed read-only view: ``spec.settings.scheduler.max_t``."""
        return view((), self.data)

    def sha256(self) -> str:
        """Hash of the resolved spec; checkpoints and manifests carry it. Credentials in URIs
        are left out (the experiment's files keep them redacted, and resume compares this), and
        so is a key of :data:`HASH_NEUTRAL` at its neutral value: a spec resolved before the key
        existed hashes as it did."""
        data = redact_data(self.data)
        for path, neutral in HASH_NEUTRAL.items():
            data = _without(data, path, neutral)
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def without_test_split(self) -> "Spec":
        """This spec with ``data.test_fraction: 0`` (and no ``data.test_column``): an
        experiment started before the test split existed, as it ran (see ``resume_sweep``)."""
        data = {**self.data, "data": {**self.data["data"], "test_fraction": 0.0, "test_column": None}}
        return dataclasses.replace(self, data=data)

    def to_yaml(self) -> str:
        """The resolved spec as YAML, credentials in URIs redacted: for printing and for the
        experiment's ``spec.yaml``."""
        return yaml.safe_dump(redact_data(self.data), sort_keys=False, default_flow_style=None)


def _without(node: Any, path: tuple, neutral: Any) -> Any:
    """``node`` less the key at ``path`` when it holds ``neutral`` (copied along the path)."""
    if not isinstance(node, dict) or path[0] not in node:
        return node
    if len(path) > 1:
        return {**node, path[0]: _without(node[path[0]], path[1:], neutral)}
    return {k: v for k, v in node.items() if k != path[0]} if node[path[0]] == neutral else node


# ---------------------------------------------------------------- leaf values


def _check_section(ck: _Checker, section: Section, raw: Any, path: tuple) -> dict:
    """Validate ``raw`` against ``section``; return it with defaults filled in."""
    out = schema.defaults(section)
    if raw is None:
        return out
    if not isinstance(raw, dict):
        ck.add(path, f"must be a mapping (got {fmt(raw)})", "write its keys indented below it")
        return out
    for key, value in raw.items():
        child = path + (key,)
        node = section.fields.get(key)
        if node is None:
            hint = did_you_mean(key, section.fields)
            ck.add(child, f"unknown key (got {fmt(key)})",
                   (hint + " " if hint else "") + "valid keys here: " + ", ".join(section.fields))
            continue
        if isinstance(node, Section):
            if node.open:
                if value is None:
                    value = {}
                if not isinstance(value, dict):
                    ck.add(child, f"must be a mapping (got {fmt(value)})", "write its keys indented below it")
                    continue
                out[key] = value
            else:
                out[key] = _check_section(ck, node, value, child)
            continue
        value, wrong, fix = coerce(value, node)
        if wrong:
            ck.add(child, wrong, fix)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[tuple, Any]:
    """``'train.epochs=2'`` -> (('train', 'epochs'), 2). The value is read as YAML.

    ``space.<dotted key>=...`` keeps the dotted key whole, as in the spec file.

    Raises:
        SpecError: the override is not ``key=value`` or its value is not YAML.
    """
    where = f"override {fmt(text)}"
    if "=" not in text:
        raise SpecError([Problem(where, "", "an override must be key=value (got no '=')",
                                 "write e.g. search.num_samples=4")])
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise SpecError([Problem(where, key, f"not a dotted key (got {key!r})", "write e.g. train.epochs=2")])
    try:
        value = load_value(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(where, key, f"the value is not valid YAML ({str(exc).splitlines()[0]})",
                                 "quote it, e.g. key='text'")]) from None
    except ValueError as exc:
        raise SpecError([Problem(where, key, f"the value is too large ({exc})", "write the value out")]) from None
    if key.startswith("space.") and len(key) > len("space."):
        return ("space", key[len("space."):]), value
    return tuple(key.split(".")), value


def _apply_overrides(ck: _Checker, root: dict, overrides: list[str]) -> None:
    for text in overrides:
        try:
            path, value = parse_override(text)
        except SpecError as err:
            ck.problems.extend(err.problems)
            continue
        node = root
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
        ck.override_at[path] = f"override {fmt(text)}"


# ---------------------------------------------------------------- cross checks


def _cross_checks(ck: _Checker, d: dict, space: Space) -> None:
    """Rules across keys, each skipped when a setting it reads was already reported invalid."""
    for rules in (_data_rules, user_code.model_rules, user_code.loop_rules, cross_rules.task_rules,
                  cross_rules.precision_rules, _optimizer_rules, cross_rules.search_rules, _scheduler_rules,
                  _promotion_rules, cross_rules.select_rules, _strategy_rules, cross_rules.resource_rules,
                  _loss_rules, _searcher_rules, _budget_rules, _warm_start_rules, _tracking_rules):
        rules(ck, d, space)


def _tracking_rules(ck: _Checker, d: dict, space: Space) -> None:
    """tracking.wandb: its rules live beside the trackers (raytune_opt/tracking/__init__.py)."""
    from raytune_opt import tracking

    _entry_rules_of(ck, tracking.check(registry.SpecView(d, space, ck.given)))


def _budget_rules(ck: _Checker, d: dict, space: Space) -> None:
    """search.budget and an unbounded search.num_samples: their rules live beside them (raytune_opt/budget.py)."""
    from raytune_opt import budget

    _entry_rules_of(ck, budget.check(registry.SpecView(d, space, ck.given)))


def _warm_start_rules(ck: _Checker, d: dict, space: Space) -> None:
    """search.warm_start and search.enqueue: their rules live beside them (raytune_opt/warm_start.py)."""
    from raytune_opt import warm_start

    if ck.ok("search.warm_start", "search.enqueue", "search.algorithm"):
        _entry_rules_of(ck, warm_start.check(registry.SpecView(d, space, ck.given)))


def _data_rules(ck: _Checker, d: dict, space: Space) -> None:
    """A built-in data set's rules (its entry's ``check``), then a user data set's signature."""
    entry = registry.DATASETS.get(d["data"]["dataset"]) if ck.ok("data.dataset") else None
    if entry is not None and "keys" in entry.meta:
        _entry_rules(ck, entry, registry.SpecView(d, space, ck.given))
    user_code.data_rules(ck, d, space)


def _optimizer_rules(ck: _Checker, d: dict, space: Space) -> None:
    """A user optimizer's or schedule's signature, then the rules of the optimizers the sweep may use."""
    user_code.optimizer_rules(ck, d, space)
    _used_entries_rules(ck, registry.OPTIMIZERS, "train.optimizer.name", d, space)


def _entry_rules(ck: _Checker, entry: registry.Entry, view: registry.SpecView) -> None:
    """Record what an entry's own ``check`` finds (a built-in data set's, searcher's,
    scheduler's, strategy's, loss's or promotion step's)."""
    _entry_rules_of(ck, entry.checks(view))


def _entry_rules_of(ck: _Checker, findings) -> None:
    for f in findings:
        if ck.ok(*f.reads.split()):
            at = ck.param_at.get(f.at) if isinstance(f.at, str) else f.at  # a searched key, or a key path
            ck.add(f.path, f.what, f.fix, at=at)


def _scheduler_rules(ck: _Checker, d: dict, space: Space) -> None:
    sched = d["scheduler"]
    entry = registry.SCHEDULERS[sched["name"]]
    settings = {n: registry.SCHEDULERS[n].meta.get("settings", {}) for n in registry.SCHEDULERS}
    for key in dict.fromkeys(k for own in settings.values() for k in own):
        if ck.given(("scheduler", key)) and key not in settings[entry.name]:
            users = [n for n in registry.SCHEDULERS if key in settings[n]]
            ck.rule("scheduler.name", ("scheduler", key),
                    f"not used by scheduler {sched['name']} (got {fmt(sched[key])})",
                    f"remove it, or use scheduler.name: {' / '.join(users)}")
    if ck.ok("scheduler.name"):
        _entry_rules(ck, entry, registry.SpecView(d, space, ck.given))


def _promotion_rules(ck: _Checker, d: dict, space: Space) -> None:
    """promote: its rules live beside the steps (raytune_opt/promote/steps/__init__.py)."""
    from raytune_opt.promote import steps

    view = registry.SpecView(d, space, ck.given, ck.code_dirs)
    _entry_rules_of(ck, steps.check_enabled(view))
    if ck.ok("promote.targets"):
        _entry_rules_of(ck, steps.check_targets(view))


def _strategy_rules(ck: _Checker, d: dict, space: Space) -> None:
    """A strategy's own settings (its entry's ``keys``: train.deepspeed) do nothing under another
    strategy; each strategy the sweep may use checks the spec (its entry's ``check``) when its
    own settings are valid."""
    train, strategies = d["train"], registry.STRATEGIES
    for name in strategies:
        for key in strategies[name].meta.get("keys", ()):
            if train["strategy"] != name and train[key] and "train.strategy" not in space.by_key:
                ck.rule("train.strategy", ("train", key),
                        f"only used with train.strategy: {name} (got strategy={train['strategy']})",
                        f"remove train.{key} or set train.strategy: {name}")
    used, view = _values_of(d, space, "train.strategy"), registry.SpecView(d, space, ck.given)
    for name in strategies:
        own = [f"train.{key}" for key in strategies[name].meta.get("keys", ())]
        if name in used and ck.ok("train.strategy", *own):
            _entry_rules(ck, strategies[name], view)


def _loss_rules(ck: _Checker, d: dict, space: Space) -> None:
    _used_entries_rules(ck, registry.LOSSES, "train.loss.name", d, space)


def _used_entries_rules(ck: _Checker, reg: registry.Registry, key: str, d: dict, space: Space) -> None:
    """The rules (their entries' ``check``) of the entries of ``reg`` the sweep may use, by the
    setting ``key`` that names them (its value, or the options of a searched choice); a check
    several entries share runs once."""
    used, view, ran = _values_of(d, space, key), registry.SpecView(d, space, ck.given), []
    for name in reg:
        entry = reg[name]
        if name in used and entry.check is not None and entry.check not in ran:
            ran.append(entry.check)
            _entry_rules(ck, entry, view)


def _searcher_rules(ck: _Checker, d: dict, space: Space) -> None:
    """What the chosen searcher cannot take (grid points with optuna, conditions with gp...)."""
    search = d["search"]
    if ck.ok("search.algorithm", "search.sampler"):
        for pkey, what, fix in searchers.refusals(space, search["algorithm"], search["sampler"]):
            ck.add(("space", pkey), what, fix, at=ck.param_at.get(pkey))
    if not ck.ok("search.algorithm"):
        return
    from raytune_opt import _imports

    algorithm, entry = search["algorithm"], registry.SEARCHERS[search["algorithm"]]
    missing = [m for m in entry.meta.get("requires", ()) if not _imports.is_available(m)]
    if missing:
        ck.add(("search", "algorithm"), f"{algorithm} needs {' and '.join(missing)}, not installed (got {algorithm})",
               f"install the {entry.meta['extra']} extra: pip install 'raytune-opt[{entry.meta['extra']}]'")
    needs = entry.meta.get("scheduler")
    if needs and ck.ok("scheduler.name") and d["scheduler"]["name"] != needs:
        ck.add(("scheduler", "name"), f"{algorithm} learns from what {needs} tells it of each trial (got "
               f"{d['scheduler']['name']})", f"set scheduler.name: {needs}")


# ---------------------------------------------------------------- entry point


def load_spec(path: str | Path, overrides: list[str] | tuple = (), *, local: bool = False,
              code_dirs: tuple | None = None) -> Spec:
    """Load, merge overrides and validate a spec file.

    Args:
        path: the YAML spec.
        overrides: ``key=value`` strings applied on top of the file.
        local: also check that one trial fits on this machine (embedded local Ray).
        code_dirs: where user code is imported from before ``sys.path``; None: the spec
            file's directory and the current directory (``resume`` passes those of the run).

    Raises:
        SpecError: with every problem found.
    """
    if code_dirs is None:
        code_dirs = (str(Path(path).resolve().parent), os.getcwd())
    raw, located, problems = load_yaml_file(path)
    if raw is None:
        raise SpecError([Problem(f"{path}:1:1", "", "the spec is empty", "start from search_spaces/digits_cnn.yaml")])
    if not isinstance(raw, dict):
        raise SpecError([Problem(f"{path}:1:1", "", f"the spec's root must be a mapping (got {fmt(raw)})",
                                 "write top-level keys such as name:, data:, train:")])
    ck = _Checker(located, raw, tuple(code_dirs))
    ck.problems.extend(problems)
    _apply_overrides(ck, raw, list(overrides))
    resolved = _check_section(ck, schema.SPEC, raw, ())
    space = parse_space(ck, raw.get("space") if isinstance(raw.get("space"), dict) else None)
    # Invalid fields keep their defaults in `resolved`; rules that read them are skipped.
    _cross_checks(ck, resolved, space)
    if local and ck.ok("resources.num_workers", "resources.cpus_per_worker", "resources.gpus_per_worker"):
        for fpath, what, fix in check_local_resources(resolved):
            ck.add(fpath, what, fix)
    if ck.problems:
        raise SpecError(ck.problems)
    resolved["space"] = raw.get("space") or {}
    data_path = resolved["data"]["path"]
    if data_path and not os.path.isabs(os.path.expanduser(data_path)):
        # Relative to the spec file (the first code directory; resume passes the run's own), so
        # that every process, wherever it starts, reads the same file.
        resolved["data"]["path"] = os.path.normpath(os.path.join(code_dirs[0], data_path))
    return Spec(resolved, space, str(path), tuple(overrides), code_dirs=tuple(code_dirs))
