"""Engine runners: built graphs (ONNX Runtime, TensorRT) behind the torch model's interface."""

from __future__ import annotations

import os

import torch

from .base import EngineRunner
from .engine_dir import BACKENDS, Manifest, read_manifest

DEFAULT_DEVICES = {"onnxruntime": "cpu", "tensorrt": "cuda"}  # where each backend runs unless told


def load_runner(folder: str | os.PathLike, backend: str | None = None, device: str | torch.device | None = None,
                **options) -> EngineRunner:
    """A runner for an engine directory; ``backend`` defaults to the one it was built for, and
    ``device`` to "cuda" for TensorRT and "cpu" for ONNX Runtime. ``options`` go to the runner
    (``threads`` and ``sampling_torch_threads`` for onnxruntime, ``cuda_graph`` for tensorrt)."""
    backend = backend or read_manifest(folder).backend
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(folder, device or DEFAULT_DEVICES[backend], **options)
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        return TensorRTRunner(folder, device or DEFAULT_DEVICES[backend], **options)
    raise ValueError(f"unknown engine backend {backend!r}; choose from {BACKENDS}")


__all__ = ["EngineRunner", "Manifest", "read_manifest", "load_runner", "BACKENDS", "DEFAULT_DEVICES"]
