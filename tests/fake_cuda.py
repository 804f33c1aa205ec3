"""Stand-ins for the device calls of the GPU runtime, so that a CPU runs its code: a fake CuPy (``cupy``), a fake
cuda-python runtime (``cuda.bindings.runtime``, :func:`_cudart_module`), a fake TensorRT (``tensorrt``) and ONNX
Runtime's CUDA provider (IO binding on device memory), all over host memory.

Fake CuPy: arrays live in "device memory", host allocations aligned as CuPy's pool aligns them and found by address
while alive. Like CuPy, an array does not turn into a numpy array (``.get()`` copies it to the host), refuses numpy
operands, and is computed on only while its device is the current one; fresh memory (``empty``) holds NaN bytes.
Every fake CuPy operation runs at once, on the current stream (the caller's, in the runner); work queued on another
stream (TensorRT's) runs only when a stream waits for an event recorded after it, or on ``synchronize``: a runner
that reads TensorRT's outputs without waiting reads NaN. Queuing work on a stream that has not waited for every
write made on the current stream raises (a race on a GPU). Streams can be captured into graphs and replayed.

Fake TensorRT: a "plan" is an ONNX graph with its optimisation profile (:func:`fake_build_engine` writes them, in
place of TensorRT's builder); an engine runs it with ONNX Runtime on the CPU, reading and writing device memory at
the addresses it is given, when its stream runs the call.

``python -m tests.fake_cuda ENGINES OUT`` runs the main job's path in a process where torch cannot be imported
(:func:`main`; tests/test_tensorrt_runner.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import importlib.util
import itertools
import json
import sys
import types
import weakref
from pathlib import Path

import numpy as np

ALIGN = 512  # CuPy's memory pool hands out blocks in multiples of 512 bytes
FAKE_TENSORRT_VERSION = "10.9.0.34"
PLAN_MAGIC = b"FAKE-TENSORRT-PLAN\n"


class _State:
    """The fake GPU's state: device count, current device and streams, writes counter, memory, streams by handle."""

    def reset(self, devices: int = 1) -> None:
        self.devices = devices
        self.current = [0]  # stack of current devices
        self.streams: dict[int, list] = {}  # device -> stack of current streams
        self.writes = 0  # writes made on the current stream so far
        self.memory: dict[int, tuple] = {}  # id(raw) -> (weakref to raw, device)
        self.handles: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.log: list[tuple] = []  # (what, ...) of stream and graph calls
        self.allocations: dict[int, np.ndarray] = {}  # cudaMalloc's, by address, until cudaFree


STATE = _State()
STATE.reset()


# -- memory ------------------------------------------------------------------------------------------------------------


def _allocate(nbytes: int, device: int, on_stream: bool = True) -> np.ndarray:
    """``nbytes`` of fresh device memory (NaN bytes), aligned to ALIGN; ``on_stream``: allocated on the current stream
    (CuPy's pool), which other streams must wait for before they use it."""
    raw = np.empty(nbytes + ALIGN, np.uint8)
    raw.fill(0xFF)
    start = -raw.ctypes.data % ALIGN
    key = id(raw)
    STATE.memory[key] = (weakref.ref(raw, lambda _: STATE.memory.pop(key, None)), device)  # forgotten when freed
    STATE.writes += on_stream
    return raw[start : start + nbytes]


