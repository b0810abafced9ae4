"""The test split's one measurement: the chosen trial's model on data the search never saw.

Trials train on the training split and report on the validation split; the sweep picks the
trial whose validation figure is best, so that figure is biased upward (the winner's curse
of model selection: the more trials, the more). Once the sweep is over, the best trial's
checkpoint is measured once on the test split (``data.test_fraction``, or the data set's own
test set): its ``test_*`` figures go to ``best.json``'s ``test`` record and the summary.
Promotion measures every artifact on the same split (:mod:`raytune_opt.promote.pipeline`).

best.json's ``test``: ``{"trial_id", "metrics": {"test_accuracy", "test_f1", "test_loss", ...},
"samples"}``, or null when the data set has no test split (the figures are then validation
figures only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from raytune_opt import _atomic, registry
from raytune_opt._warn import first_line, keep_traceback
from raytune_opt.errors import RaytuneOptError
from raytune_opt.experiment import BEST

__all__ = ["measure", "record", "NO_TEST_SPLIT"]

NO_TEST_SPLIT = "no test split (data.test_fraction 0, or a data set without one): these are validation figures"


def measure(checkpoint: str | Path, seed: int, code_dirs: Sequence[str] = (), *, also_val: bool = False) -> dict | None:
    """The ``test_*`` figures of ``checkpoint``'s model on its data set's test split (the data
    section its recipe records, split with ``seed``), with ``samples``; None without a test split.
    With ``also_val``, its ``val_*`` figures too (a trial other than best.json's best, whose
    validation figures the summary shows beside the test ones).

    The checkpoint is the sweep's own: its user code (model, data set) is trusted, as the
    sweep ran it.

    Raises:
        CheckpointError, DataError: the checkpoint or the data set cannot be read.
    """
    from raytune_opt.recipe.bundle import load_bundle
    from raytune_opt.recipe.checkpoint import load_model
    from raytune_opt.recipe.loop import split_metrics

    with registry.code_path(list(code_dirs)):
        model, ckpt = load_model(checkpoint, trust_code=True)
        data = load_bundle(ckpt["recipe"]["data"], int(seed), code_dirs)
    if data.test is None:
        return None
    figures = split_metrics(model, data, "test", "test_")
    if also_val:
        figures["val"] = {k: v for k, v in split_metrics(model, data, "val", "val_").items() if k != "samples"}
    return figures


def record(exp_dir: Path, seed: int, code_dirs: Sequence[str] = (), endpoint_url: str | None = None,
           *, selected: bool = False) -> dict | None:
    """Measure the chosen trial on the test split and add the ``test`` record to best.json:
    best.json's best, or with ``selected`` (``promote.select`` is set: several objectives) the
    trial that rule picks, the point promotion converts (its ``val`` figures are recorded too).

    Never raises: the sweep's results are written already, so a failure warns on stderr
    (traceback in warnings.log) and best.json keeps no ``test`` record.

    Returns:
        The ``test`` record; None without a best trial's checkpoint or a test split;
        ``{"failed": WHY}`` when the measurement failed (best.json is left as it was).
    """
    path = Path(exp_dir) / BEST
    try:
        best = json.loads(path.read_text())
        # The same file promotion uses (an S3 one downloaded where promotion looks for it).
        from raytune_opt.promote.select import locate_checkpoint, select_source

        if selected:
            source = select_source(exp_dir)
            trial_id, checkpoint = source.trial_id, source.checkpoint
        elif not best.get("checkpoint"):
            return None
        else:
            trial_id, checkpoint = best["trial_id"], locate_checkpoint(Path(exp_dir), best, endpoint_url)
        figures = measure(checkpoint, seed, code_dirs, also_val=selected)
    except Exception as exc:  # a view of finished results: it warns, never fails the sweep
        where = keep_traceback(exp_dir, "test split", exc) if not isinstance(exc, RaytuneOptError) else ""
        print(f"raytune-opt: warning: the best trial could not be measured on the test split "
              f"({type(exc).__name__}: {first_line(exc)[:200]}){where}; 'raytune-opt promote' measures it too",
              file=sys.stderr)
        return {"failed": f"{type(exc).__name__}: {first_line(exc)[:200]}"}
    test = None
    if figures is not None:
        samples = figures.pop("samples")
        val = figures.pop("val", None)
        test = {"trial_id": trial_id, "metrics": figures, "samples": samples}
        if val is not None:
            test.update(selected_by="promote.select", val=val)
    best["test"] = test
    _atomic.write_json(path, best)
    return test
