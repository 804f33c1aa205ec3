"""TensorRT runner for a machine with neither torch nor CuPy (the ``tensorrt_host`` backend): the sampling loop runs
on numpy arrays on the host, and each graph call copies its inputs into device buffers, runs the engine and copies
its outputs back, all on one CUDA stream; device memory and the stream come from NVIDIA's cuda-python
(``cuda.bindings.runtime``, the CUDA runtime API, each call returning its ``cudaError_t`` first).

The issue that asked for it (#26) names pycuda. pycuda is published as a source distribution only, compiled against a
CUDA toolkit (nvcc and headers) when installed, while TensorRT's wheels (``tensorrt-cu12``) need only the driver:
where TensorRT installs with pip, pycuda often does not. cuda-python installs from wheels on the same platforms, and
TensorRT's own Python documentation names it for its samples since 10.x (pycuda up to 8.x).

The trade against the ``tensorrt`` backend (the loop's arrays on the GPU, torch's or CuPy's): the lightest GPU
install (two wheels beside numpy), for a host round trip of every call's inputs and outputs.

Written against the TensorRT 10 Python API documentation (``get_tensor_profile_shape``, ``set_input_shape``,
``set_tensor_address``, ``get_tensor_shape``, ``execute_async_v3``) and cuda-python's runtime bindings. Not run on a
GPU in this project: tests/fake_cuda.py stands in for both on a CPU.
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np

from ..arrays import to_host
from ..devices import Device
from .base import EngineRunner
from .registry import BACKENDS, require
from .tensorrt import check_directory, deserialize, dtype_name, import_tensorrt, io_names, new_context

CUDA_PYTHON = "cuda-python>=12.8,<13"  # cuda.bindings from 12.8 on; 12.x for CUDA 12, as tensorrt-cu12


def import_cudart():
    """cuda-python's CUDA runtime bindings, or an ImportError saying how to install them."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise ImportError(f"the tensorrt_host backend needs cuda-python: pip install '{CUDA_PYTHON}'") from None
    return runtime


