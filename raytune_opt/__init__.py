"""raytune-opt: declarative hyperparameter sweeps for PyTorch on Ray Tune + Ray Train."""

__version__ = "0.1.0"
