"""TensorRT 10.x / 11.x runner: one deserialized engine and one execution context per graph, an explicit CUDA
stream, and optional CUDA-graph capture of the U-Net step, on the CUDA arrays the sampling loop runs on.

Written against the TensorRT 10 Python API documentation (name-based tensors: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``), which 11 keeps for what it uses, and against torch's and CuPy's
documentation for streams, events and CUDA graphs. Not run in this project's CI, which has no GPU; see the README
for what has been run on a GPU.

CUDA arrays come from torch where torch is installed, else from CuPy (:func:`~.onnxruntime.cuda_arrays`); the two
adapters below hold what differs between them. The issue that asked for a runtime without torch (#26) names pycuda
for device memory and streams. pycuda ships only as a source distribution that compiles against a CUDA toolkit when
it is installed (there are no wheels), and its GPUArray cannot do what the sampling loop does on the device (the
bicubic resizes' banded products, the tiles' strided writes), so the loop would need a second copy of its math. CuPy
installs from wheels (``cupy-cuda12x``) and implements the Array API standard the loop is written against: it is used
instead.

Streams and memory: every array the runner makes (inputs in the engine's dtypes, outputs, a CUDA graph's static
buffers) is allocated and written on the caller's current stream. TensorRT runs on the runner's own stream (TensorRT
advises against the default stream, and no CUDA graph can be captured on it), which waits for the caller's stream
before each call; the caller's stream waits for it before anything reads the outputs. Both libraries' caching
allocators give memory freed on a stream back to that stream only, and every use of it on the runner's stream comes
before that wait: memory freed after a call is reused only by work ordered after TensorRT's, so no
``record_stream`` is needed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import Array
from ..devices import Device
from .base import EngineRunner
from .engine_dir import Manifest, artifact, graph_outputs
from .onnxruntime import cuda_arrays
from .registry import BACKENDS, require

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
        raise ImportError(
            f"the tensorrt backend needs TensorRT {accepted}: pip install '{PIP_REQUIREMENT}' (on a "
            "machine with an NVIDIA GPU and driver; tensorrt-cu13 beside a CUDA 13 torch)"
        ) from None
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

    def __init__(self, folder: str | os.PathLike, device: str | Device = "cuda", cuda_graph: bool = False):
        super().__init__(folder, device)
        if self.device.type != "cuda":
            raise ValueError(f"the tensorrt backend runs on a CUDA device, not {self.device}")
        require(BACKENDS[self.backend].needs, f"the {self.backend} backend")  # (constructed without the registry)
        trt = self._trt = import_tensorrt()
        check_directory(self.manifest, folder, trt)
        self._cuda = _cuda_library(self.device.index)
        self.device = Device("cuda", self._cuda.index)
        with self._cuda.on_device():  # engines, contexts and the stream belong to the device current when made
            self._runtime, self._engines = deserialize(trt, self.folder, self.manifest)
            self._stream = self._cuda.new_stream()
        self._contexts = {}  # created on first use: only the buckets (and modes) used hold activation memory
        self._cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple] = {}

    def asarray(self, host: np.ndarray) -> Array:
        """A host array as a CUDA array (torch's or CuPy's) on the runner's GPU."""
        return self._cuda.xp.asarray(host, device=self._cuda.array_device)

    def sampling(self) -> contextlib.AbstractContextManager:
        """The runner's GPU as the current device while sampling: CuPy makes new arrays and launches its kernels on
        the current device, whatever device its arrays are on."""
        return self._cuda.on_device()

    def _new_context(self, key: str):
        return new_context(self._engines[key], key)

    def _io(self, key: str) -> tuple[list[str], list[str]]:
        return io_names(self._trt, self._engines[key], key, self.config.levels)

    def _dtype(self, key: str, name: str):
        """The array library's dtype of tensor ``name`` of engine ``key``."""
        return getattr(self._cuda.xp, dtype_name(self._trt, self._engines[key], key, name))

    def _bind(self, ctx, key: str, inputs: dict[str, Array], own: bool) -> tuple[dict[str, Array], list[Array]]:
        """Inputs in the engine's dtypes, dense, at aligned addresses (in fresh buffers when ``own``: a captured graph
        keeps reading them), shapes checked against the engine's profile, outputs allocated; sets the addresses on
        ``ctx``. All on the caller's stream."""
        names_in, names_out = self._io(key)
        xp = self._cuda.xp
        typed = {}
        for name in names_in:
            t = xp.astype(inputs[name], self._dtype(key, name), copy=False)
            if own or _address(t) is None:
                t = self._fresh(t)
            if not ctx.set_input_shape(name, tuple(t.shape)):
                low, _, high = (tuple(d) for d in self._engines[key].get_tensor_profile_shape(name, 0))
                raise ValueError(
                    f"{key}: input {name} of shape {tuple(t.shape)} is outside what its engine was "
                    f"built for, {low} to {high}"
                )
            self._set_address(ctx, key, name, t)
            typed[name] = t
        outputs = []
        for name in names_out:
            out = self._cuda.empty(tuple(ctx.get_tensor_shape(name)), self._dtype(key, name))
            self._set_address(ctx, key, name, out)
            outputs.append(out)
        return typed, outputs

    def _fresh(self, a: Array) -> Array:
        """A dense copy of ``a`` in memory of its own (aligned: both libraries' allocators hand out aligned blocks)."""
        out = self._cuda.empty(tuple(a.shape), a.dtype)
        out[...] = a
        return out

    @staticmethod
    def _set_address(ctx, key: str, name: str, a: Array) -> None:
        if not ctx.set_tensor_address(name, _address(a)):
            raise RuntimeError(f"TensorRT refused the address of {key}'s tensor {name}")

    def _launch(self, ctx, key: str) -> None:
        if not ctx.execute_async_v3(self._cuda.handle(self._stream)):
            raise RuntimeError(f"TensorRT failed to run {key}")

    def run_graph(self, key: str, inputs: dict[str, Array]) -> list[Array]:
        xp, cuda = self._cuda.xp, self._cuda
        graphed = self._cuda_graph and key.startswith("unet/")
        with cuda.on_device():
            caller = cuda.current_stream()
            # Bound on the caller's stream. `bound`, the inputs TensorRT reads, stays referenced until the caller's
            # stream has waited for TensorRT's work: a stream-ordered allocator would free them on it at once.
            run, bound, outputs = self._graph_call(key, inputs) if graphed else self._plain_call(key, inputs)
            cuda.wait(self._stream, caller)  # the inputs are written on the caller's stream
            run()
            cuda.wait(caller, self._stream)  # and the outputs read there
            # A graph's outputs are its static buffers, which its next replay overwrites: copied.
            return [xp.astype(out, xp.float32, copy=graphed) for out in outputs]

    def _plain_call(self, key: str, inputs: dict[str, Array]) -> tuple[Callable[[], None], dict, list[Array]]:
        """(launch, bound inputs, outputs) of a call of graph ``key`` on its execution context."""
        if key not in self._contexts:
            self._contexts[key] = self._new_context(key)
        ctx = self._contexts[key]
        bound, outputs = self._bind(ctx, key, inputs, own=False)
        return (lambda: self._launch(ctx, key)), bound, outputs

    def _graph_call(self, key: str, inputs: dict[str, Array]) -> tuple[Callable[[], None], dict, list[Array]]:
        """(replay, static inputs, static outputs) of the CUDA graph of (``key``, batch size), its static inputs
        filled; on first use, instead of a replay, one plain run (as TensorRT asks before a context is captured),
        which gives this call's outputs, then the capture, with the graph's own execution context."""
        gkey = (key, next(iter(inputs.values())).shape[0])
        if gkey in self._graphs:
            graph, _, static_in, static_out = self._graphs[gkey]
            for name, buf in static_in.items():
                buf[...] = inputs[name]
            return (lambda: self._cuda.replay(graph, self._stream)), static_in, static_out
        ctx = self._new_context(key)
        static_in, static_out = self._bind(ctx, key, inputs, own=True)

        def run_and_capture() -> None:
            self._launch(ctx, key)
            graph = self._cuda.capture(self._stream, lambda: self._launch(ctx, key))
            self._graphs[gkey] = (graph, ctx, static_in, static_out)

        return run_and_capture, static_in, static_out


