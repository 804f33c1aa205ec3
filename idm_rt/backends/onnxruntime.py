"""ONNX Runtime runner: CPU or CUDA execution provider. On a CPU its arrays are numpy's (no torch needed); on a GPU
they are CUDA arrays (torch's when torch is installed, else CuPy's) passed by IO binding, so that nothing is copied
through the host between denoising steps."""

from __future__ import annotations

import importlib.util
import os
import warnings

import array_api_compat.numpy
import numpy as np

from ..arrays import Array, to_host
from ..devices import Device
from ..stage_timing import ENGINE_ARRAYS, stage
from ..threads import MAX_THREADS
from ..threads import threads as default_threads
from .base import EngineRunner
from .engine_dir import INT8_CHECK, artifact, dim_size, graph_inputs, graph_key, graph_outputs, graph_specs
from .registry import INSTALL, installed

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
# Per pixel, a U-Net call of the bundled model on a static graph against the float32 dynamic one (2 threads, a quiet
# 2-core AMD EPYC VM, 2026-12-07; python -m benchmarks.static_speedup, benchmarks/results/static_speedup.md): float32
# Winograd 0.99x at 256 and 1.04x at 280 there (7 rounds; 1.16x and 1.10x in two ad-hoc runs of 5-7 rounds), int8
# 1.33x and 1.27x.
WINOGRAD_SPEEDUP = 1.05
INT8_SPEEDUP = 1.3


