"""The backends, one descriptor each: what runs the network, where by default, in which precisions, what it needs,
and how it picks its tiles. Adding a backend is adding a descriptor here (and its runner); every command, the
service, the batch job and the engine build read them from :data:`BACKENDS` instead of testing names.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backend:
    """One backend.

    Attributes:
        name: how options and manifests spell it.
        default_device: where it runs unless told ("cpu", "cuda").
        devices: the device types it runs on.
        precisions: the U-Net precisions it runs in, its default first (engines: what a build makes).
        engine: it runs an engine directory built by ``python -m idm_rt.build`` (else a model, with torch).
        threads: its runner takes a CPU thread count (a service or batch worker gives it its CPUs).
        replays: its U-Net call can be autocast, compiled and replayed from CUDA graphs (:mod:`idm_rt.cuda_graph`).
        tiles: ``module:function(model, size, max_memory)`` picking the tile side of an output (None: untiled).
        device_check: ``module:function(device_type)`` raising where this machine cannot run it there.
        runner: ``module:attribute`` of its runner class (engines), imported when used.
        needs: the modules it needs to run, said in one line when missing; a tuple of names is met by any one of
            them (see :func:`require`).
        build_needs: the modules building its engines needs (with torch, for the export).
        engines_of: the backend whose engine directories it runs, where not its own (it builds none of its own).
    """

    name: str
    default_device: str
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    engine: bool
    tiles: str
    threads: bool = False
    replays: bool = False
    runner: str = ""
    device_check: str = ""
    needs: tuple[str | tuple[str, ...], ...] = ()
    build_needs: tuple[str, ...] = ()
    engines_of: str = ""

    @property
    def builds(self) -> str:
        """The backend whose engines it runs, and so whose engines a build for it makes."""
        return self.engines_of or self.name

    @property
    def gpu(self) -> bool:
        """It runs on GPUs only (a Ray worker of it takes a GPU by default)."""
        return self.devices == ("cuda",)

    def check_device(self, device_type: str) -> None:
        """ValueError when this backend cannot run on a device of ``device_type``."""
        if device_type not in self.devices:
            where = "a CUDA device" if self.gpu else " or ".join(self.devices)
            raise ValueError(f"backend={self.name!r} runs on {where}, not {device_type}")
        if self.device_check:
            _attribute(self.device_check)(device_type)

    def check_precision(self, precision: str) -> str:
        """``precision`` if this backend runs in it, else ValueError naming the ones it does."""
        if precision not in self.precisions:
            names = ", ".join(map(repr, self.precisions[:-1])) + f" or {self.precisions[-1]!r}"
            raise ValueError(f"{self.name} runs in {names}, not {precision!r}")
        return precision

    def choose_tile(self, model: Any, size: tuple[int, int], max_memory: int | None) -> int | None:
        """The tile side this backend picks for an output of ``size`` (H, W) within ``max_memory`` (None: untiled)."""
        return _attribute(self.tiles)(model, size, max_memory)

    @property
    def installed(self) -> bool:
        """Every module it needs to run is installed."""
        return first_missing(self.needs) is None

    def runner_class(self, check: bool = True) -> Any:
        """The runner class (ImportError naming what to install when a module is missing; ``check=False``: the class
        alone, for what it declares, with those modules absent)."""
        if check:
            require(self.needs, f"the {self.name} backend")
        return _attribute(self.runner)


def _attribute(path: str) -> Any:
    """What ``module:attribute`` names, imported."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