class CudaRuntime:
    """The few CUDA runtime calls the runner makes, each checked: RuntimeError naming the call and CUDA's error."""

    def __init__(self, cudart):
        self.rt = cudart

    def __call__(self, what: str, result: tuple):
        """The value of a cuda-python call's ``result`` ``(error, value...)``: None, its one value, or a tuple."""
        error, *values = result
        if error != self.rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA {what} failed: {self._name(error)}")
        return None if not values else values[0] if len(values) == 1 else tuple(values)

    def _name(self, error) -> str:
        name = self.rt.cudaGetErrorName(error)[1]
        return name.decode() if isinstance(name, bytes) else str(name)

    def device(self, index: int | None) -> int:
        """``index`` (None: the current device) checked against the devices the runtime finds, made current."""
        try:
            error, count = self.rt.cudaGetDeviceCount()
            why = "" if error == self.rt.cudaError_t.cudaSuccess else f" ({self._name(error)})"
        except RuntimeError as e:  # cuda-bindings 12.8 without a driver: "Failed to dlopen libcuda.so.1"
            count, why = 0, f" ({e})"
        if why or count == 0:
            raise RuntimeError(f"the tensorrt_host backend needs a CUDA device, and the CUDA runtime finds none{why}")
        if index is None:
            index = self("cudaGetDevice", self.rt.cudaGetDevice())
        if not 0 <= index < count:
            raise ValueError(f"there is no CUDA device cuda:{index}; the CUDA runtime finds {count}")
        self("cudaSetDevice", self.rt.cudaSetDevice(index))
        return index

    def copy(self, destination: int, source: int, nbytes: int, to_device: bool, stream) -> None:
        """Queue a copy of ``nbytes`` between host and device memory on ``stream``."""
        kind = self.rt.cudaMemcpyKind
        direction = kind.cudaMemcpyHostToDevice if to_device else kind.cudaMemcpyDeviceToHost
        self("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(destination, source, nbytes, direction, stream))


class TensorRTHostRunner(EngineRunner):
    """Runs the serialized engines of a ``tensorrt`` engine directory on numpy arrays.

    Each graph gets, on first use, an execution context and a device buffer per input and output sized for its
    engine's largest shapes: its optimisation profile's maximum, which the build set from the manifest's buckets
    (their tiles and batches). A call sets the input shapes (an input outside the profile is refused before anything is
    copied), queues the copies in, the engine and the copies out on the runner's stream, and waits for the stream.

    Args:
        folder: an engine directory built with ``--backend tensorrt`` on this GPU and TensorRT version.
        device: a CUDA device ("cuda" is the current one).
    """

    backend = "tensorrt_host"

    def __init__(self, folder: str | os.PathLike, device: str | Device = "cuda"):
        super().__init__(folder, device)
        if self.device.type != "cuda":
            raise ValueError(f"the {self.backend} backend runs on a CUDA device, not {self.device}")
        require(BACKENDS[self.backend].needs, f"the {self.backend} backend")  # (constructed without the registry)
        trt = self._trt = import_tensorrt()
        check_directory(self.manifest, folder, trt)
        self._cuda = CudaRuntime(import_cudart())
        self.device = Device("cuda", self._cuda.device(self.device.index))  # current from here on
        self._keep, self._engines = deserialize(trt, self.folder, self.manifest)
        rt = self._cuda.rt
        self._stream = self._cuda("cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
        self._graphs: dict[str, tuple] = {}  # key -> (context, buffers by tensor name), made on first use
        self._memory: list[int] = []  # every address allocated, freed with the runner
        self._lock = threading.Lock()
        weakref.finalize(self, _release, self._cuda, self.device.index, self._stream, self._memory)

    def asarray(self, host: np.ndarray) -> np.ndarray:
        """numpy itself: the sampling loop runs on the host."""
        return np.ascontiguousarray(host)

    def _prepared(self, key: str) -> tuple:
        """(execution context, device address by tensor name) of graph ``key``: inputs sized by the profile's maximum,
        outputs by what the engine gives for it; every address set on the context once."""
        if key not in self._graphs:
            engine = self._engines[key]
            ctx = new_context(engine, key)
            names_in, names_out = io_names(self._trt, engine, key, self.config.levels)
            shapes = {name: tuple(engine.get_tensor_profile_shape(name, 0)[2]) for name in names_in}
            for name, shape in shapes.items():
                if not ctx.set_input_shape(name, shape):
                    raise RuntimeError(f"{key}: TensorRT refused its own profile's largest shape {shape} of {name}")
            shapes.update({name: tuple(ctx.get_tensor_shape(name)) for name in names_out})
            buffers = {}
            for name, shape in shapes.items():
                itemsize = np.dtype(dtype_name(self._trt, engine, key, name)).itemsize
                buffers[name] = self._allocate(int(np.prod(shape, dtype=np.int64)) * itemsize)
                if not ctx.set_tensor_address(name, buffers[name]):
                    raise RuntimeError(f"TensorRT refused the address of {key}'s tensor {name}")
            self._graphs[key] = (ctx, buffers)
        return self._graphs[key]

    def _allocate(self, nbytes: int) -> int:
        """An address of ``nbytes`` of device memory (cudaMalloc aligns to 256 bytes at least, as TensorRT asks)."""
        address = self._cuda("cudaMalloc", self._cuda.rt.cudaMalloc(nbytes))
        self._memory.append(address)
        return address

    def run_graph(self, key: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:  # one call at a time: a graph's context and buffers are shared by its calls
            return self._run(key, inputs)

    def _run(self, key: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        cuda, engine = self._cuda, self._engines[key]
        cuda("cudaSetDevice", cuda.rt.cudaSetDevice(self.device.index))  # the current device is per host thread
        ctx, buffers = self._prepared(key)
        names_in, names_out = io_names(self._trt, engine, key, self.config.levels)
        typed = []  # the host inputs, alive until the stream has copied them
        for name in names_in:
            host = np.ascontiguousarray(to_host(inputs[name]), dtype=dtype_name(self._trt, engine, key, name))
            if not ctx.set_input_shape(name, host.shape):
                low, _, high = (tuple(d) for d in engine.get_tensor_profile_shape(name, 0))
                raise ValueError(
                    f"{key}: input {name} of shape {host.shape} is outside what its engine was built "
                    f"for, {low} to {high}"
                )
            typed.append(host)
        outputs = [np.empty(tuple(ctx.get_tensor_shape(n)), dtype_name(self._trt, engine, key, n)) for n in names_out]
        try:
            for name, host in zip(names_in, typed):
                cuda.copy(buffers[name], host.ctypes.data, host.nbytes, True, self._stream)
            if not ctx.execute_async_v3(int(self._stream)):
                raise RuntimeError(f"TensorRT failed to run {key}")
            for name, out in zip(names_out, outputs):
                cuda.copy(out.ctypes.data, buffers[name], out.nbytes, False, self._stream)
        finally:  # also after a failure: nothing queued may outlive the host arrays it reads or writes
            cuda("cudaStreamSynchronize", cuda.rt.cudaStreamSynchronize(self._stream))
        return [out.astype(np.float32, copy=False) for out in outputs]


def _release(cuda: CudaRuntime, index: int, stream, memory: list[int]) -> None:
    """Free a runner's device memory and stream (its device current); errors are not raised at exit or collection."""
    rt = cuda.rt
    rt.cudaSetDevice(index)
    rt.cudaStreamSynchronize(stream)
    for address in memory:
        rt.cudaFree(address)
    rt.cudaStreamDestroy(stream)
