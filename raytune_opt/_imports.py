"""Lazy imports of optional heavy dependencies with an install hint (as in optuna._imports)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from raytune_opt.errors import MissingDependencyError

_EXTRA_FOR = {
    "deepspeed": "deepspeed",
    "tensorrt": "tensorrt",
    "polygraphy": "tensorrt",
    "mlflow": "mlflow",
    "wandb": "wandb",
    "lightning": "lightning",
    "transformers": "hf",
    "peft": "hf",
    "accelerate": "hf",
    "hpbandster": "bohb",
    "ConfigSpace": "bohb",
}


def is_available(module: str) -> bool:
    """True when ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise a MissingDependencyError naming the extra to install.

    Raises:
        MissingDependencyError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRA_FOR.get(module.split(".")[0])
        hint = f"pip install 'raytune-opt[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module}', which is not installed "
            f"({exc}); install it with: {hint}"
        ) from None