BACKENDS: dict[str, Backend] = {
    "torch": Backend(
        "torch",
        "cpu",
        ("cpu", "cuda", "mps", "xpu"),
        ("fp32", "fp16", "bf16"),
        engine=False,
        tiles="idm_rt.tile_size:choose_for",
        replays=True,
        needs=("torch",),
    ),
    "onnxruntime": Backend(
        "onnxruntime",
        "cpu",
        ("cpu", "cuda"),
        ("fp32", "fp16", "int8"),
        engine=True,
        tiles="idm_rt.backends.base:bucket_tile",
        threads=True,
        runner="idm_rt.backends.onnxruntime:OnnxRuntimeRunner",
        device_check="idm_rt.backends.onnxruntime:check_device",
        needs=("onnxruntime",),
        build_needs=("torch", "onnx", "onnxruntime"),
    ),
    "tensorrt": Backend(
        "tensorrt",
        "cuda",
        ("cuda",),
        ("fp16", "fp32"),
        engine=True,
        tiles="idm_rt.backends.base:bucket_tile",
        runner="idm_rt.backends.tensorrt:TensorRTRunner",
        needs=("tensorrt", ("torch", "cupy")),  # CUDA arrays: torch's where installed, else CuPy's
        build_needs=("torch", "onnx"),
    ),  # (export.tensorrt_build says the rest)
    # TensorRT's engines with the loop's arrays on the host: the lightest GPU install, no torch or CuPy
    "tensorrt_host": Backend(
        "tensorrt_host",
        "cuda",
        ("cuda",),
        ("fp16", "fp32"),
        engine=True,
        tiles="idm_rt.backends.base:bucket_tile",
        runner="idm_rt.backends.tensorrt_host:TensorRTHostRunner",
        needs=("tensorrt", "cuda.bindings"),
        build_needs=("torch", "onnx"),
        engines_of="tensorrt",
    ),
}
ENGINE_BACKENDS = tuple(name for name, b in BACKENDS.items() if b.engine)  # what runs engine directories
BUILD_BACKENDS = tuple(name for name in ENGINE_BACKENDS if BACKENDS[name].builds == name)  # what a build makes

INSTALL = {
    "torch": "pip install 'idm-rt[torch]' (the torch backend, engine builds and training need it)",
    "onnxruntime": "pip install onnxruntime (or onnxruntime-gpu)",
    "onnx": "pip install 'idm-rt[torch]'",
    "tensorrt": "pip install 'idm-rt[gpu]' (TensorRT 10.x or 11.x, on a machine with an NVIDIA GPU)",
    "cupy": "pip install 'idm-rt[gpu]' (CuPy, for CUDA arrays without torch)",
    "cuda.bindings": "pip install 'cuda-python>=12.8,<13' (or 'idm-rt[gpu]')",
}


def worker_gpus(backend: str | None, device: str | None) -> float:
    """GPUs a service or batch worker takes unless told: one where it runs on a CUDA device or its backend runs on
    GPUs only."""
    return 1.0 if (device or "").startswith("cuda") or (backend is not None and BACKENDS[backend].gpu) else 0.0


def runner_threads(backend: str | None, cpus: float) -> dict[str, int] | None:
    """Runner options giving a worker's runner its ``cpus`` as threads where the backend's runner takes a count
    (ONNX Runtime would otherwise take every core of the machine); None where it takes none."""
    return {"threads": max(1, round(cpus))} if backend is not None and BACKENDS[backend].threads else None


def backend(name: str) -> Backend:
    """The backend ``name``; ValueError naming the choices."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {tuple(BACKENDS)}")
    return BACKENDS[name]


def default_backend() -> str:
    """The backend a model runs on unless told: "torch" where torch is installed, else "onnxruntime" (the bundled
    model's shipped graphs, or engines built elsewhere)."""
    return "torch" if installed("torch") else "onnxruntime"


def require(modules: tuple[str | tuple[str, ...], ...], what: str, package: str | None = None) -> None:
    """ImportError in one line, naming the first of ``modules`` that is not installed and how to install it. A tuple
    of names is met by any one of them; its hint is its last name's (list the lightest install last).

    ``package``: the package whose import this check guards (``idm_rt.training``); the error then carries its name,
    as for a package that is missing, so that ``python -m`` of a module inside prints the message in one line
    instead of a traceback."""
    choices = first_missing(modules)
    if choices is not None:
        hint = INSTALL.get(choices[-1], f"pip install {choices[-1]}")
        raise ImportError(f"{what} needs {' or '.join(choices)}: {hint}", name=package)


def first_missing(modules: tuple[str | tuple[str, ...], ...]) -> tuple[str, ...] | None:
    """The first of ``modules`` (a name, or a tuple of names any one of which will do) not installed, as a tuple;
    None when all are."""
    for need in modules:
        choices = (need,) if isinstance(need, str) else need
        if not any(installed(module) for module in choices):
            return choices
    return None


def installed(module: str) -> bool:
    """``module`` can be imported (a dotted name whose parent package is absent is not)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
