"""The sweep spec: schema, safe YAML loading with positions, overrides and validation.

Its public names load :mod:`.validate` when first used: a registry entry's module may import
:mod:`.fields` (the schema's node types) without pulling in the schema, which reads the
registries while it is built.
"""

import importlib

__all__ = ["Spec", "load_spec", "parse_override"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.validate"), name)
    globals()[name] = value
    return value
