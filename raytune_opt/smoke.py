"""``raytune-opt validate --smoke``: build the data and the model of one sampled config and
push one batch through them, before a sweep spends cluster time on a broken component.

Steps (each a line of output, the first failure a one-line :class:`SmokeError`):

1. sample one config from the space (seeded by the spec's seed; inactive conditional keys left out);
2. load the data set (a user's data callable runs) and check what it returned;
3. build the model, run one training batch forward, check the output is ``(batch, num_classes)``,
   then backward, and check that some parameter got a finite gradient;
4. when promotion is on, export to ONNX and run the file in ONNX Runtime on the same inputs,
   so that an export problem shows now rather than after the sweep;
5. when ``prune`` is a promotion target, prune a copy of the model as ``promote.prune`` says
   (Torch-Pruning traces it), so that a model it cannot trace or prune shows now.

The steps run the user's code, so they run in a child process with a time limit: a user
module that calls ``sys.exit``/``os._exit``, kills its process or hangs is reported as such,
and a smoke test that passed always ends with the line ``smoke: ok``; a silent stop
cannot look like success.
"""

from __future__ import annotations

import math
import pickle
import random
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from raytune_opt.errors import RaytuneOptError, describe_raised, is_user_file, raised_at
from raytune_opt.space import NUMERIC_KINDS, Space, apply

__all__ = ["SmokeError", "sample_config", "smoke"]

BATCH = 8
TIMEOUT_S = 300.0  # default limit of the whole smoke test (--smoke-timeout): data, model, one batch, ONNX


class SmokeError(RaytuneOptError):
    """A component failed the smoke test (one line: which step, what, where)."""


