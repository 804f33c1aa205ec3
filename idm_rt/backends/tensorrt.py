"""TensorRT 10.x runner: one deserialized engine and one execution context per graph, device buffers
from torch, an explicit CUDA stream, and optional CUDA-graph capture of the U-Net step.

Written against the TensorRT 10 Python API documentation (name-based tensors:
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``). Not run in this project's CI,
which has no GPU; see the README for what has been run on a GPU.
"""

from __future__ import annotations

import os

import torch

from .base import EngineRunner


def import_tensorrt():
    """The tensorrt module, or an ImportError saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ImportError("the tensorrt backend needs TensorRT 10.x: pip install tensorrt (on a machine with an "
                          "NVIDIA GPU and driver)") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise ImportError(f"TensorRT {trt.__version__} found; the tensorrt backend needs 10.x")
    return trt


class TensorRTRunner(EngineRunner):
    """Runs the serialized engines of a ``tensorrt`` engine directory.

    Args:
        folder: an engine directory built with ``--backend tensorrt`` on this GPU and TensorRT version.
        device: a CUDA device.
        cuda_graph: capture each U-Net bucket's call in a CUDA graph on first use and replay it
            (saves the per-layer launch overhead of the many small kernels at small tiles).
    """

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
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        torch.cuda.set_device(self.device)
        self._stream = torch.cuda.Stream(self.device)
        self._engines, self._contexts = {}, {}
        for key, entry in self.manifest.graphs.items():
            engine = runtime.deserialize_cuda_engine((self.folder / entry.engine).read_bytes())
            if engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {entry.engine}; rebuild with --force")
            self._engines[key] = engine
            self._contexts[key] = engine.create_execution_context()
        self._cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple] = {}

    def _io(self, key: str) -> tuple[list[str], list[str]]:
        engine = self._engines[key]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == self._trt.TensorIOMode.INPUT]
        return inputs, [n for n in names if n not in inputs]

    def _bind(self, key: str, inputs: dict[str, torch.Tensor]) -> tuple[dict, list[torch.Tensor]]:
        """Set shapes and addresses of torch-owned input and output buffers on the key's context."""
        engine, ctx = self._engines[key], self._contexts[key]
        names_in, names_out = self._io(key)
        typed = {}
        for name in names_in:
            dtype = _torch_dtype(engine.get_tensor_dtype(name))
            typed[name] = inputs[name].to(self.device, dtype).contiguous()
            ctx.set_input_shape(name, tuple(typed[name].shape))
            ctx.set_tensor_address(name, typed[name].data_ptr())
        outputs = []
        for name in names_out:
            out = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=_torch_dtype(engine.get_tensor_dtype(name)),
                              device=self.device)
            ctx.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        return typed, outputs

    def _launch(self, key: str) -> None:
        if not self._contexts[key].execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {key}")

    def run_graph(self, key: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        if self._cuda_graph and key.startswith("unet/"):
            outputs = self._replay(key, inputs)
        else:
            typed, outputs = self._bind(key, inputs)
            self._launch(key)
            for t in typed.values():
                t.record_stream(self._stream)
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return [o.float() for o in outputs]

    def _replay(self, key: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Copy into static buffers and replay the captured call; capture once per (key, batch)."""
        gkey = (key, next(iter(inputs.values())).shape[0])
        if gkey not in self._graphs:
            static_in, static_out = self._bind(key, inputs)
            self._launch(key)  # one plain run first, as TensorRT asks before capturing a context
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._launch(key)
            self._graphs[gkey] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[gkey]
        with torch.cuda.stream(self._stream):
            for name, buf in static_in.items():
                buf.copy_(inputs[name])
            graph.replay()
            return [o.clone() for o in static_out]


def _torch_dtype(trt_dtype) -> torch.dtype:
    import tensorrt as trt

    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int64: torch.int64,
            trt.int32: torch.int32}[trt_dtype]
