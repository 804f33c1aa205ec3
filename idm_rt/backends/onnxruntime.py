"""ONNX Runtime runner: CPU or CUDA execution provider; on the GPU, IO binding on torch tensors so
that nothing is copied through the host between denoising steps."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import numpy as np
import torch

from ..threads import MAX_THREADS
from .base import EngineRunner
from .engine_dir import INT8_CHECK, artifact, dim_size, graph_inputs, graph_key, graph_outputs, graph_specs

_DTYPES = {"tensor(float)": (np.float32, torch.float32), "tensor(float16)": (np.float16, torch.float16),
           "tensor(int64)": (np.int64, torch.int64)}


class OnnxRuntimeRunner(EngineRunner):
    """Runs every graph of an engine directory with ONNX Runtime.

    Args:
        folder: an engine directory; the optimised graphs of an ``onnxruntime`` build are used,
            the plain ONNX graphs of any other build.
        device: "cpu", "cuda" or "cuda:N" (needs the onnxruntime-gpu package).
        threads: intra-op threads on the CPU; None: torch's thread count when the runner is made (what the
            command lines set from ``--threads`` or the CPUs this process may use, see :mod:`idm_rt.threads`);
            0: ONNX Runtime's own default, every core of the machine, blind to CPU affinity and quotas.
        sampling_torch_threads: torch's thread count while an image is sampled on the CPU (see
            :meth:`sampling`; process-wide for that time); None leaves torch alone.
    """

    backend = "onnxruntime"

    def __init__(self, folder: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None,
                 sampling_torch_threads: int | None = 1):
        for name, value, low in (("threads", threads, 0), ("sampling_torch_threads", sampling_torch_threads, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not low <= value <= MAX_THREADS):
                raise ValueError(f"runner option {name} must be None or an integer in {low}..{MAX_THREADS}, "
                                 f"got {value!r}")
        super().__init__(folder, device)
        self.sampling_torch_threads = sampling_torch_threads
        # IO binding on CUDA (no copy through the host); a CPU takes plain run, except in the tests that run
        # the binding path with the CPU provider.
        self._io_binding = self.device.type == "cuda"
        ort = import_onnxruntime()
        providers = execution_providers(self.device)
        if self.device.type == "cuda" and self.manifest.build_flags.get("conv") == "winograd":
            warnings.warn(f"{self.folder} was built with Winograd convolutions for ONNX Runtime on a CPU; on a "
                          "GPU cuDNN's own are faster: rebuild with python -m idm_rt.build --conv direct",
                          stacklevel=1)
        check = self.manifest.build_flags.get(INT8_CHECK)
        if isinstance(check, dict) and check.get("passed") is False:
            warnings.warn(f"{self.folder}: its int8 engine failed the build's check against the float32 model, its "
                          f"images are not the model's:\n{check.get('report')}", stacklevel=1)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: optimiser notes are not the user's concern
        options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
        use_engine = self.manifest.backend == "onnxruntime"
        self._sessions = {}
        for key, entry in self.manifest.graphs.items():
            path = (artifact(self.folder, entry.engine, entry.engine_bytes) if use_engine and entry.engine
                    else artifact(self.folder, entry.onnx, entry.onnx_bytes))
            try:
                self._sessions[key] = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as e:  # noqa: BLE001 (onnxruntime raises its own exception types, one per failure kind)
                raise RuntimeError(f"ONNX Runtime cannot load {path}: {e}\n(a damaged file: rebuild the directory "
                                   f"with python -m idm_rt.build --force)") from None
        self._check_graphs()

    def _check_graphs(self) -> None:
        """ValueError when a graph file does not take and give what its manifest entry says (a file copied
        over from another graph or another network): found now, not as a KeyError in the first call."""
        for kind, bucket in graph_specs(self.buckets):
            key = graph_key(kind, bucket)
            session = self._sessions[key]
            got = ([m.name for m in session.get_inputs()], [m.name for m in session.get_outputs()])
            want = (graph_inputs(kind, self.config), graph_outputs(kind, self.config.levels))
            if sorted(got[0]) != sorted(want[0]) or got[1] != want[1]:
                raise ValueError(f"{self.folder}: graph {key} takes {got[0]} and gives {got[1]}, its manifest's "
                                 f"network needs {want[0]} and {want[1]}: the files do not match manifest.json; "
                                 "rebuild the directory with python -m idm_rt.build --force")

    def sampling(self) -> contextlib.AbstractContextManager:
        """On the CPU, torch keeps ``sampling_torch_threads`` (1) threads while sampling: between ONNX
        Runtime calls it only does the sampler's elementwise math, and its idle OpenMP workers would
        otherwise spin on the cores ONNX Runtime needs (``benchmarks/results/latency.json``: about
        10 % per image on a 2-core VM)."""
        if self.device.type == "cpu" and self.sampling_torch_threads is not None:
            return torch_threads(self.sampling_torch_threads)
        return contextlib.nullcontext()

    def run_graph(self, key: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        session = self._sessions[key]
        metas = {m.name: m for m in session.get_inputs()}
        typed = {name: t.to(self.device, _DTYPES[metas[name].type][1]).contiguous() for name, t in inputs.items()}
        if self._io_binding:
            return [o.float() for o in self._run_bound(session, metas, typed)]
        outs = session.run(None, {name: t.numpy() for name, t in typed.items()})
        return [torch.from_numpy(o).float() for o in outs]

    def _run_bound(self, session, metas, typed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """IO binding: inputs and preallocated outputs stay in torch's memory on the runner's device. Each
        output's shape is its graph's, every named dimension sized by :func:`dim_size` from the inputs."""
        where, device_id = self.device.type, self.device.index or 0
        binding = session.io_binding()
        dims: dict[str, int] = {}
        for name, t in typed.items():
            binding.bind_input(name, where, device_id, _DTYPES[metas[name].type][0], tuple(t.shape), t.data_ptr())
            dims.update({d: n for d, n in zip(metas[name].shape, t.shape) if isinstance(d, str)})
        outputs = []
        for meta in session.get_outputs():
            np_dtype, torch_dtype = _DTYPES[meta.type]
            shape = tuple(dim_size(d, dims) for d in meta.shape)
            out = torch.empty(shape, dtype=torch_dtype, device=self.device)
            binding.bind_output(meta.name, where, device_id, np_dtype, shape, out.data_ptr())
            outputs.append(out)
        if where == "cuda":
            # ONNX Runtime runs on its own CUDA stream: the inputs torch wrote on its stream must be ready
            # first (run_with_iobinding itself returns only once the outputs are written).
            torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return outputs


def import_onnxruntime():
    """The onnxruntime module, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("the onnxruntime backend needs the onnxruntime package: pip install 'idm-rt[onnx]' "
                          "(onnxruntime-gpu for CUDA)") from None
    return onnxruntime