def _owner(a: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(raw allocation, device) that ``a`` is a view of, if it is one."""
    entry = STATE.memory.get(id(a.base)) if a.base is not None else None
    if entry is None or entry[0]() is not a.base:
        return None
    return entry[0](), entry[1]


def resolve(address: int, nbytes: int, device: int) -> np.ndarray:
    """The live device memory of ``device`` at ``address`` (a uint8 view); AssertionError where none is: freed memory,
    or another device's."""
    for ref, dev in list(STATE.memory.values()):
        raw = ref()
        if raw is not None and raw.ctypes.data <= address and address + nbytes <= raw.ctypes.data + raw.size:
            assert dev == device, f"memory at {address:#x} is on device {dev}, used on device {device}"
            offset = address - raw.ctypes.data
            return raw[offset : offset + nbytes]
    raise AssertionError(f"no live device memory at {address:#x} ({nbytes} bytes): used after it was freed")


# -- arrays ------------------------------------------------------------------------------------------------------------


def _current_device() -> int:
    return STATE.current[-1]


def _to_device(host: np.ndarray, device: int | None = None) -> ndarray:
    """A copy of a host array in fresh device memory, C order."""
    host = np.asarray(host)
    device = _current_device() if device is None else device
    out = _allocate(host.nbytes, device).view(host.dtype).reshape(host.shape)
    out[...] = host
    return ndarray(out, device)


def _wrap(result):
    """numpy results as device arrays: views of device memory stay views, anything else is copied in."""
    if isinstance(result, np.ndarray):
        owner = _owner(result)
        return ndarray(result, owner[1]) if owner is not None else _to_device(result)
    if isinstance(result, np.generic):
        return _to_device(np.asarray(result))  # CuPy's reductions give 0-d arrays
    if isinstance(result, tuple | list):
        return type(result)(_wrap(r) for r in result)
    return result


def _unwrap(x, host_ok: bool = False):
    """Device arrays as their numpy views, checked to be on the current device; numpy arrays refused (CuPy takes none
    as operands) unless ``host_ok``."""
    if isinstance(x, ndarray):
        if x._device != _current_device():
            raise ValueError(
                f"The device where the array resides ({x._device}) is different from the current device "
                f"({_current_device()})."
            )
        return x._a
    if isinstance(x, np.ndarray) and not host_ok:
        raise TypeError(f"Unsupported type {type(x)}: a numpy array where a device array is needed")
    if isinstance(x, tuple | list):
        return type(x)(_unwrap(v, host_ok) for v in x)
    return x


def _function(fn):
    def call(*args, **kwargs):
        return _wrap(fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))

    call.__name__ = getattr(fn, "__name__", "function")
    return call


class ndarray:  # (CuPy's name)
    """A fake CuPy array: a numpy view of device memory, on a device."""

    __array_ufunc__ = None  # numpy defers to these operators (which refuse numpy operands)

    def __init__(self, a: np.ndarray, device: int):
        self._a, self._device = a, device

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: _wrap(self._a.T))
    device = property(lambda self: Device(self._device))

    @property
    def __cuda_array_interface__(self) -> dict:
        a = self._a
        return {
            "shape": a.shape,
            "typestr": a.dtype.str,
            "descr": a.dtype.descr,
            "version": 3,
            "data": (a.ctypes.data, False),
            "strides": None if a.flags.c_contiguous else a.strides,
        }

    def get(self) -> np.ndarray:
        """A host copy."""
        return self._a.copy()

    def astype(self, dtype, copy: bool = True, **kwargs) -> ndarray:
        out = _unwrap(self).astype(dtype, copy=copy, **kwargs)
        return self if out is self._a else _wrap(out)

    def __getitem__(self, index):
        return _wrap(_unwrap(self)[_unwrap(index, host_ok=True)])

    def __setitem__(self, index, value) -> None:
        _unwrap(self)[_unwrap(index, host_ok=True)] = _unwrap(value, host_ok=True)
        STATE.writes += 1

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __index__(self) -> int:
        return int(self._a)

    def __bool__(self) -> bool:
        return bool(self._a)

    def __repr__(self) -> str:
        return f"fake cupy array(shape={self.shape}, dtype={self.dtype}, device={self._device})"

    def __getattr__(self, name):  # the other ndarray methods (sum, reshape, ...), on device memory
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._a, name)
        return _function(lambda *a, **k: getattr(_unwrap(self), name)(*a, **k)) if callable(attr) else _wrap(attr)


def _operator(name: str):
    def op(self, *others):
        return _wrap(getattr(_unwrap(self), name)(*_unwrap(others)))

    return op


def _in_place(name: str):
    def op(self, other):
        getattr(_unwrap(self), name)(_unwrap(other))
        STATE.writes += 1
        return self

    return op


