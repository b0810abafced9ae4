"""TensorRT engines on a GPU: FP16 from the fp32 ONNX, INT8 from the explicitly quantized QDQ ONNX.

Written against the TensorRT 10 Python API and imported lazily (``pip install
'raytune-opt[tensorrt]'``): nothing here runs on a machine without a CUDA GPU.

- INT8 uses explicit quantization: the QDQ ONNX carries the scales, the network is created
  ``STRONGLY_TYPED`` and no calibrator is involved (implicit calibrators are deprecated
  since TensorRT 10.1).
- FP16 builds the fp32 ONNX with ``BuilderFlag.FP16`` (TensorRT 11 removed that flag; there
  the FP16 engine is reported as failed with that reason).
- One optimization profile covers the dynamic batch axis, 1..:data:`MAX_BATCH`.
- Engines run through TensorRT's own ``execute_async_v3`` with torch CUDA tensors as
  buffers on a dedicated torch stream (no pycuda).

Where it runs (:func:`placement`): in an existing or given Ray cluster as a task with
``num_gpus=1``, so it lands on a GPU node; without a cluster, in this process when a CUDA
GPU and TensorRT are both here; otherwise it is skipped with one line saying why.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from raytune_opt import ray_runtime
from raytune_opt._imports import is_available, require
from raytune_opt.promote.errors import ArtifactError

if TYPE_CHECKING:
    from raytune_opt.promote.measure import Scorer

MAX_BATCH = 64
TASK_TIMEOUT_S = 1800  # building two engines of a ResNet-50 takes minutes, not half an hour
_WARMUP, _RUNS = 10, 100


@dataclass(frozen=True)
class Placement:
    where: str  # local | cluster | skip
    reason: str = ""  # for skip: why, as one line
    joined: bool = False  # we joined a cluster and must leave it


def placement(address: str | None, exp_dir: str) -> Placement:
    """Decide where the engines are built, without starting a Ray cluster to find out.

    Raises:
        UsageError: an address was given and the cluster cannot be reached.
    """
    hint = f"run 'raytune-opt promote {exp_dir} --targets tensorrt' where one is"
    address = ray_runtime.resolve_address(address)
    ray = sys.modules.get("ray")  # imported already if a sweep ran in this process
    initialized = ray is not None and ray.is_initialized()
    if initialized or address:
        joined = False
        if not initialized:
            ray_runtime.start(address)  # joins; never starts one
            import ray

            joined = True
        if ray.cluster_resources().get("GPU", 0) < 1:
            return Placement("skip", f"no GPU in the cluster; {hint}", joined)
        return Placement("cluster", joined=joined)
    import torch

    if not torch.cuda.is_available():
        return Placement("skip", f"no CUDA GPU on this machine and no Ray cluster given (--address or "
                                 f"RAY_ADDRESS); {hint}")
    if not is_available("tensorrt"):
        return Placement("skip", f"TensorRT is not installed (pip install 'raytune-opt[tensorrt]'); "
                                 f"run 'raytune-opt promote {exp_dir} --targets tensorrt' where it is")
    return Placement("local")


def build(place: Placement, onnx_fp32: bytes, onnx_qdq: bytes | None, x_val: np.ndarray,
          y_val: np.ndarray, scorer: Scorer, test: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Build and measure the engines where ``place`` says; see :func:`build_and_measure`.

    Raises:
        ArtifactError: the cluster task timed out, or its worker or node was lost. An
            exception raised by our own code inside the task is not caught: it is a bug.
    """
    assert place.where in ("local", "cluster"), place
    if place.where == "local":
        return build_and_measure(onnx_fp32, onnx_qdq, x_val, y_val, scorer, test)
    import ray
    from ray import exceptions as rex

    task = ray.remote(num_gpus=1, max_retries=0)(build_and_measure)
    ref = task.remote(onnx_fp32, onnx_qdq, x_val, y_val, scorer, test)
    try:
        return ray.get(ref, timeout=TASK_TIMEOUT_S)
    except rex.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise ArtifactError(f"the TensorRT task did not finish in {TASK_TIMEOUT_S} s; check that a GPU node is free "
                            "(ray status), then run 'raytune-opt promote EXPERIMENT --targets tensorrt' "
                            "again") from None
    except (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError, rex.TaskCancelledError,
            rex.RaySystemError) as exc:
        raise ArtifactError(f"the TensorRT task was lost ({type(exc).__name__}: {_first_line(exc)}); run "
                            "'raytune-opt promote EXPERIMENT --targets tensorrt' again") from None


def leave(place: Placement | None) -> None:
    """Disconnect from the cluster :func:`placement` joined, if it joined one."""
    if place is not None and place.joined:
        import ray

        ray.shutdown()


