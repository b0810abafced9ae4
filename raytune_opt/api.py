"""The Python API: what the CLI does, for notebooks and scripts (``import raytune_opt``).

Each function takes a spec as a YAML file's path or as a dict (the YAML's contents), plus
``key=value`` overrides, exactly as the CLI does; errors are the project's own exceptions
(:class:`~raytune_opt.errors.SpecError` carries every problem of a spec in ``.problems``).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from raytune_opt.errors import Problem, SpecError, UsageError

__all__ = ["load", "validate", "run", "load_model"]

def load(spec: str | os.PathLike | dict, overrides: Sequence[str] = (), *, local: bool = False):
    """The validated spec (:class:`raytune_opt.spec.Spec`).

    Args:
        spec: a YAML file, or a dict of its contents (user code is then imported from the
            current directory, then ``sys.path``).
        overrides: ``key=value`` strings, as on the command line.
        local: also check that one trial fits on this machine.

    Raises:
        SpecError: every problem at once (``.problems``).
    """
    with _spec_file(spec) as (path, code_dirs, label):
        return _load_file(path, overrides, local, code_dirs, label)


def _load_file(path: Path, overrides: Sequence[str], local: bool, code_dirs: tuple | None, label: str | None):
    from raytune_opt.spec import load_spec

    try:
        return load_spec(path, list(overrides), local=local, code_dirs=code_dirs)
    except SpecError as exc:
        if label is None:
            raise
        # Lines and columns of the YAML written from the dict mean nothing to its author.
        at = re.compile(rf"^{re.escape(str(path))}(:\d+:\d+)?")
        raise SpecError([replace(p, where=at.sub(label, p.where)) for p in exc.problems]) from None


def validate(spec: str | os.PathLike | dict, overrides: Sequence[str] = (), *, local: bool = False,
             smoke: bool = False) -> list[Problem]:
    """Every problem of ``spec`` (empty: valid), without starting anything.

    ``smoke``: also load the data and push one batch of a sampled config through the model
    (``raytune-opt validate --smoke``); its failure is raised, not returned.

    Raises:
        SmokeError, DataError: the smoke test failed.
    """
    try:
        loaded = load(spec, overrides, local=local)
    except SpecError as exc:
        return list(exc.problems)
    if smoke:
        from raytune_opt.smoke import smoke as run_smoke

        run_smoke(loaded, echo=lambda line: None)
    return []


def run(spec: str | os.PathLike | dict, overrides: Sequence[str] = (), *, storage: str | None = None,
        address: str | None = None, dry_run: bool = False, promote: bool | None = None, quiet: bool = False):
    """Run the sweep, then (unless told otherwise) promote its best trial, as ``raytune-opt run``.

    Args:
        spec, overrides: as :func:`load`.
        storage: the results directory or ``s3://BUCKET/PREFIX`` (default: ``storage.path``).
        address: a Ray cluster to join (default ``$RAY_ADDRESS``, else an embedded local Ray).
        dry_run: every trial for a few batches, one worker, FIFO.
        promote: promote the best trial; None: as the spec's ``promote.enabled`` says.
        quiet: print nothing (else the CLI's compact lines: a line per finished trial, the
            promotion's steps).

    Returns:
        The :class:`~raytune_opt.sweep.SweepOutcome`: ``exp_dir``, ``rows`` (one per trial),
        ``best`` (the best trial's row, or None; its figures are validation figures), ``test``
        (the best trial measured on the test split no trial saw: ``{"trial_id", "metrics":
        {"test_accuracy", ...}, "samples"}``, as in best.json; None without a test split;
        ``{"failed": WHY}`` when it could not be measured),
        ``where``; ``promotion`` holds the manifest when the best trial was promoted (each
        artifact with its ``test_accuracy`` or ``test_score``).

    Raises:
        SpecError, UsageError, DataError...: as the CLI reports them.
    """
    import io

    from raytune_opt import ray_runtime, report
    from raytune_opt.sweep import run_sweep

    local = ray_runtime.resolve_address(address) is None and not dry_run
    with _spec_file(spec) as (path, code_dirs, label):  # the file must outlive the run (it is copied in)
        loaded = _load_file(path, overrides, local, code_dirs, label)
        silence = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
        with silence:
            outcome = run_sweep(loaded, address=address, storage=storage, dry_run=dry_run, verbose=0, live=True,
                                callbacks=report.callbacks)
            report.after_sweep(outcome.location)  # warns, never fails the sweep
            if outcome.best is not None and (loaded.data["promote"]["enabled"] if promote is None else promote):
                from raytune_opt.promote import promote as promote_experiment

                # The sweep ran the code its spec names: its own promotion trusts the same code.
                outcome.promotion = promote_experiment(outcome.where, None, address, log=print,
                                                       endpoint_url=loaded.data["storage"]["endpoint_url"],
                                                       trust_code=True)
            report.after_promotion(outcome)
    return outcome


def load_model(path: str | os.PathLike, map_location: str = "cpu", *, trust_code: bool = False):
    """The trained model of a checkpoint, in eval mode, rebuilt without the spec.

    Args:
        path: a checkpoint file (``best.pt``, ``last.pt``), a trial's checkpoint directory, or
            an experiment directory (its best trial's best checkpoint).
        map_location: where the weights go.
        trust_code: import the user model the checkpoint names (and, for an experiment
            directory, from the directories its sweep imported it from). It runs that code:
            pass it only for your own checkpoints. Built-in models need no trust.

    Raises:
        UntrustedCodeError: the checkpoint names a user model and ``trust_code`` is false
            (one line naming the model, the file and the flag; nothing was imported).
        CheckpointError: not a readable raytune-opt checkpoint, or its model cannot be rebuilt.
        NoSuccessfulTrialError: an experiment directory without a best trial.
    """
    from raytune_opt import registry
    from raytune_opt.recipe.checkpoint import load_model as load_checkpoint_model
    from raytune_opt.experiment import BEST, RUN_META, code_dirs_of

    path = Path(path).expanduser()
    dirs: list[str] = []
    if (path / RUN_META).is_file() or (path / BEST).is_file():
        from raytune_opt.promote.select import select_source

        dirs = code_dirs_of(path) if trust_code else []
        path = select_source(path).checkpoint
    # Untrusted, nothing goes on sys.path: a file in the current directory could stand in for
    # a module a built-in model imports.
    with registry.code_path(dirs) if trust_code else contextlib.nullcontext():
        model, _ = load_checkpoint_model(path, map_location, trust_code=trust_code)
    return model


@contextlib.contextmanager
def _spec_file(spec: Any) -> Iterator[tuple[Path, tuple | None, str | None]]:
    """(a YAML file holding ``spec``, where user code is imported from, the label problems use)."""
    if isinstance(spec, (str, os.PathLike)):
        yield Path(spec), None, None
        return
    if not isinstance(spec, dict):
        raise UsageError(f"spec must be a YAML file's path or a dict (got {type(spec).__name__}); pass e.g. "
                         f"'search_spaces/digits_cnn.yaml'")
    import yaml

    with tempfile.TemporaryDirectory(prefix="raytune-opt-spec-") as tmp:
        path = Path(tmp) / "spec.yaml"
        try:
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
        except yaml.YAMLError as exc:
            raise UsageError(f"spec: the dict holds values YAML cannot represent ({exc}); use plain numbers, "
                             f"strings, lists and dicts") from None
        yield path, (os.getcwd(),), "<dict>"