def sample_config(space: Space, seed: "int | random.Random") -> dict:
    """One config from ``space``: every active key drawn with ``random.Random(seed)`` (or
    with ``seed`` itself, a ``random.Random``, to draw several in a row)."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    config: dict[str, Any] = {}
    for p in space.params:  # parents come before their children
        if not space.is_active(p.key, config):
            continue
        d = p.domain
        if d.categorical:
            config[p.key] = rng.choice(list(d.args))
            continue
        _, integer, log, quantized = NUMERIC_KINDS[d.kind]
        if d.kind == "normal":
            value = rng.gauss(*d.args)
        else:
            low, high = d.args[0], d.args[1]
            if integer and not quantized and not log:
                value = rng.randrange(int(low), int(high))
            else:
                value = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
        if quantized:
            q = d.args[2]
            value = round(value / q) * q
        if integer:
            value = int(round(value))
        config[p.key] = value
    return config


def smoke(spec, echo: Callable[[str], None] = print, timeout: float = TIMEOUT_S) -> dict:
    """Run the smoke test of ``spec`` (a validated :class:`~raytune_opt.spec.Spec`) in a child
    process, echoing its lines, then ``smoke: ok``.

    Args:
        timeout: seconds the whole test may take before the child is killed.

    Returns:
        What was checked: ``config``, ``input_shape``, ``num_classes``, ``output_shape``, ``onnx`` and
        ``prune`` (bools).

    Raises:
        SmokeError: a step failed, the user's code ended the child (``sys.exit``, ``os._exit``, a
            signal) or the test did not finish in ``timeout`` seconds (naming where it was).
        DataError: the data set cannot be loaded (as ``run`` would report it).
    """
    import os
    import subprocess
    import sys
    from multiprocessing.connection import Connection

    # A fresh interpreter (not fork: the parent may hold torch's thread pools, which a forked
    # child inherits broken; not multiprocessing's spawn, which re-runs a script's top level).
    read, write = os.pipe()
    receive = Connection(read)
    with tempfile.TemporaryDirectory(prefix="raytune-opt-smoke-") as tmp:
        given = Path(tmp) / "spec.pkl"
        given.write_bytes(pickle.dumps((spec, list(sys.path))))
        stacks = Path(tmp) / "stacks.txt"
        try:
            child = subprocess.Popen([sys.executable, "-c", "from raytune_opt.smoke import _child; _child()", str(write),
                                      str(given), str(stacks), repr(float(timeout))], pass_fds=(write,),
                                     stdin=subprocess.DEVNULL)
        finally:
            os.close(write)
        try:
            result = _relay(receive, child, timeout, echo)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            receive.close()
        if result is _TIMED_OUT:
            where = _hung_at(stacks)
            raise SmokeError(f"smoke: did not finish in {timeout:g} s{f' (it was at {where})' if where else ''}; "
                             "look for a loop or a wait there, or allow more time with --smoke-timeout SECONDS")
    if result is None:
        code = child.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        raise SmokeError(f"smoke: the user's code ended the smoke test's process before it finished ({how}); "
                         "look for os._exit, sys.exit or a signal in the data set's or the model's module")
    echo("smoke: ok")
    return result


_TIMED_OUT = object()


def _relay(receive, child, timeout: float, echo: Callable[[str], None]):
    """Echo the child's lines until it reports its end; its result, None if it ended without
    one, or _TIMED_OUT. Raises the error the child reported."""
    deadline = time.monotonic() + timeout + 2.0  # the child dumps its stacks at ``timeout``
    while (left := deadline - time.monotonic()) > 0:
        if not receive.poll(min(left, 0.5)):
            if child.poll() is not None and not receive.poll(0):
                return None
            continue
        try:
            kind, payload = receive.recv()
        except EOFError:  # the child is gone without a word
            return None
        if kind == "line":
            echo(payload)
        elif kind == "ok":
            return payload
        elif kind == "error":
            raise pickle.loads(payload)
        elif kind == "lines":
            raise SmokeError("\n".join(payload))
        else:
            assert kind == "crash", kind
            raise RuntimeError(f"the smoke test failed inside raytune-opt:\n{payload}")
    return _TIMED_OUT


def _child() -> None:
    """The smoke test in the child (``argv``: the pipe's fd, the pickled spec and parent's
    ``sys.path``, the stacks file, the time limit): every line, then the result or the error."""
    import faulthandler
    import sys
    from multiprocessing.connection import Connection

    fd, given, stacks, timeout = sys.argv[1:]
    send = Connection(int(fd), readable=False)
    with open(given, "rb") as f:
        spec, sys.path[:] = pickle.load(f)
    with open(stacks, "w") as dump:
        faulthandler.dump_traceback_later(float(timeout), file=dump)
        try:
            result = _smoke(spec, echo=lambda line: send.send(("line", line)))
        except RaytuneOptError as exc:
            send.send(_error(exc))
        except SystemExit as exc:  # sys.exit() in the user's module, constructor or data callable
            where = raised_at(exc)
            send.send(("lines", [f"smoke: the user's code called sys.exit({exc.code!r})"
                                 f"{f' at {where}' if where else ''}; a data set or model must return or raise, "
                                 "not exit"]))
        except BaseException:
            send.send(("crash", traceback.format_exc()))
        else:
            send.send(("ok", result))
        finally:
            faulthandler.cancel_dump_traceback_later()
        send.close()


def _error(exc: RaytuneOptError) -> tuple:
    """The child's error as the parent should raise it: the same exception where it pickles
    back intact, else its lines."""
    try:
        payload = pickle.dumps(exc)
        if pickle.loads(payload).lines() == exc.lines():
            return "error", payload
    except Exception:
        pass
    return "lines", exc.lines()


def _hung_at(stacks: Path) -> str:
    """The innermost frame in the user's code of the stacks the child dumped when its time ran out."""
    import re

    try:
        text = stacks.read_text()
    except OSError:
        return ""
    for filename, line in re.findall(r'File "([^"]+)", line (\d+)', text):  # most recent call first
        if is_user_file(filename):
            return f"{filename}:{line}"
    return ""