for _name in (
    "add",
    "sub",
    "mul",
    "truediv",
    "floordiv",
    "mod",
    "pow",
    "matmul",
    "and",
    "or",
    "xor",
    "lshift",
    "rshift",
):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _operator(f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _in_place(f"__i{_name}__"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
ndarray.__hash__ = None


def array(obj, dtype=None, copy=True, order="K", ndmin=0, **kwargs) -> ndarray:
    """Host data to the current device (always copied from the host; device arrays as numpy would)."""
    if isinstance(obj, ndarray):
        with Device(obj._device):
            source = _unwrap(obj)
        out = np.array(source, dtype=dtype, copy=copy, order=order, ndmin=ndmin)
        return obj if out is obj._a else _to_device(out)
    return _to_device(np.array(_unwrap(obj, host_ok=True), dtype=dtype, order=order, ndmin=ndmin))


def asarray(obj, dtype=None, order=None, **kwargs) -> ndarray:
    return array(obj, dtype=dtype, copy=None, order=order or "K")


def empty(shape, dtype=float, order="C", **kwargs) -> ndarray:
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return ndarray(_allocate(nbytes, _current_device()).view(dtype).reshape(shape), _current_device())


def empty_like(a, dtype=None, **kwargs) -> ndarray:
    return empty(a.shape, dtype or a.dtype)


# -- devices, streams, events, graphs ----------------------------------------------------------------------------------


class Device:
    """A device; as a context manager, the current one."""

    def __init__(self, device=None):
        self.id = device.id if isinstance(device, Device) else _current_device() if device is None else int(device)

    def __enter__(self) -> Device:
        if not 0 <= self.id < STATE.devices:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")
        STATE.current.append(self.id)
        return self

    def __exit__(self, *exc) -> None:
        STATE.current.pop()

    def __eq__(self, other) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return self.id

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class Event:
    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False):
        self.stream, self.mark, self.writes = None, 0, 0

    def record(self, stream: Stream | None = None) -> None:
        self.stream = stream or get_current_stream()
        self.mark = self.stream.done + len(self.stream.pending)
        self.writes = STATE.writes


_HANDLES = itertools.count(0x7F0000001000, 0x100)


class Stream:
    """A stream: work queued on it runs when waited for (the null stream runs it at once)."""

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False, priority=None):
        self.ptr = 0 if null else next(_HANDLES)
        self.device_id = -1 if null else _current_device()
        self.pending, self.done, self.covered = [], 0, 0
        self.capture: list | None = None
        self.host_fed = False  # its work reads host memory and its own cudaMalloc'd buffers only (no CuPy writes)
        if not null:
            STATE.handles[self.ptr] = self

    def __repr__(self) -> str:
        return f"<Stream {self.ptr:#x}>"

    def __int__(self) -> int:  # (cuda-python's cudaStream_t: its handle)
        return self.ptr

    def enqueue(self, op, what: str) -> None:
        """Queue ``op``; AssertionError where writes made on the current stream were not waited for first."""
        if self.capture is not None:
            self.capture.append(op)
            return
        if self.ptr and self.covered < STATE.writes and not self.host_fed:
            raise AssertionError(f"{what} queued on {self} before it waited for the current stream's writes: a race")
        STATE.log.append(("run", what, self.ptr))
        if self.ptr == 0:
            op()
        else:
            self.pending.append(op)

    def _run_to(self, mark: int) -> None:
        while self.done < mark:
            self.pending.pop(0)()
            self.done += 1

    def record(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event: Event) -> None:
        STATE.log.append(("wait", self.ptr, event.stream.ptr))
        event.stream._run_to(event.mark)
        self.covered = max(self.covered, event.writes)

    def synchronize(self) -> None:
        self._run_to(self.done + len(self.pending))

    def begin_capture(self, mode=None) -> None:
        if self.ptr == 0 or self.capture is not None:
            raise RuntimeError("cudaErrorStreamCaptureUnsupported: capture on the legacy stream, or twice")
        self.capture = []
        STATE.log.append(("begin_capture", self.ptr))

    def end_capture(self) -> Graph:
        if self.capture is None:
            raise RuntimeError("cudaErrorIllegalState: no capture on this stream")
        graph, self.capture = Graph(self.capture), None
        STATE.log.append(("end_capture", self.ptr))
        return graph


Stream.null = Stream(null=True)


