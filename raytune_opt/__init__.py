"""raytune-opt: declarative hyperparameter sweeps for PyTorch on Ray Tune + Ray Train.

Public names (importing this package imports neither torch nor Ray; each name loads its
module when first used):

- :class:`DataBundle`: what a data set callable (``data.dataset: module:callable``) returns.
"""

__version__ = "0.1.0"
__all__ = ["DataBundle", "__version__"]

_LAZY = {"DataBundle": "raytune_opt.recipe.bundle"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raytune_opt' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