def execution_providers(device: torch.device) -> list:
    """ONNX Runtime's providers for ``device``; a clear error when this machine cannot run there, so
    that it comes before any engine is built."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise ValueError(f"the onnxruntime backend runs on 'cpu' or 'cuda', not {device}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {str(device)!r} asked for, but this torch has no CUDA device")
    if "CUDAExecutionProvider" not in import_onnxruntime().get_available_providers():
        raise RuntimeError("ONNX Runtime has no CUDAExecutionProvider here; install onnxruntime-gpu or use "
                           "device='cpu'")
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


# torch_threads' shared state: how many blocks are open, and torch's count from before the first of them opened.
_pin_lock = threading.Lock()
_pins = 0
_unpinned = 0


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to ``n`` inside the block, and back to what it was outside every
    such block when the block ends, also when blocks of several Python threads overlap.

    torch keeps the count twice: one value per OS thread (OpenMP's) and one that threads started later
    begin with; ``torch.set_num_threads`` sets the caller's and the latter. Each thread saving and
    restoring what it saw would, once blocks overlap, save another block's ``n`` and restore it last,
    leaving every later thread at ``n``; so the count from before the first open block is kept once,
    under a lock, and each block restores that one."""
    global _pins, _unpinned
    with _pin_lock:
        if _pins == 0:
            _unpinned = torch.get_num_threads()
        _pins += 1
        torch.set_num_threads(n)
    try:
        yield
    finally:
        with _pin_lock:
            _pins -= 1
            torch.set_num_threads(_unpinned)
