"""What the rules of the trainer integrations share (imports neither torch nor a trainer).

A trainer that owns its loop reads a few of the spec's ``train`` keys and takes its own
settings in ``train.<section>`` (Lightning's ``trainer``, Hugging Face's ``args`` and
``peft``). :func:`refuse_unread` refuses the other ``train`` keys, given or searched, with
what takes their place; :func:`check_arguments` checks a section's keys against the
arguments of the class it is passed to (a static list the integration's tests compare with
the installed signature), refusing what the sweep sets itself, with a did-you-mean.
"""

from __future__ import annotations

from typing import Mapping, Sequence

__all__ = ["missing_extra", "refuse_unread", "check_arguments"]


def missing_extra(view, module: str, loop: str, extra: str) -> list:
    """A finding at ``train.loop`` when ``module`` is not installed (the extra to install)."""
    from raytune_opt import _imports
    from raytune_opt.registry import Finding

    if _imports.is_available(module):
        return []
    return [Finding(("train", "loop"), f"train.loop {loop} needs the Python package '{module}', which is not "
                    f"installed (got {loop})", f"install the {extra} extra: pip install 'raytune-opt[{extra}]'")]


def refuse_unread(view, read: Sequence[str], owner: Mapping[str, str], trainer: str, loop: str,
                  default_owner: str) -> list:
    """Findings for the ``train`` keys the trainer does not read, written or searched.

    Args:
        view: the :class:`raytune_opt.registry.SpecView`.
        read: the ``train`` keys the loop reads.
        owner: per refused key, the fix (what takes its place).
        trainer: the trainer's name in messages ("Lightning's Trainer").
        loop: the ``train.loop`` name.
        default_owner: the fix for a key ``owner`` does not name.
    """
    from raytune_opt.registry import Finding
    from raytune_opt.spec.checker import fmt

    out = []
    train = view.data["train"]
    for key in train:
        if key in read:
            continue
        searched = sorted(k for k in view.space.by_key if k == f"train.{key}" or k.startswith(f"train.{key}."))
        for path in _given_leaves(view, ("train", key), train[key]):
            out.append(Finding(path, f"{trainer} does not read it with train.loop: {loop} (got "
                               f"{fmt(_at(train, path[1:]))})", f"remove it; {owner.get(key, default_owner)}"))
        for dotted in searched:
            out.append(Finding(("space", dotted), f"searches {dotted}, which {trainer} does not read with "
                               f"train.loop: {loop}", f"remove it from space; {owner.get(key, '')}".rstrip("; "),
                               at=dotted))
    return out


def check_arguments(view, section: str, params: Sequence[str], owned: Mapping[str, str], cls: str,
                    renamed: Mapping[str, str] | None = None) -> list:
    """Findings for ``train.<section>``'s keys, written or searched, that ``cls`` does not take
    (with a did-you-mean) or that the sweep sets itself (``owned``: key -> what sets it).

    Args:
        params: ``cls``'s keyword arguments.
        renamed: keys ``cls`` no longer takes -> the fix (a rename between releases).
    """
    from raytune_opt.registry import Finding
    from raytune_opt.spec.checker import did_you_mean, fmt

    out = []
    given = view.data["train"].get(section) or {}
    prefix = f"train.{section}."
    searched = {k[len(prefix):]: k for k in view.space.by_key if k.startswith(prefix)}
    short = cls.rsplit(".", 1)[-1]
    for name in [*given, *(k for k in searched if k not in given)]:
        at = searched.get(name)
        path = ("train", section, name)
        if name in owned:
            out.append(Finding(path, f"the sweep sets {short}'s {name} itself (got {fmt(given.get(name))})",
                               f"remove it; {owned[name]} sets it", at=at))
        elif name not in params:
            hint = (renamed or {}).get(name) or did_you_mean(name, params)
            out.append(Finding(path, f"{cls} takes no argument {name!r} (got {fmt(given.get(name))})",
                               (hint + " " if hint else "") + f"see {cls}'s arguments", at=at))
    return out


def _given_leaves(view, path: tuple, value) -> list[tuple]:
    """The paths under ``path`` the user wrote (a section's leaves, or ``path`` itself)."""
    if not view.given(path):
        return []
    if isinstance(value, dict) and value:
        leaves = [leaf for key, sub in value.items() for leaf in _given_leaves(view, (*path, key), sub)]
        return leaves or [path]
    return [path]


def _at(node, path: tuple):
    for key in path:
        node = node[key]
    return node