def build_and_measure(onnx_fp32: bytes, onnx_qdq: bytes | None, x_val: np.ndarray, y_val: np.ndarray,
                      scorer: Scorer, test: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Build the FP16 and INT8 engines, run the validation set through each, score and time them.

    Runs on the GPU node. Each engine's outputs are scored there by ``scorer`` (accuracy, or a
    regression's metric: the same measure as the CPU artifacts), so only a number comes back,
    not the validation set's outputs. Returns plain values only (engines as bytes), so a Ray
    task can hand them back to the driver, which writes the files and applies the gate:
    ``{"tensorrt_version", "device", "skipped"?, "engines": {name: {"status", "reason"?,
    "plan"?, "score"?, "test_score"?, "latency_ms"?}}}``. ``test``: the test split's inputs and
    labels, scored the same way (``test_score``; None: no test split).
    """
    import torch

    if not is_available("tensorrt"):
        return {"skipped": "TensorRT is not installed on the GPU node (pip install 'raytune-opt[tensorrt]')",
                "engines": {}}
    trt = require("tensorrt", "TensorRT promotion")
    out: dict = {"tensorrt_version": trt.__version__, "device": torch.cuda.get_device_name(), "engines": {}}
    jobs = [("tensorrt-fp16", onnx_fp32, "fp16"), ("tensorrt-int8", onnx_qdq, "int8")]
    for name, onnx_bytes, precision in jobs:
        if onnx_bytes is None:
            continue
        try:
            plan = build_engine(trt, onnx_bytes, precision)
            runner = EngineRunner(trt, plan)
            outputs = np.concatenate([runner(x_val[i:i + MAX_BATCH]) for i in range(0, len(x_val), MAX_BATCH)])
            test_score = None
            if test is not None:
                x_test, y_test = test
                test_score = scorer.score(np.concatenate([runner(x_test[i:i + MAX_BATCH])
                                                          for i in range(0, len(x_test), MAX_BATCH)]), y_test)
            out["engines"][name] = {
                "status": "ok", "plan": plan, "score": scorer.score(outputs, y_val), "test_score": test_score,
                "latency_ms": {f"batch_{b}": runner.latency(x_val, b) for b in (1, MAX_BATCH)},
            }
        except (RuntimeError, OSError, MemoryError) as exc:  # TensorRT, CUDA (OOM too) and file errors
            # One engine failing must not lose the other; a TypeError or KeyError is our bug and propagates.
            out["engines"][name] = {"status": "failed", "reason": f"{type(exc).__name__}: {_first_line(exc)}",
                                    "traceback": "".join(traceback.format_exception(exc))}
    return out


def build_engine(trt, onnx_bytes: bytes, precision: str) -> bytes:
    """Parse the ONNX and build a serialized engine with a 1..MAX_BATCH batch profile.

    Raises:
        RuntimeError: the parser refuses the model or the builder fails.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit quantization wants a strongly typed network: the Q/DQ nodes set the precisions
    # and precision flags must not be given. The FP16 engine is the weakly typed + FP16 flag
    # build of the fp32 model (TensorRT 10).
    strongly_typed = precision == "int8"
    if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16"):
        raise RuntimeError(f"TensorRT {trt.__version__} has no FP16 builder flag (strong typing only); "
                           "an FP16 engine needs an FP16-typed ONNX model")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser refused the {precision} model: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *rest), (MAX_BATCH, *rest), (MAX_BATCH, *rest))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build the {precision} engine (see the TensorRT log above)")
    return bytes(memoryview(plan))


class EngineRunner:
    """Runs a serialized engine on torch CUDA tensors through ``execute_async_v3``."""

    def __init__(self, trt, plan: bytes):
        import torch

        self.torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine it just built")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        assert len(inputs) == 1 and len(outputs) == 1, (inputs, outputs)  # our exports: input -> logits
        self.input, self.output = inputs[0], outputs[0]
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                  trt.DataType.INT8: torch.int8, trt.DataType.INT32: torch.int32}
        if hasattr(trt.DataType, "INT64"):  # token ids (TensorRT 10 has int64 I/O)
            dtypes[trt.DataType.INT64] = torch.int64
        self.in_dtype = dtypes[self.engine.get_tensor_dtype(self.input)]
        self.out_dtype = dtypes[self.engine.get_tensor_dtype(self.output)]
        # Not the legacy default stream: TensorRT would synchronize around every call on it.
        self.stream = torch.cuda.Stream()

    def _launch(self, x):
        ctx = self.context
        ctx.set_input_shape(self.input, tuple(x.shape))
        y = self.torch.empty(tuple(ctx.get_tensor_shape(self.output)), dtype=self.out_dtype, device=x.device)
        ctx.set_tensor_address(self.input, x.data_ptr())
        ctx.set_tensor_address(self.output, y.data_ptr())
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return y

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            xt = torch.from_numpy(np.ascontiguousarray(x)).to("cuda", dtype=self.in_dtype, non_blocking=False)
            y = self._launch(xt.contiguous())
            self.stream.synchronize()
        return y.float().cpu().numpy()

    def latency(self, x: np.ndarray, batch: int) -> dict:
        """Wall time of one inference on a device-resident batch, synchronized: p50/p95 in ms."""
        from raytune_opt.promote.measure import batch_of, summarize

        torch = self.torch
        with torch.cuda.stream(self.stream):
            xt = torch.from_numpy(batch_of(x, batch)).to("cuda", dtype=self.in_dtype).contiguous()
            self.stream.synchronize()
            for _ in range(_WARMUP):
                self._launch(xt)
            self.stream.synchronize()
            times = []
            for _ in range(_RUNS):
                start = time.perf_counter()
                self._launch(xt)
                self.stream.synchronize()
                times.append((time.perf_counter() - start) * 1e3)
        return summarize(times)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
