"""The spec's ``space`` section: YAML domains checked against the recipe keys they tune.

:func:`parse_space` reads ``space`` into a :class:`~raytune_opt.space.Space` (domains, nested
choice sub-spaces, ``when`` conditions, parents before children), recording every problem on
the :class:`~raytune_opt.spec.checker.Checker`; :func:`space_from_data` does the same for a
space read back from an experiment's ``spec.yaml``. Imports neither torch nor Ray.
"""

from __future__ import annotations

import math
from typing import Any

from raytune_opt.errors import Problem, SpecError
from raytune_opt.space import CATEGORICAL_KINDS, KINDS, NUMERIC_KINDS, Condition, Domain, Param, Space
from raytune_opt.spec import schema
from raytune_opt.spec.checker import Checker, coerce, did_you_mean, fmt
from raytune_opt.spec.schema import Field
from raytune_opt.spec.yaml_loader import Located


def _space_target(ck: Checker, key: Any, path: tuple) -> Field | None:
    """The recipe Field a space key tunes, or None after recording a problem."""
    if not isinstance(key, str):
        ck.add(path, f"a space key must be a dotted recipe key (got {fmt(key)})", "e.g. train.optimizer.lr")
        return None
    parts = tuple(key.split("."))
    if parts[0] not in schema.TUNABLE_SECTIONS:
        ck.add(path, f"names nothing tunable (got {fmt(key)})",
               "space keys start with " + " / ".join(f"'{s}.'" for s in schema.TUNABLE_SECTIONS))
        return None
    if parts[:2] == ("train", "deepspeed") and len(parts) > 2:
        return Field("any", None, "DeepSpeed config value")
    node = schema.lookup(parts)
    if isinstance(node, Field) and node.tunable:
        return node
    if isinstance(node, Field):
        why = f": {node.fixed_because}" if node.fixed_because else ""
        ck.add(path, f"cannot be tuned{why} (got {fmt(key)})", f"set {key} outside space")
        return None
    leaves = [".".join(p) for p, f in schema.iter_fields() if p[0] in schema.TUNABLE_SECTIONS and f.tunable]
    hint = did_you_mean(key, leaves)
    ck.add(path, f"names nothing in the recipe (got {fmt(key)})",
           hint or "see the README's spec reference for the tunable keys")
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _numeric_domain(ck: Checker, kind: str, args: Any, fld: Field, path: tuple) -> Domain | None:
    nargs, integer, log, quantized = NUMERIC_KINDS[kind]
    names = {2: "[low, high]", 3: "[low, high, q]"}[nargs] if kind != "normal" else "[mean, sd]"
    if not isinstance(args, list) or len(args) != nargs:
        ck.add(path, f"{kind} takes {names} (got {fmt(args)})", f"write {{{kind}: {names}}}")
        return None
    nums = [_number(a) for a in args]
    if any(n is None for n in nums):
        ck.add(path, f"{kind} arguments must be numbers (got {fmt(args)})", f"write {{{kind}: {names}}}")
        return None
    if integer:
        if any(not float(n).is_integer() for n in nums):
            ck.add(path, f"{kind} arguments must be integers (got {fmt(args)})", "use uniform for real values")
            return None
        nums = [int(n) for n in nums]
    bad = False
    if kind == "normal":
        if nums[1] <= 0:
            ck.add(path, f"normal needs sd > 0 (got sd={nums[1]:g})", "give a positive standard deviation")
            bad = True
    else:
        low, high = nums[0], nums[1]
        if low >= high:
            ck.add(path, f"low must be below high (got low={low:g}, high={high:g})", "swap or widen the bounds")
            bad = True
        if log and low <= 0:
            ck.add(path, f"{kind} needs low > 0 (got low={low:g})", "give a positive lower bound, e.g. 1e-5")
            bad = True
    if quantized and nums[2] <= 0:
        ck.add(path, f"q must be > 0 (got q={nums[2]:g})", "give a positive step")
        bad = True
    if bad:
        return None
    # The domain's values must be valid for the recipe key it tunes.
    if fld.type == "int" and not integer:
        ck.add(path, f"{'.'.join(map(str, path[1:2]))} takes integers but {kind} gives reals (got {fmt(args)})",
               "use randint, qrandint, lograndint or choice")
        return None
    if fld.type not in ("int", "float", "any"):
        ck.add(path, f"a {fld.type} setting cannot take a numeric {kind} (got {fmt(args)})",
               "use {choice: [...]}")
        return None
    if kind == "normal":
        if any(b is not None for b in (fld.ge, fld.gt, fld.le, fld.lt)):
            ck.add(path, f"normal is unbounded but this setting must be {fld.bounds_text()} (got {fmt(args)})",
                   "use uniform or loguniform")
            return None
    else:
        top = nums[1] - 1 if kind in ("randint", "lograndint") else nums[1]
        for end in (nums[0], top):
            _, wrong, _ = coerce(end, fld)
            if wrong:
                ck.add(path, f"the range leaves the setting's bounds (got {fmt(args)})",
                       f"keep it within {fld.bounds_text()}")
                return None
    if kind == "qrandint":  # Ray requires an integer step
        nums[2] = int(nums[2])
    return Domain(kind, tuple(nums))