def check_directory(manifest: Manifest, folder: str | os.PathLike, trt) -> None:
    """ValueError where ``folder`` holds no complete TensorRT build; RuntimeError where another TensorRT version built
    it (a plan runs only on the version that wrote it)."""
    if manifest.backend != "tensorrt" or not manifest.complete:
        raise ValueError(
            f"{folder} holds no TensorRT engines; build them with "
            f"`python -m idm_rt.build --backend tensorrt --out {folder}` on this machine"
        )
    built = manifest.identity.get("tensorrt")
    if built != trt.__version__:
        raise RuntimeError(
            f"engines in {folder} were built with TensorRT {built}, this is {trt.__version__}; "
            f"rebuild them with `python -m idm_rt.build --backend tensorrt --out {folder}`"
        )


def deserialize(trt, folder: Path, manifest: Manifest) -> tuple[tuple, dict[str, Any]]:
    """((logger, runtime), engine of each graph key), deserialized on the current device; the caller keeps the
    first as long as it uses the engines, which need both alive."""
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engines = {}
    for key, entry in manifest.graphs.items():
        plan = artifact(folder, entry.engine, entry.engine_bytes).read_bytes()
        engines[key] = runtime.deserialize_cuda_engine(plan)
        if engines[key] is None:
            raise RuntimeError(f"TensorRT could not deserialize {entry.engine}; rebuild with --force")
    return (logger, runtime), engines