class Graph:
    def __init__(self, ops: list):
        self.ops = ops

    def launch(self, stream: Stream | None = None) -> None:
        (stream or get_current_stream()).enqueue(lambda: [op() for op in self.ops], f"graph of {len(self.ops)} ops")


def get_current_stream(device_id: int = -1) -> Stream:
    device = _current_device() if device_id < 0 else device_id
    return STATE.streams.get(device, [Stream.null])[-1]


def stream_of(handle: int) -> Stream:
    return Stream.null if handle == 0 else STATE.handles[handle]


# -- the modules -------------------------------------------------------------------------------------------------------


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attributes)
    return module


def _cupy_modules() -> dict[str, types.ModuleType]:
    """cupy, cupy.cuda (and its device and runtime), cupy.linalg and cupy.fft."""
    names = {}
    for name in dir(np):
        obj = getattr(np, name)
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        names[name] = obj if isinstance(obj, type) or not callable(obj) else _function(obj)
    names.update(ndarray=ndarray, array=array, asarray=asarray, empty=empty, empty_like=empty_like)
    runtime = _module("cupy.cuda.runtime", getDeviceCount=lambda: STATE.devices)
    device = _module("cupy.cuda.device", Device=Device)
    cuda = _module(
        "cupy.cuda",
        Device=Device,
        Stream=Stream,
        Event=Event,
        Graph=Graph,
        runtime=runtime,
        device=device,
        get_current_stream=get_current_stream,
    )
    linalg = _module("cupy.linalg", lstsq=_function(np.linalg.lstsq))
    fft = _module("cupy.fft")
    cupy = _module("cupy", **names, cuda=cuda, linalg=linalg, fft=fft)
    return {m.__name__: m for m in (cupy, cuda, runtime, device, linalg, fft)}


CUPY_MODULES = _cupy_modules()  # one set per process: array-api-compat's cupy namespace binds to the first it sees


# -- TensorRT ----------------------------------------------------------------------------------------------------------


def fake_build_engine(
    onnx_path: Path, engine_path: Path, profile: dict, fp16: bool, workspace_mb: int, timing_cache: Path
) -> None:
    """In place of export.tensorrt_build.build_engine: a plan of the ONNX graph and its profile."""
    header = json.dumps({"name": Path(onnx_path).stem, "profile": profile}).encode()
    Path(engine_path).write_bytes(PLAN_MAGIC + header + b"\n" + Path(onnx_path).read_bytes())


class _Enum:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}


class _Engine:
    """A deserialized plan: an ONNX Runtime session on the CPU, its I/O in an order of its own."""

    def __init__(self, trt, name: str, profile: dict, onnx: bytes):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
        self.trt, self.name, self.device = trt, name, _current_device()
        self.profile = {k: [tuple(s) for s in v] for k, v in profile.items()}
        self.inputs = {m.name: m for m in self.session.get_inputs()}
        self.outputs = {m.name: m for m in self.session.get_outputs()}
        self.order = [*reversed(self.outputs), *reversed(self.inputs)]  # not the graph's order
        self.launches = 0

    num_io_tensors = property(lambda self: len(self.order))

    def get_tensor_name(self, i: int) -> str:
        return self.order[i]

    def get_tensor_mode(self, name: str):
        return self.trt.TensorIOMode.INPUT if name in self.inputs else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        meta = self.inputs.get(name) or self.outputs[name]
        return getattr(self.trt, _ORT_TYPES[meta.type])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple]:
        assert profile_index == 0
        return self.profile[name]

    def create_execution_context(self) -> _Context:
        return _Context(self)

    def np_dtype(self, name: str) -> np.dtype:
        return np.dtype(_ORT_TYPES[(self.inputs.get(name) or self.outputs[name]).type])