def _categorical_options(ck: Checker, kind: str, options: list, fld: Field, path: tuple) -> tuple | None:
    if not options:
        ck.add(path, f"{kind} needs at least one option (got [])", "list the options")
        return None
    ok = True
    seen = []
    for i, option in enumerate(options):
        if isinstance(option, (list, dict)):
            ck.add(path + (i,), f"{kind} options must be scalars (got {fmt(option)})",
                   "use numbers, strings, booleans or null")
            ok = False
            continue
        value, wrong, fix = coerce(option, fld)
        if wrong:
            ck.add(path + (i,), f"option {wrong}", fix)
            ok = False
        elif value in seen:
            ck.add(path + (i,), f"{kind} lists an option twice (got {fmt(option)})", "remove the duplicate")
            ok = False
        seen.append(value)
    return tuple(seen) if ok else None


def _parse_space(ck: Checker, raw: dict, path: tuple, inherited: tuple, params: dict, whens: dict) -> None:
    for key, value in raw.items():
        ppath = path + (key,)
        fld = _space_target(ck, key, ppath)
        if fld is None:
            continue
        if not isinstance(value, dict):
            ck.add(ppath, f"a domain must be a mapping like {{uniform: [0, 1]}} (got {fmt(value)})",
                   "to fix a value instead, set it outside space")
            continue
        kinds = [k for k in value if k != "when"]
        unknown = [k for k in kinds if k not in KINDS]
        for k in unknown:
            hint = did_you_mean(k, KINDS)
            ck.add(ppath + (k,), f"unknown domain (got {fmt(k)})",
                   (hint + " " if hint else "") + "valid: " + ", ".join(KINDS))
        kinds = [k for k in kinds if k in KINDS]
        if unknown:
            continue
        if len(kinds) != 1:
            ck.add(ppath, f"a domain needs exactly one kind (got {fmt(kinds)})",
                   "write one of " + ", ".join(KINDS))
            continue
        kind = kinds[0]
        args = value[kind]
        dpath = ppath + (kind,)
        children: dict = {}
        if kind in CATEGORICAL_KINDS:
            if isinstance(args, dict) and kind == "choice":
                children = {opt: sub for opt, sub in args.items()}
                options = _categorical_options(ck, kind, list(args), fld, dpath)
            elif isinstance(args, list):
                options = _categorical_options(ck, kind, args, fld, dpath)
            else:
                ck.add(dpath, f"{kind} takes a list of options (got {fmt(args)})",
                       f"write {{{kind}: [a, b]}}" + (" or a mapping option -> sub-space" if kind == "choice" else ""))
                continue
            domain = Domain(kind, options) if options is not None else None
        else:
            domain = _numeric_domain(ck, kind, args, fld, dpath)
        if domain is None:
            continue
        if key in params:
            merged = _merge_branches(params[key], domain, inherited, children, value)
            if merged is None:
                ck.add(ppath, f"the space defines this key twice (got {fmt(key)})",
                       "keep one definition; the same domain may repeat only under options of one choice")
            else:
                params[key] = merged
            continue
        if "when" in value:
            whens[key] = (value["when"], ppath + ("when",))
        params[key] = Param(key, domain, inherited)
        ck.param_at[key] = ppath
        for option, sub in children.items():
            subpath = dpath + (option,)
            if sub is None:
                continue
            if not isinstance(sub, dict):
                ck.add(subpath, f"a choice option's sub-space must be a mapping of keys to domains (got {fmt(sub)})",
                       "write {} for an option without sub-parameters")
                continue
            _parse_space(ck, sub, subpath, inherited + (Condition(key, (option,)),), params, whens)


