"""raytune-opt: declarative hyperparameter sweeps for PyTorch on Ray Tune + Ray Train.

Public names (importing this package imports neither torch nor Ray; each name loads its
module when first used):

- :func:`run`: run a sweep from a spec (a YAML path or a dict) and promote its best trial;
- :func:`validate`: every problem of a spec, as a list (empty: valid);
- :func:`load`: the validated spec;
- :func:`load_model`: a trained model from a checkpoint or an experiment directory (a user
  model's code is imported only with ``trust_code=True``);
- :class:`DataBundle`: what a data set callable (``data.dataset: module:callable``) returns;
- :class:`TrialContext`: what a training loop (``train.loop: module:callable``) gets.
"""

__version__ = "0.1.0"
__all__ = ["run", "validate", "load", "load_model", "DataBundle", "TrialContext", "__version__"]

_LAZY = {"run": "raytune_opt.api", "validate": "raytune_opt.api", "load": "raytune_opt.api",
         "load_model": "raytune_opt.api", "DataBundle": "raytune_opt.recipe.bundle",
         "TrialContext": "raytune_opt.recipe.context"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raytune_opt' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