def _smoke(spec, echo: Callable[[str], None]) -> dict:
    """The smoke test's steps, in this process (see :func:`smoke`).

    Returns:
        What was checked: ``config``, ``input_shape``, ``num_classes``, ``output_shape``, ``onnx`` and
        ``prune`` (bools).

    Raises:
        SmokeError: a step failed; the message names the step, the component and where it raised.
        DataError: the data set cannot be loaded (as ``run`` would report it).
    """
    import torch
    import torch.nn.functional as F

    from raytune_opt import registry
    from raytune_opt.recipe.bundle import load_bundle, make_loader
    from raytune_opt.recipe.errors import RecipeConfigError
    from raytune_opt.recipe.models import build_model_from_spec, model_spec, output_problem

    seed = int(spec.data["seed"])
    config = sample_config(spec.space, seed)
    cfg = apply(spec.data, config)
    shown = ", ".join(f"{k}={_short(v)}" for k, v in config.items()) or "(no space)"
    echo(f"smoke: config {shown}")
    torch.manual_seed(seed)
    data = load_bundle(cfg["data"], seed, spec.code_dirs)
    dtype = str(data.input_example.dtype).removeprefix("torch.")
    what = f"{data.num_classes} classes" if data.task == "classification" else "a regression (one output)"
    held_out = "" if data.test is None else f" / {len(data.test)} test"
    echo(f"smoke: data {cfg['data']['dataset']}: {len(data.train)} train / {len(data.val)} val{held_out} samples, "
         f"inputs {data.input_shape} {dtype}, {what}")
    name = cfg["model"]["name"]
    with registry.code_path(spec.code_dirs):
        try:
            built = model_spec(cfg["model"], data.input_shape, data.num_classes)
            if cfg["train"]["loop"] == "hf_trainer":  # the Hugging Face model as the sweep calls it, its adapter on
                from raytune_opt.integrations.hf import spec_extra

                built.update(spec_extra(cfg))
            model = build_model_from_spec(built)
        except RecipeConfigError as exc:
            raise SmokeError(f"smoke: model.name {name}: {exc}") from None
        except Exception as exc:  # the user's constructor
            raise SmokeError(f"smoke: model.name {name}: building it raised {describe_raised(exc)}") from exc
    x, y = next(iter(make_loader(data, "train", min(BATCH, len(data.train)))))
    model.train()
    try:
        out = model(x)
    except Exception as exc:
        raise SmokeError(f"smoke: model.name {name}: forward on a batch of {_shape(x)} raised "
                         f"{describe_raised(exc)}") from exc
    problem = output_problem(out, x, data.num_classes)
    if problem:
        raise SmokeError(f"smoke: model.name {name}: {problem}")
    if data.task == "regression":
        loss = F.mse_loss(out.float().reshape(y.shape), y.float())
    else:
        loss = F.cross_entropy(out.float(), y)
    no_gradient = SmokeError(f"smoke: model.name {name}: no parameter got a gradient from the loss; the output "
                             f"must depend on trainable parameters")
    if not loss.requires_grad:
        raise no_gradient
    try:
        loss.backward()
    except Exception as exc:
        raise SmokeError(f"smoke: model.name {name}: backward raised {describe_raised(exc)}") from exc
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        raise no_gradient
    if not all(torch.isfinite(g).all() for g in grads):
        raise SmokeError(f"smoke: model.name {name}: a gradient is not finite after one batch (loss "
                         f"{loss.item():.4g}); check the model's numerics")
    params = sum(p.numel() for p in model.parameters())
    echo(f"smoke: model {name}: {params:,} parameters, a batch {_shape(x)} -> {_shape(out)}, loss "
         f"{loss.item():.4g}, backward ok")
    if cfg["train"]["loop"] == "lightning":
        _lightning(model, cfg, spec, echo)
    elif cfg["train"]["loop"] == "hf_trainer":
        _hf_trainer(model, cfg, data, echo)
    exported = pruned = False
    promote = spec.data["promote"]
    if promote["enabled"] and promote["targets"]:
        _onnx(model, data, name, echo)
        exported = True
    if promote["enabled"] and "prune" in promote["targets"]:
        _prune(model, data, name, promote["prune"], echo)
        pruned = True
    return {"config": config, "input_shape": data.input_shape, "num_classes": data.num_classes,
            "output_shape": tuple(out.shape), "onnx": exported, "prune": pruned}


def _lightning(model, cfg: dict, spec, echo: Callable[[str], None]) -> None:
    """One training and one validation step through the LightningModule (Lightning's
    fast_dev_run); the sweep's metrics must be among what it logs."""
    from raytune_opt.integrations.lightning import smoke_metrics

    _through_trainer("lightning", "validation", lambda m: smoke_metrics(m, cfg, spec.code_dirs), model, cfg, echo,
                     gives="the module logs",
                     fix=lambda missing: f"self.log({missing!r}, ...) in validation_step")


