"""Self-describing checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so
:func:`load_checkpoint` never unpickles code. It carries the model's spec (from
:func:`raytune_opt.recipe.models.model_spec`: a built-in's name and keys, or a user
model's import path and args) and the recipe, so :func:`load_model` rebuilds the network
without the sweep's spec file.

Rebuilding imports and calls the code the spec names, so what is trusted is the file, not
the format: a built-in model is always rebuilt, a user model's ``target`` (any import path
that is not exactly a registry entry's, ``os:system`` included) only with
``load_model(path, trust_code=True)`` (:mod:`raytune_opt.trust`). Load checkpoints from
elsewhere with trust off.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from raytune_opt import _atomic, trust
from raytune_opt.recipe.errors import CheckpointError, RecipeConfigError
from raytune_opt.recipe.models import build_model_from_spec
from raytune_opt.trust import UntrustedCodeError

__all__ = ["FORMAT", "BEST", "LAST", "CheckpointError", "UntrustedCodeError", "make_checkpoint", "save_checkpoint",
           "write_checkpoints", "load_checkpoint", "load_model"]

FORMAT = "raytune-opt/checkpoint/v1"
BEST = "best.pt"
LAST = "last.pt"
_REQUIRED = ("format", "model", "model_state", "epoch")


def make_checkpoint(*, model_spec: dict, model_state: dict, optimizer_state: dict | None = None,
                    scheduler_state: dict | None = None, epoch: int, metrics: dict | None = None,
                    recipe: dict | None = None, spec_sha256: str = "", extra: dict | None = None) -> dict:
    """Assemble a checkpoint dict in the v1 format.

    Args:
        model_spec: :func:`~raytune_opt.recipe.models.model_spec` of the model.
        model_state: the unwrapped model's ``state_dict()``.
        optimizer_state: the optimizer's ``state_dict()``.
        scheduler_state: the schedule's ``state_dict()``.
        epoch: the last completed epoch (1-based).
        metrics: the metrics reported for that epoch.
        recipe: the ``data``, ``model`` and ``train`` sections of the resolved spec.
        spec_sha256: hash of the sweep's spec, linking the checkpoint to its sweep.
        extra: more plain values (the loop keeps its early-stopping state and the strategy's
            description of its shards here; no RNG state: every epoch reseeds from seed, epoch and rank).
    """
    ckpt = {
        "format": FORMAT,
        "model": dict(model_spec),
        "model_state": model_state,
        "optimizer_state": optimizer_state,
        "scheduler_state": scheduler_state,
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        "recipe": dict(recipe or {}),
        "spec_sha256": spec_sha256,
        # TorchVersion is a str subclass that weights_only loading refuses; store a plain str.
        "torch_version": str(torch.__version__),
    }
    if extra:
        ckpt.update(extra)
    return ckpt


def _serialize(ckpt: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue()


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic.write_bytes(path, _serialize(ckpt))
    return path


def write_checkpoints(ckpt: dict, directory: str | os.PathLike, *, is_best: bool) -> Path:
    """Write ``last.pt`` in ``directory``, and ``best.pt`` too when ``is_best``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = _serialize(ckpt)  # serialize once, write once or twice
    _atomic.write_bytes(directory / LAST, payload)
    if is_best:
        _atomic.write_bytes(directory / BEST, payload)
    return directory


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Args:
        path: a ``.pt`` file, or a directory holding ``best.pt`` (else ``last.pt``).
        map_location: where tensors go.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, needs unsafe
            unpickling, or is not a raytune-opt checkpoint.
    """
    path = _file_of(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path (a trial's checkpoint "
                              f"directory holds {BEST} and {LAST})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: holds objects that need unsafe unpickling ({_first_line(exc)}); "
                              f"only raytune-opt checkpoints are loaded") from None
    except Exception as exc:  # garbage makes the unpickler fail in many ways (KeyError, EOFError...)
        raise CheckpointError(f"{path}: cannot be read, the file is truncated or corrupt ({_first_line(exc)}); "
                              f"use another checkpoint (e.g. {LAST} or an earlier trial's)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or any(k not in ckpt for k in _REQUIRED):
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a raytune-opt checkpoint (format {found!r}, expected {FORMAT!r}); "
                              f"point at a checkpoint written by raytune-opt")
    return ckpt


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
               trust_code: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild the checkpoint's model with its weights, in eval mode.

    Args:
        path: as :func:`load_checkpoint`.
        map_location: where the model and tensors go.
        trust_code: import the user model the checkpoint names (its ``target``); only for a
            checkpoint you trust, as it runs that code. Built-in models need no trust.

    Returns:
        ``(model, ckpt)``: the model and the whole checkpoint dict (metrics, recipe...).

    A user model (``model.name: module:callable``) is rebuilt, when trusted, from the import
    path and args the checkpoint records: its module must import here (from the current
    directory or ``sys.path``).

    Raises:
        UntrustedCodeError: the checkpoint names a user model and ``trust_code`` is false
            (nothing was imported).
        CheckpointError: as :func:`load_checkpoint`, the model cannot be rebuilt (e.g. a
            user model's module does not import), or the weights do not fit the model.
    """
    path = _file_of(path)
    ckpt = load_checkpoint(path, map_location)
    if not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: its model spec is a {type(ckpt['model']).__name__}, not a mapping; "
                              f"point at a checkpoint written by raytune-opt")
    trust.check_checkpoint(ckpt, path, trust_code=trust_code)
    try:
        model = build_model_from_spec(ckpt["model"])
    except RecipeConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {ckpt['model'].get('name')!r} "
                              f"({_first_line(exc)}); the checkpoint is corrupt or from another version") from None
    return model.to(map_location).eval(), ckpt


def _file_of(path: str | os.PathLike) -> Path:
    """The checkpoint file ``path`` names: itself, or a directory's best.pt (else last.pt)."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST if (path / BEST).is_file() else path / LAST
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