def new_context(engine, key: str):
    """An execution context of ``engine`` (its activation memory allocated now)."""
    ctx = engine.create_execution_context()
    if ctx is None:
        raise RuntimeError(f"TensorRT could not create an execution context for {key} (out of GPU memory?)")
    return ctx


def io_names(trt, engine, key: str, levels: int) -> tuple[list[str], list[str]]:
    """Input names of graph ``key``'s engine in the engine's order; output names in the exported graph's order, which
    is the order run_graph returns (the engine's own order of I/O tensors is not specified)."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    return inputs, graph_outputs(key.split("/")[0], levels)


def dtype_name(trt, engine, key: str, name: str) -> str:
    """The dtype of tensor ``name`` of engine ``key``, as numpy and the Array API name it."""
    dtypes = {trt.float32: "float32", trt.float16: "float16", trt.int64: "int64", trt.int32: "int32"}
    trt_dtype = engine.get_tensor_dtype(name)
    if trt_dtype not in dtypes:
        raise ValueError(
            f"{key}: tensor {name} is of TensorRT type {trt_dtype}, which this runner does not "
            "handle; rebuild the directory with this version of idm-rt"
        )
    return dtypes[trt_dtype]


def _address(a: Array) -> int | None:
    """The address of a CUDA array's data (the CUDA array interface, which torch and CuPy both expose) where
    TensorRT can take it as it is: dense (C order) and aligned; else None."""
    cai = a.__cuda_array_interface__
    strides, address = cai.get("strides"), cai["data"][0]
    if strides is not None:
        itemsize = np.dtype(cai["typestr"]).itemsize
        dense = [itemsize * int(np.prod(cai["shape"][i + 1 :], dtype=np.int64)) for i in range(len(cai["shape"]))]
        if any(n > 1 and s != d for n, s, d in zip(cai["shape"], strides, dense)):
            return None
    return address if address % ALIGNMENT == 0 else None


def _cuda_library(index: int | None) -> _TorchCuda | _CupyCuda:
    """What the runner needs of the CUDA array library in use, on device ``index`` (None: the current one)."""
    return _TorchCuda(index) if cuda_arrays().__name__.endswith("torch") else _CupyCuda(index)


def _check_index(index: int, count: int, library: str) -> None:
    if count == 0:
        raise RuntimeError(f"the tensorrt backend needs a CUDA device, and {library} finds none")
    if not 0 <= index < count:
        raise ValueError(f"there is no CUDA device cuda:{index}; {library} finds {count}")


class _TorchCuda:
    """Streams, CUDA graphs and memory from torch.cuda."""

    def __init__(self, index: int | None):
        import array_api_compat.torch as xp
        import torch

        self.xp, self._torch = xp, torch
        if not torch.cuda.is_available():
            raise RuntimeError("the tensorrt backend needs a CUDA device (torch.cuda.is_available() is False)")
        self.index = torch.cuda.current_device() if index is None else index
        _check_index(self.index, torch.cuda.device_count(), "torch")
        self.array_device = torch.device("cuda", self.index)  # what asarray's device= takes

    def on_device(self) -> contextlib.AbstractContextManager:
        return self._torch.cuda.device(self.index)

    def empty(self, shape: tuple[int, ...], dtype) -> Array:
        return self._torch.empty(shape, dtype=dtype, device=self.array_device)

    def current_stream(self):
        return self._torch.cuda.current_stream(self.array_device)

    def new_stream(self):
        return self._torch.cuda.Stream(self.array_device)

    @staticmethod
    def handle(stream) -> int:
        return stream.cuda_stream

    @staticmethod
    def wait(waiter, waited) -> None:
        """Work queued on ``waiter`` from now on runs after the work queued on ``waited`` so far."""
        waiter.wait_stream(waited)

    def capture(self, stream, launch: Callable[[], None]):
        graph = self._torch.cuda.CUDAGraph()
        with self._torch.cuda.graph(graph, stream=stream):
            launch()
        return graph

    def replay(self, graph, stream) -> None:
        with self._torch.cuda.stream(stream):
            graph.replay()


class _CupyCuda:
    """Streams, CUDA graphs and memory from CuPy (``cupy.cuda``)."""

    def __init__(self, index: int | None):
        import array_api_compat.cupy as xp
        import cupy

        self.xp, self._cupy = xp, cupy
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except RuntimeError as e:  # CuPy's CUDARuntimeError: no driver, or none it can use
            raise RuntimeError(f"the tensorrt backend needs a CUDA device, and CuPy finds none: {e}") from None
        self.index = cupy.cuda.Device().id if index is None else index
        _check_index(self.index, count, "CuPy")
        self.array_device = self.index

    def on_device(self) -> Any:
        return self._cupy.cuda.Device(self.index)

    def empty(self, shape: tuple[int, ...], dtype) -> Array:
        with self.on_device():
            return self._cupy.empty(shape, dtype=dtype)

    def current_stream(self):
        return self._cupy.cuda.get_current_stream(self.index)

    def new_stream(self):
        with self.on_device():
            return self._cupy.cuda.Stream(non_blocking=True)

    @staticmethod
    def handle(stream) -> int:
        return stream.ptr

    @staticmethod
    def wait(waiter, waited) -> None:
        """Work queued on ``waiter`` from now on runs after the work queued on ``waited`` so far."""
        waiter.wait_event(waited.record())

    @staticmethod
    def capture(stream, launch: Callable[[], None]):
        stream.begin_capture()
        try:
            launch()
        except BaseException:
            stream.end_capture()  # leaves the stream usable; the partial graph is dropped
            raise
        return stream.end_capture()

    @staticmethod
    def replay(graph, stream) -> None:
        graph.launch(stream)