def _merge_branches(existing: Param, domain: Domain, inherited: tuple, children: dict, value: dict) -> Param | None:
    """One parameter under several options of the same choice (beta1 for adam and adamw).

    Allowed when the domain is the same and it has no sub-spaces or ``when`` of its own:
    the condition becomes "parent in {both options}".
    """
    if existing.domain != domain or children or "when" in value or not inherited or not existing.conditions:
        return None
    old_last, new_last = existing.conditions[-1], inherited[-1]
    if existing.conditions[:-1] != inherited[:-1] or old_last.parent != new_last.parent:
        return None
    values = old_last.values + tuple(v for v in new_last.values if v not in old_last.values)
    return Param(existing.key, domain, inherited[:-1] + (Condition(old_last.parent, values),))


def _resolve_whens(ck: Checker, params: dict, whens: dict) -> None:
    for key, (when, wpath) in whens.items():
        if not isinstance(when, dict) or not when:
            ck.add(wpath, f"when must map a parameter to a value or list of values (got {fmt(when)})",
                   "write when: {train.optimizer.name: sgd}")
            params.pop(key, None)
            continue
        conds = []
        for parent, values in when.items():
            values = values if isinstance(values, list) else [values]
            parent_param = params.get(parent)
            if parent_param is None:
                hint = did_you_mean(parent, params)
                ck.add(wpath + (parent,), f"conditional on an unknown parameter (got {fmt(parent)})",
                       (hint + " " if hint else "") + "the parent must be a choice or grid in this space")
                continue
            if not parent_param.domain.categorical:
                ck.add(wpath + (parent,), f"the parent must be a choice or grid (got {parent_param.domain.kind})",
                       "make the parent a choice")
                continue
            missing = [v for v in values if v not in parent_param.domain.args]
            if missing or not values:
                ck.add(wpath + (parent,), f"conditional on a value the parent cannot take (got {fmt(missing or values)})",
                       "valid: " + ", ".join(map(str, parent_param.domain.args)))
                continue
            conds.append(Condition(parent, tuple(values)))
        if key in params:
            params[key] = Param(key, params[key].domain, params[key].conditions + tuple(conds))


def _order(ck: Checker, params: dict) -> list[Param]:
    """Parents before children; a cycle is a problem."""
    ordered: list[Param] = []
    state: dict[str, str] = {}

    def visit(key: str, trail: list[str]) -> bool:
        if state.get(key) == "done":
            return True
        if state.get(key) == "visiting":
            ck.add(("space", key), f"conditions form a cycle ({' -> '.join(trail + [key])})",
                   "a parameter cannot depend on itself", at=ck.param_at.get(key))
            return False
        state[key] = "visiting"
        ok = all(visit(c.parent, trail + [key]) for c in params[key].conditions if c.parent in params)
        state[key] = "done"
        if ok:
            ordered.append(params[key])
        return ok

    for key in list(params):
        visit(key, [])
    return ordered


def parse_space(ck: Checker, raw: Any) -> Space:
    if raw is None:
        return Space([])
    params: dict[str, Param] = {}
    whens: dict = {}
    _parse_space(ck, raw, ("space",), (), params, whens)
    _resolve_whens(ck, params, whens)
    return Space(_order(ck, params))


def space_from_data(raw: Any, source: str) -> Space:
    """A ``space`` section read as data, as an experiment's spec.yaml records it (overrides
    applied): keys and domains are checked against the schema, no other setting is read and
    nothing is imported (the report rebuilds an experiment's space this way).

    Raises:
        SpecError: the section does not parse; every problem at once, at ``source``.
    """
    if raw is not None and not isinstance(raw, dict):
        raise SpecError([Problem(f"{source}:1:1", "space", f"must be a mapping of keys to domains (got {fmt(raw)})",
                                 "restore the experiment's spec.yaml")])
    ck = Checker(Located(source), {"space": raw})
    space = parse_space(ck, raw or None)
    if ck.problems:
        raise SpecError(ck.problems)
    return space