class _Context:
    """An execution context: input shapes and tensor addresses, runs queued on a stream."""

    def __init__(self, engine: _Engine):
        self.engine, self.shapes, self.addresses, self.warm = engine, {}, {}, False
        self._output_shapes: dict[tuple, dict] = {}

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        low, _, high = self.engine.profile[name]
        if len(shape) != len(low) or any(not lo <= n <= hi for lo, n, hi in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        if address is None or address == 0 or address % 256:
            return False
        self.addresses[name] = address
        return True

    def _zeros(self) -> dict:
        return {n: np.zeros(self.shapes[n], self.engine.np_dtype(n)) for n in self.engine.inputs}

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.engine.inputs:
            return self.shapes.get(name, (-1,))
        key = tuple(sorted(self.shapes.items()))
        if key not in self._output_shapes:  # what the graph gives for inputs of these shapes
            outs = self.engine.session.run(None, self._zeros())
            self._output_shapes[key] = {n: o.shape for n, o in zip(self.engine.outputs, outs)}
        return self._output_shapes[key][name]

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine = self.engine
        if set(self.shapes) != set(engine.inputs) or set(self.addresses) != set(engine.order):
            return False
        stream = stream_of(stream_handle)
        if stream.capture is not None and not self.warm:
            return False  # TensorRT asks for one run of a context before it is captured
        assert stream.ptr == 0 or stream.device_id == engine.device, "a stream of another device"
        assert _current_device() == engine.device, "run with another device current"
        shapes = {n: self.shapes[n] for n in engine.inputs} | {n: self.get_tensor_shape(n) for n in engine.outputs}
        bound = {n: (self.addresses[n], shapes[n], engine.np_dtype(n)) for n in engine.order}  # as when queued

        def run() -> None:
            def memory(name):
                address, shape, dtype = bound[name]
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                return resolve(address, nbytes, engine.device).view(dtype).reshape(shape)

            outs = engine.session.run(None, {n: memory(n).copy() for n in engine.inputs})
            for name, out in zip(engine.outputs, outs):
                assert out.shape == bound[name][1], f"{engine.name}: {name} is {out.shape}, bound {bound[name][1]}"
                memory(name)[...] = out
            engine.launches += 1

        self.warm = self.warm or stream.capture is None
        stream.enqueue(run, f"{engine.name} run")
        return True


class _Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, plan: bytes) -> _Engine | None:
        if not plan.startswith(PLAN_MAGIC):
            return None
        header, _, onnx = plan[len(PLAN_MAGIC) :].partition(b"\n")
        meta = json.loads(header)
        return _Engine(TENSORRT, meta["name"], meta["profile"], onnx)


class _Logger:
    WARNING = 2

    def __init__(self, severity: int = 2):
        self.severity = severity


TENSORRT = _module(
    "tensorrt",
    __version__=FAKE_TENSORRT_VERSION,
    Logger=_Logger,
    Runtime=_Runtime,
    TensorIOMode=types.SimpleNamespace(INPUT=_Enum("INPUT"), OUTPUT=_Enum("OUTPUT")),
    **{n: _Enum(n) for n in ("float32", "float16", "int64", "int32")},
)


# -- ONNX Runtime's CUDA provider --------------------------------------------------------------------------------------


def cuda_session_class(ort):
    """An InferenceSession whose CUDA provider runs on the CPU: IO binding takes device memory (of the device the
    provider was given), as ONNX Runtime's does."""

    class Binding:
        def __init__(self, real, device_id: int):
            self.real, self.device_id = real, device_id

        def _check(self, device_type: str, device_id: int, dtype, shape, address: int) -> None:
            assert (device_type, device_id) == ("cuda", self.device_id), (device_type, device_id)
            resolve(address, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize, device_id)

        def bind_input(self, name, device_type, device_id, dtype, shape, address) -> None:
            self._check(device_type, device_id, dtype, shape, address)
            self.real.bind_input(name, "cpu", 0, dtype, shape, address)

        def bind_output(self, name, device_type, device_id, dtype, shape, address) -> None:
            self._check(device_type, device_id, dtype, shape, address)
            self.real.bind_output(name, "cpu", 0, dtype, shape, address)

    class CudaSession(ort.InferenceSession):
        def __init__(self, path, options=None, providers=None, **kwargs):
            first = (providers or ["CPUExecutionProvider"])[0]
            self.device_id = first[1]["device_id"] if first[0] == "CUDAExecutionProvider" else None
            super().__init__(path, options, providers=["CPUExecutionProvider"], **kwargs)

        def io_binding(self):
            real = super().io_binding()
            return real if self.device_id is None else Binding(real, self.device_id)

        def run_with_iobinding(self, binding, run_options=None):
            return super().run_with_iobinding(getattr(binding, "real", binding), run_options)

    return CudaSession


