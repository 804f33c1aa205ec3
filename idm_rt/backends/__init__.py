"""Engine runners: built graphs (ONNX Runtime, TensorRT) behind the torch model's interface, and the registry of
every backend (:mod:`.registry`)."""

from __future__ import annotations

import os

from ..devices import Device
from . import registry
from .base import EngineRunner
from .engine_dir import Manifest, read_manifest
from .registry import BACKENDS, ENGINE_BACKENDS, Backend, backend


def load_runner(folder: str | os.PathLike, backend: str | None = None, device: str | Device | None = None,
                **options) -> EngineRunner:
    """A runner for an engine directory; ``backend`` defaults to the one it was built for, and
    ``device`` to the backend's own (:data:`~.registry.BACKENDS`). ``options`` go to the runner (``threads`` for
    onnxruntime, ``cuda_graph`` for tensorrt)."""
    chosen = registry.backend(backend or read_manifest(folder).backend)
    if not chosen.engine:
        raise ValueError(f"{chosen.name} runs a model, not engines; choose from {ENGINE_BACKENDS}")
    return chosen.runner_class()(folder, device or chosen.default_device, **options)


__all__ = ["EngineRunner", "Manifest", "read_manifest", "load_runner", "BACKENDS", "ENGINE_BACKENDS", "Backend",
           "backend"]
