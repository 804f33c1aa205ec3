"""Engine runners: built graphs (ONNX Runtime, TensorRT) behind the torch model's interface, and the registry of
every backend (:mod:`.registry`)."""

from __future__ import annotations

import inspect
import os

from ..devices import Device
from . import registry
from .base import EngineRunner
from .engine_dir import Manifest, read_manifest
from .registry import BACKENDS, BUILD_BACKENDS, ENGINE_BACKENDS, Backend, backend


def load_runner(
    folder: str | os.PathLike, backend: str | None = None, device: str | Device | None = None, **options
) -> EngineRunner:
    """A runner for an engine directory; ``backend`` defaults to the one it was built for (or, where what that one
    needs is not installed, the first other backend running its engines whose needs are: tensorrt_host for
    tensorrt without torch or CuPy), and ``device`` to the backend's own (:data:`~.registry.BACKENDS`).
    ``options`` go to the runner (``threads`` for onnxruntime, ``cuda_graph`` for tensorrt)."""
    chosen = registry.backend(backend) if backend else _default_backend(read_manifest(folder).backend)
    if not chosen.engine:
        raise ValueError(f"{chosen.name} runs a model, not engines; choose from {ENGINE_BACKENDS}")
    runner = chosen.runner_class()
    takes = [name for name in inspect.signature(runner.__init__).parameters if name not in ("self", "folder", "device")]
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise ValueError(
            f"unknown runner option(s) {', '.join(unknown)} for {chosen.name}; it takes {', '.join(takes) or 'none'}"
        )
    return runner(folder, device or chosen.default_device, **options)


def _default_backend(built: str) -> Backend:
    """The backend a directory built for ``built`` runs on by default."""
    choices = [registry.backend(built)] + [b for b in BACKENDS.values() if b.engines_of == built]
    return next((b for b in choices if b.installed), choices[0])


__all__ = [
    "EngineRunner",
    "Manifest",
    "read_manifest",
    "load_runner",
    "BACKENDS",
    "BUILD_BACKENDS",
    "ENGINE_BACKENDS",
    "Backend",
    "backend",
]