class OnnxRuntimeRunner(EngineRunner):
    """Runs every graph of an engine directory with ONNX Runtime.

    Args:
        folder: an engine directory; the optimised graphs of an ``onnxruntime`` build are used,
            the plain ONNX graphs of any other build.
        device: "cpu", "cuda" or "cuda:N" (needs the onnxruntime-gpu package).
        threads: intra-op threads on the CPU; None: the process's count (:func:`idm_rt.threads.threads`: what the
            command lines set from ``--threads``, or the CPUs this process may use); 0: ONNX Runtime's own default,
            every core of the machine, blind to CPU affinity and quotas.
    """

    backend = "onnxruntime"
    dynamic_reach = 2  # ONNX Runtime's dynamic graph takes any size: tiles up to twice the largest bucket's side

    @classmethod
    def static_speedup(cls, winograd: bool, precision: str) -> float:
        """Static graphs against the float32 dynamic one, per pixel: int8's (:data:`INT8_SPEEDUP`), float32 Winograd's
        (:data:`WINOGRAD_SPEEDUP`); 1 for the rest."""
        if precision == "int8":
            return INT8_SPEEDUP
        return WINOGRAD_SPEEDUP if winograd and precision == "fp32" else 1.0

    def __init__(self, folder: str | os.PathLike, device: str | Device = "cpu", threads: int | None = None):
        if threads is not None and (
            not isinstance(threads, int) or isinstance(threads, bool) or not 0 <= threads <= MAX_THREADS
        ):
            raise ValueError(f"runner option threads must be None or an integer in 0..{MAX_THREADS}, got {threads!r}")
        super().__init__(folder, device)
        # IO binding on CUDA (no copy through the host); a CPU takes plain run, except in the tests that run
        # the binding path with the CPU provider.
        self._io_binding = self.device.type == "cuda"
        self._cuda = cuda_arrays() if self.device.type == "cuda" else None
        ort = import_onnxruntime()
        providers = execution_providers(self.device)
        if self.device.type == "cuda" and self.manifest.build_flags.get("conv") == "winograd":
            warnings.warn(
                f"{self.folder} was built with Winograd convolutions for ONNX Runtime on a CPU; on a "
                "GPU cuDNN's own are faster: rebuild with python -m idm_rt.build --conv direct",
                stacklevel=1,
            )
        check = self.manifest.build_flags.get(INT8_CHECK)
        if isinstance(check, dict) and check.get("passed") is False:
            warnings.warn(
                f"{self.folder}: its int8 engine failed the build's check against the float32 model, its "
                f"images are not the model's:\n{check.get('report')}",
                stacklevel=1,
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: optimiser notes are not the user's concern
        options.intra_op_num_threads = default_threads() if threads is None else threads
        # No spinning: between U-Net calls the sampling loop's own numpy work (back-projection, the encoder's pieces)
        # runs on the same cores, which idle ONNX Runtime threads would keep busy waiting (a 512x512 upscale at 2
        # threads: 1.80 s against 1.95, back-projection 0.02 s against 0.05; benchmarks.stage_profile --side 512).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        use_engine = self.manifest.backend == "onnxruntime"
        self._sessions = {}
        for key, entry in self.manifest.graphs.items():
            path = (
                artifact(self.folder, entry.engine, entry.engine_bytes)
                if use_engine and entry.engine
                else artifact(self.folder, entry.onnx, entry.onnx_bytes)
            )
            try:
                self._sessions[key] = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as e:  # noqa: BLE001 (onnxruntime raises its own exception types, one per failure kind)
                raise RuntimeError(
                    f"ONNX Runtime cannot load {path}: {e}\n(a damaged file: rebuild the directory "
                    f"with python -m idm_rt.build --force)"
                ) from None
        self._check_graphs()

    def _check_graphs(self) -> None:
        """ValueError when a graph file does not take and give what its manifest entry says (a file copied
        over from another graph or another network): found now, not as a KeyError in the first call."""
        for kind, bucket in graph_specs(self.buckets, self.manifest.static):
            key = graph_key(kind, bucket)
            session = self._sessions[key]
            got = ([m.name for m in session.get_inputs()], [m.name for m in session.get_outputs()])
            want = (graph_inputs(kind, self.config), graph_outputs(kind, self.config.levels))
            if sorted(got[0]) != sorted(want[0]) or got[1] != want[1]:
                raise ValueError(
                    f"{self.folder}: graph {key} takes {got[0]} and gives {got[1]}, its manifest's "
                    f"network needs {want[0]} and {want[1]}: the files do not match manifest.json; "
                    "rebuild the directory with python -m idm_rt.build --force"
                )

    def asarray(self, host: np.ndarray) -> Array:
        """numpy itself on a CPU; a CUDA array (torch's or CuPy's) on the runner's GPU."""
        if self._cuda is None:
            return np.ascontiguousarray(host)
        return self._cuda.asarray(host, device=self._cuda_device())

    def _cuda_device(self):
        index = self.device.index or 0
        return f"cuda:{index}" if self._cuda.__name__.endswith("torch") else index

    def run_graph(self, key: str, inputs: dict[str, Array]) -> list[Array]:
        session = self._sessions[key]
        metas = {m.name: m for m in session.get_inputs()}
        if self._io_binding:
            return self._run_bound(session, metas, inputs)
        with stage(ENGINE_ARRAYS):
            feeds = {
                name: np.ascontiguousarray(to_host(a), dtype=_DTYPES[metas[name].type]) for name, a in inputs.items()
            }
        outs = session.run(None, feeds)
        with stage(ENGINE_ARRAYS):
            return [o.astype(np.float32, copy=False) for o in outs]

    def _run_bound(self, session, metas, inputs: dict[str, Array]) -> list[Array]:
        """IO binding: inputs and preallocated outputs stay in the array library's memory on the runner's device
        (numpy's host memory in the tests that take this path with the CPU provider). Each output's shape is its
        graph's, every named dimension sized by :func:`dim_size` from the inputs."""
        xp = self._cuda or array_api_compat.numpy
        where, device_id = self.device.type, self.device.index or 0
        binding = session.io_binding()
        dims: dict[str, int] = {}
        kept = []  # the typed inputs, alive until the run
        for name, a in inputs.items():
            dtype = _DTYPES[metas[name].type]
            typed = xp.asarray(xp.astype(a, getattr(xp, dtype.__name__)), copy=True)  # dense, in the graph's dtype
            kept.append(typed)
            binding.bind_input(name, where, device_id, dtype, tuple(typed.shape), pointer(typed))
            dims.update({d: n for d, n in zip(metas[name].shape, typed.shape) if isinstance(d, str)})
        outputs = []
        for meta in session.get_outputs():
            dtype = _DTYPES[meta.type]
            shape = tuple(dim_size(d, dims) for d in meta.shape)
            out = xp.empty(
                shape, dtype=getattr(xp, dtype.__name__), device=self._cuda_device() if self._cuda else "cpu"
            )
            binding.bind_output(meta.name, where, device_id, dtype, shape, pointer(out))
            outputs.append(out)
        if where == "cuda":
            # ONNX Runtime runs on its own CUDA stream: the inputs written on the library's stream must be ready
            # first (run_with_iobinding itself returns only once the outputs are written).
            synchronize(self._cuda)
        session.run_with_iobinding(binding)
        return [xp.astype(o, xp.float32) for o in outputs]


def cuda_arrays():
    """The array library CUDA arrays come from: torch's (array-api-compat) when torch is installed, else CuPy's;
    ImportError saying what to install when neither is."""
    if installed("torch"):
        import array_api_compat.torch as xp

        return xp
    if importlib.util.find_spec("cupy") is not None:
        import array_api_compat.cupy as xp

        return xp
    raise ImportError("ONNX Runtime on CUDA without torch keeps its arrays in CuPy: pip install 'idm-rt[gpu]'")


def pointer(a: Array) -> int:
    """The address of an array's data: numpy's, or a CUDA array's (torch and CuPy both expose the CUDA array
    interface)."""
    if isinstance(a, np.ndarray):
        return a.ctypes.data
    return a.__cuda_array_interface__["data"][0]


def synchronize(xp) -> None:
    """Wait for the CUDA array library's current stream."""
    if xp.__name__.endswith("torch"):
        import torch

        torch.cuda.current_stream().synchronize()
    else:
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def import_onnxruntime():
    """The onnxruntime module, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"the onnxruntime backend needs onnxruntime: {INSTALL['onnxruntime']}") from None
    return onnxruntime


def check_device(device_type: str) -> None:
    """Raise where ONNX Runtime cannot run on a device of ``device_type`` here (its execution providers)."""
    execution_providers(Device(device_type))


def execution_providers(device: Device) -> list:
    """ONNX Runtime's providers for ``device``; a clear error when this machine cannot run there, so
    that it comes before any engine is built."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise ValueError(f"the onnxruntime backend runs on 'cpu' or 'cuda', not {device}")
    if "CUDAExecutionProvider" not in import_onnxruntime().get_available_providers():
        raise RuntimeError(
            "ONNX Runtime has no CUDAExecutionProvider here; install onnxruntime-gpu or use device='cpu'"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
