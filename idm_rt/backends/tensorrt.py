"""TensorRT 10.x / 11.x runner: one deserialized engine and one execution context per graph, device buffers
from torch, an explicit CUDA stream, and optional CUDA-graph capture of the U-Net step.

Written against the TensorRT 10 Python API documentation (name-based tensors: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``), which 11 keeps for what it uses. Not run in this project's CI,
which has no GPU; see the README for what has been run on a GPU.
"""

from __future__ import annotations

import os

import torch

from .base import EngineRunner
from .engine_dir import artifact, graph_outputs

# TensorRT's alignment requirement for the address of every I/O tensor (IExecutionContext::setTensorAddress).
ALIGNMENT = 256


# TensorRT majors whose Python API this code uses as written: every attribute it uses is checked in the
# bindings of 10.0.1, 10.16.1 and 11.4.0 (tests/test_tensorrt_api.py); pyproject's gpu extra pins the same.
TENSORRT_MAJORS = (10, 11)
PIP_REQUIREMENT = "tensorrt-cu12>=10,<12"  # CUDA 12's build: plain tensorrt now brings CUDA 13's (driver 580 on)


def import_tensorrt():
    """The tensorrt module, or an ImportError saying how to get it and which majors are accepted."""
    accepted = " or ".join(f"{m}.x" for m in TENSORRT_MAJORS)
    try:
        import tensorrt as trt
    except ImportError:
        raise ImportError(f"the tensorrt backend needs TensorRT {accepted}: pip install '{PIP_REQUIREMENT}' (on a "
                          "machine with an NVIDIA GPU and driver; tensorrt-cu13 beside a CUDA 13 torch)") from None
    major = trt.__version__.split(".")[0]
    if not major.isdigit() or int(major) not in TENSORRT_MAJORS:
        raise ImportError(f"TensorRT {trt.__version__} found; the tensorrt backend is written for TensorRT {accepted}")
    return trt


class TensorRTRunner(EngineRunner):
    """Runs the serialized engines of a ``tensorrt`` engine directory.

    Every call runs on the runner's own CUDA stream, ordered after the caller's current stream
    (whose work made the inputs) and before it again (which reads the outputs).

    Args:
        folder: an engine directory built with ``--backend tensorrt`` on this GPU and TensorRT version.
        device: a CUDA device ("cuda" is the current one).
        cuda_graph: capture each U-Net bucket's call in a CUDA graph on first use, per batch size,
            and replay it (saves the per-layer launch overhead of the many small kernels at small
            tiles). Each capture has its own execution context, as TensorRT requires of graphs of
            different shapes, so each batch size seen costs one more context's activation memory.
    """

    backend = "tensorrt"

    def __init__(self, folder: str | os.PathLike, device: str | torch.device = "cuda", cuda_graph: bool = False):
        super().__init__(folder, device)
        trt = import_tensorrt()
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError("the tensorrt backend needs a CUDA device (torch.cuda.is_available() is False)")
        if self.manifest.backend != "tensorrt" or not self.manifest.complete:
            raise ValueError(f"{folder} holds no TensorRT engines; build them with "
                             f"`python -m idm_rt.build --backend tensorrt --out {folder}` on this machine")
        built = self.manifest.identity.get("tensorrt")
        if built != trt.__version__:
            raise RuntimeError(f"engines in {folder} were built with TensorRT {built}, this is {trt.__version__}; "
                               f"rebuild them with `python -m idm_rt.build --backend tensorrt --out {folder}`")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        torch.cuda.set_device(self.device)
        self._stream = torch.cuda.Stream(self.device)
        self._engines = {}
        for key, entry in self.manifest.graphs.items():
            plan = artifact(self.folder, entry.engine, entry.engine_bytes).read_bytes()
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {entry.engine}; rebuild with --force")
            self._engines[key] = engine
        self._contexts = {}  # created on first use: only the buckets (and modes) used hold activation memory
        self._cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple] = {}

    def _new_context(self, key: str):
        ctx = self._engines[key].create_execution_context()
        if ctx is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {key} (out of GPU memory?)")
        return ctx

    def _io(self, key: str) -> tuple[list[str], list[str]]:
        """Input names in the engine's order; output names in the exported graph's order, which is
        the order run_graph returns (the engine's own order of I/O tensors is not specified)."""
        engine = self._engines[key]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == self._trt.TensorIOMode.INPUT]
        return inputs, graph_outputs(key.split("/")[0], self.config.levels)

    def _bind(self, ctx, key: str, inputs: dict[str, torch.Tensor], own: bool) -> tuple[dict, list[torch.Tensor]]:
        """Inputs in the engine's dtypes at aligned addresses (in fresh buffers when ``own``: a
        captured graph keeps reading them), shapes checked against the engine's profile, outputs
        allocated; sets the addresses on ``ctx``. Runs on the current stream, the runner's."""
        engine = self._engines[key]
        names_in, names_out = self._io(key)
        typed = {}
        for name in names_in:
            t = inputs[name].to(self.device, _torch_dtype(engine.get_tensor_dtype(name))).contiguous()
            if own or t.data_ptr() % ALIGNMENT:
                t = torch.empty_like(t).copy_(t)
            if not ctx.set_input_shape(name, tuple(t.shape)):
                low, _, high = (tuple(d) for d in engine.get_tensor_profile_shape(name, 0))
                raise ValueError(f"{key}: input {name} of shape {tuple(t.shape)} is outside what its engine was "
                                 f"built for, {low} to {high}")
            ctx.set_tensor_address(name, t.data_ptr())
            typed[name] = t
        outputs = []
        for name in names_out:
            out = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=_torch_dtype(engine.get_tensor_dtype(name)),
                              device=self.device)
            ctx.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        return typed, outputs

    def _launch(self, ctx, key: str) -> None:
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {key}")

    def run_graph(self, key: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)  # the inputs are written on the caller's stream
        with torch.cuda.stream(self._stream):
            if self._cuda_graph and key.startswith("unet/"):
                outputs = self._replay(key, inputs)
            else:
                if key not in self._contexts:
                    self._contexts[key] = self._new_context(key)
                ctx = self._contexts[key]
                typed, outputs = self._bind(ctx, key, inputs, own=False)  # typed: kept alive past the launch
                self._launch(ctx, key)
        current.wait_stream(self._stream)
        for out in outputs:
            out.record_stream(current)  # allocated on the runner's stream, used and freed on the caller's
        return [out.float() for out in outputs]

    def _replay(self, key: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Copy into the static input buffers of (key, batch) and replay its captured call, captured
        with its own execution context on first use."""
        gkey = (key, next(iter(inputs.values())).shape[0])
        if gkey not in self._graphs:
            ctx = self._new_context(key)
            static_in, static_out = self._bind(ctx, key, inputs, own=True)
            self._launch(ctx, key)  # one plain run first, as TensorRT asks before capturing a context
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._launch(ctx, key)
            self._graphs[gkey] = (graph, ctx, static_in, static_out)
        graph, _, static_in, static_out = self._graphs[gkey]
        for name, buf in static_in.items():
            buf.copy_(inputs[name])
        graph.replay()
        return [out.clone() for out in static_out]


def _torch_dtype(trt_dtype) -> torch.dtype:
    import tensorrt as trt

    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int64: torch.int64,
            trt.int32: torch.int32}[trt_dtype]