# -- cuda-python's CUDA runtime bindings ----------------------------------------------------------------------------


class _CudartError(_Enum):
    pass


_CUDART_ERRORS = types.SimpleNamespace(
    **{
        n: _CudartError(n)
        for n in ("cudaSuccess", "cudaErrorNoDevice", "cudaErrorInvalidDevice", "cudaErrorInvalidValue")
    }
)
_SUCCESS = _CUDART_ERRORS.cudaSuccess


def _cudart_module() -> types.ModuleType:
    """``cuda.bindings.runtime``: devices, non-blocking streams, cudaMalloc'd memory (alive until cudaFree, in
    STATE.allocations) and host/device copies queued on a stream, over the fake GPU's memory and streams. A copy to
    the host fills its destination with NaN bytes when queued and writes it when its stream runs: read before the
    stream is synchronised, it is NaN. Device addresses are checked to be live memory of the current device when the
    copy is queued and when it runs; host ones cannot be."""

    def get_device_count():
        return (_SUCCESS, STATE.devices) if STATE.devices else (_CUDART_ERRORS.cudaErrorNoDevice, 0)

    def set_device(device: int):
        if not 0 <= device < STATE.devices:
            return (_CUDART_ERRORS.cudaErrorInvalidDevice,)
        STATE.current[-1] = device
        return (_SUCCESS,)

    def stream_create_with_flags(flags: int):
        assert flags == runtime.cudaStreamNonBlocking
        stream = Stream(non_blocking=True)
        stream.host_fed = True
        return _SUCCESS, stream

    def malloc(nbytes: int):
        memory = _allocate(nbytes, _current_device(), on_stream=False)  # cudaMalloc synchronises the device
        STATE.allocations[memory.ctypes.data] = memory
        STATE.log.append(("cudaMalloc", nbytes))
        return _SUCCESS, memory.ctypes.data

    def free(address: int):
        return (
            (_SUCCESS,) if STATE.allocations.pop(address, None) is not None else (_CUDART_ERRORS.cudaErrorInvalidValue,)
        )

    def memcpy_async(destination: int, source: int, nbytes: int, kind, stream: Stream):
        device = _current_device()
        to_device = kind is runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
        assert to_device or kind is runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost, kind
        resolve(destination if to_device else source, nbytes, device)
        if not to_device:
            ctypes.memset(destination, 0xFF, nbytes)

        def copy() -> None:
            resolve(destination if to_device else source, nbytes, device)
            ctypes.memmove(destination, source, nbytes)

        stream.enqueue(copy, "copy to the device" if to_device else "copy to the host")
        return (_SUCCESS,)

    def stream_synchronize(stream: Stream):
        stream.synchronize()
        STATE.log.append(("synchronize", stream.ptr))
        return (_SUCCESS,)

    runtime = _module(
        "cuda.bindings.runtime",
        cudaError_t=_CUDART_ERRORS,
        cudaGetErrorName=lambda error: (_SUCCESS, error.name.encode()),
        cudaGetDeviceCount=get_device_count,
        cudaGetDevice=lambda: (_SUCCESS, _current_device()),
        cudaSetDevice=set_device,
        cudaStreamNonBlocking=1,
        cudaStreamCreateWithFlags=stream_create_with_flags,
        cudaStreamSynchronize=stream_synchronize,
        cudaStreamDestroy=lambda stream: (_SUCCESS,),
        cudaMalloc=malloc,
        cudaFree=free,
        cudaMemcpyKind=types.SimpleNamespace(
            cudaMemcpyHostToDevice=_Enum("cudaMemcpyHostToDevice"),
            cudaMemcpyDeviceToHost=_Enum("cudaMemcpyDeviceToHost"),
        ),
        cudaMemcpyAsync=memcpy_async,
    )
    return runtime


CUDART = _cudart_module()
CUDA_MODULES = {
    "cuda": _module("cuda"),
    "cuda.bindings": _module("cuda.bindings", runtime=CUDART),
    "cuda.bindings.runtime": CUDART,
}