def _hf_trainer(model, cfg: dict, data, echo: Callable[[str], None]) -> None:
    """One training step and one evaluation step through Hugging Face's Trainer; the sweep's
    metrics must be among its evaluation metrics."""
    from raytune_opt.integrations.hf import smoke_metrics

    _through_trainer("hf_trainer", "evaluation", lambda m: smoke_metrics(m, cfg, data), model, cfg, echo,
                     gives="the Trainer reports",
                     fix=lambda missing: f"return {{{missing.removeprefix('eval_')!r}: ...}} from compute_metrics")


def _through_trainer(loop: str, check: str, run: Callable, model, cfg: dict, echo: Callable[[str], None], *,
                     gives: str, fix: Callable[[str], str]) -> None:
    """Run ``run`` (one training and one ``check`` step through the loop's own trainer) on a
    copy of ``model``; the sweep's metrics must be among the metrics it returns."""
    import copy

    from raytune_opt import objectives

    try:
        metrics = run(copy.deepcopy(model))
    except Exception as exc:  # the user's module, model, data or metrics code
        raise SmokeError(f"smoke: train.loop {loop}: one training and one {check} step raised "
                         f"{describe_raised(exc)}") from exc
    missing = [m for m, _ in objectives.objectives(cfg["search"]) if m not in metrics]
    if missing:
        raise SmokeError(f"smoke: train.loop {loop}: {gives} no {', '.join(missing)} (search.metric); it gives "
                         f"{', '.join(sorted(metrics)) or 'nothing'}: {fix(missing[0])}, or set search.metric to one "
                         f"of those")
    echo(f"smoke: {loop}: one training and one {check} step ok, {gives} {', '.join(sorted(metrics))}")


def _prune(model, data, name: str, cfg: dict, echo: Callable[[str], None]) -> None:
    """Prune a copy of the model as promotion's prune step would (no fine-tuning)."""
    from raytune_opt.promote.errors import CompressionError
    from raytune_opt.promote.prune import dry_run

    try:
        before, after = dry_run(model, data.input_example, cfg)
    except CompressionError as exc:
        raise SmokeError(f"smoke: model.name {name}: {exc}") from None
    echo(f"smoke: prune dry run ok (ratio {cfg['ratio']:g}): {before:,} -> {after:,} parameters")


def _onnx(model, data, name: str, echo: Callable[[str], None]) -> None:
    """Export as promotion does and run the file once in ONNX Runtime."""
    import numpy as np
    import torch

    from raytune_opt.promote import measure
    from raytune_opt.promote.export import INPUT_NAME, export_onnx
    from raytune_opt.recipe.bundle import make_loader

    example = torch.from_numpy(measure.batch_of(data.input_example.numpy(), 2))
    model.eval()
    with tempfile.TemporaryDirectory(prefix="raytune-opt-smoke-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            size = len(export_onnx(model, example, path))
        except Exception as exc:  # the exporter's many failure types: name it, promotion would hit it too
            raise SmokeError(f"smoke: model.name {name}: ONNX export (promotion's first step) failed: "
                             f"{describe_raised(exc)}; set promote.enabled: false to sweep without promotion") from exc
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        # Other inputs than the traced ones, in a batch of another size: a graph that baked in
        # the example's values or its batch size does not pass.
        x = next(iter(make_loader(data, "val", min(BATCH + 1, len(data.val)))))[0]
        with torch.no_grad():
            ref = model(x).numpy()
        try:
            got = session.run(None, {INPUT_NAME: x.numpy()})[0]
        except Exception as exc:  # onnxruntime's own error types
            raise SmokeError(f"smoke: model.name {name}: the exported ONNX model does not run on a batch of "
                             f"{_shape(x)}: {describe_raised(exc)}") from exc
    diff = float(np.max(np.abs(ref - got))) if ref.shape == got.shape else float("inf")
    if not diff < 1e-3:
        raise SmokeError(f"smoke: model.name {name}: the ONNX export gives other outputs than PyTorch (max |Δ| "
                         f"{diff:.3g}); promotion's parity check would fail")
    echo(f"smoke: onnx export ok ({size / 1024:.1f} KB), onnxruntime matches pytorch (max |Δ| {diff:.2g})")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if hasattr(t, "shape") else type(t).__name__
