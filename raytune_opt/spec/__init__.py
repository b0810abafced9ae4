"""The sweep spec: schema, safe YAML loading with positions, overrides and validation."""

from raytune_opt.spec.validate import Spec, load_spec, parse_override

__all__ = ["Spec", "load_spec", "parse_override"]