# -- installing them ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def installed(devices: int = 1, torch_absent: bool = True):
    """The fakes (CuPy, cuda-python's runtime, TensorRT) in sys.modules and ONNX Runtime's CUDA provider while the
    block runs; torch looks absent to
    ``importlib.util.find_spec`` (what idm_rt asks) when ``torch_absent``."""
    import onnxruntime as ort

    STATE.reset(devices)
    names = [*CUPY_MODULES, *CUDA_MODULES, "tensorrt", "array_api_compat.cupy"]
    saved = {name: sys.modules.get(name) for name in names}
    find_spec, providers, session = importlib.util.find_spec, ort.get_available_providers, ort.InferenceSession
    sys.modules.update(CUPY_MODULES)
    sys.modules.update(CUDA_MODULES)
    sys.modules["tensorrt"] = TENSORRT
    if torch_absent:
        importlib.util.find_spec = _hiding(find_spec, "torch")
    ort.get_available_providers = lambda: ["CUDAExecutionProvider", *providers()]
    ort.InferenceSession = cuda_session_class(ort)
    try:
        yield STATE
    finally:
        importlib.util.find_spec, ort.get_available_providers, ort.InferenceSession = find_spec, providers, session
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@contextlib.contextmanager
def absent(module: str):
    """``module`` (and its submodules) looks not installed to ``importlib.util.find_spec`` while the block runs;
    restored when it ends (not at a test's teardown, so that it nests inside :func:`installed`)."""
    find_spec = importlib.util.find_spec
    importlib.util.find_spec = _hiding(find_spec, module)
    try:
        yield
    finally:
        importlib.util.find_spec = find_spec


def _hiding(find_spec, module: str):
    """``find_spec`` under which ``module`` and its submodules are not installed."""
    return lambda name, *a: None if name.split(".")[0] == module else find_spec(name, *a)


class TorchBlocker:
    """A meta-path finder under which ``import torch`` fails, each attempt recorded."""

    def __init__(self):
        self.attempts: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            self.attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


def main_job() -> tuple[np.ndarray, dict]:
    """The image and upscale options :func:`main` runs: an output tiled in two 32x32 tiles (the tile every backend
    is given: ONNX Runtime's dynamic graph would take it whole, TensorRT's profiles do not), sampled from the bicubic
    upscale (through the loop's resizes), mostly unsaturated."""
    image = np.random.default_rng(0).random((16, 24, 3), dtype=np.float32)
    return image, dict(
        scale=2, steps=2, seed=3, progress=False, sampler="dpmpp_2m", init="bicubic", init_level=0.8, tile=32
    )


def main(argv: list[str] | None = None) -> None:
    """ENGINES OUT: with torch unimportable, upscale images with the TensorRT runner (CUDA graphs on) and ONNX
    Runtime on "cuda", both on fake CuPy arrays, with the tensorrt_host runner (fake cuda-python, numpy arrays) and
    with ONNX Runtime on the CPU; OUT/images.npz holds the images, OUT/report.json the torch modules imported and the
    import attempts."""
    engines, out = (Path(a) for a in (argv or sys.argv[1:]))
    blocker = TorchBlocker()
    sys.meta_path.insert(0, blocker)
    with installed():
        from idm_rt import Upscaler

        image, kw = main_job()
        images = {
            "tensorrt": Upscaler.from_engines(engines, runner_options={"cuda_graph": True}).upscale(image, **kw),
            "tensorrt_host": Upscaler.from_engines(engines, backend="tensorrt_host").upscale(image, **kw),
            "onnxruntime_cuda": Upscaler.from_engines(engines, "cuda", "onnxruntime").upscale(image, **kw),
            "onnxruntime_cpu": Upscaler.from_engines(engines, "cpu", "onnxruntime").upscale(image, **kw),
        }
        launches = sum(1 for entry in STATE.log if entry[0] == "run")
    np.savez(out / "images.npz", **images)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m == "array_api_compat.torch")
    (out / "report.json").write_text(
        json.dumps({"modules": loaded, "attempts": blocker.attempts, "launches": launches})
    )


if __name__ == "__main__":
    main()
