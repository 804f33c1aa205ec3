"""The engine cache: building a model's engine directory from a program (what
``Upscaler.from_pretrained(model, backend=...)`` asks for, through its one lazy call into this package),
and the rules the command line shares with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

import idm_rt
from idm_rt.backends.registry import BACKENDS, require
from idm_rt.buckets import DEFAULT_TILES, plan_buckets


def require_packages(backend: str) -> None:
    """ImportError naming the package a build for ``backend`` needs and how to install it, when one is missing."""
    require(BACKENDS[backend].build_needs, f"building {backend} engines")


def auto_conv(backend: str, precision: str, device: str = "cpu") -> str:
    """``--conv auto``: Winograd convolutions only where they pay, ONNX Runtime in float32 on a CPU."""
    return "winograd" if (backend, precision, device) == ("onnxruntime", "fp32", "cpu") else "direct"


def cache_dir() -> Path:
    """Where :func:`build_engines` puts engine directories by default: ``$IDM_RT_CACHE``, else
    ``$XDG_CACHE_HOME/idm_rt`` (``~/.cache/idm_rt``)."""
    if os.environ.get("IDM_RT_CACHE"):
        return Path(os.environ["IDM_RT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "idm_rt"


def build_engines(
    model_path: str | os.PathLike | None,
    backend: str,
    precision: str,
    device: str | torch.device = "cpu",
    out: str | os.PathLike | None = None,
    tiles: Sequence[int] = DEFAULT_TILES,
) -> Path:
    """Build (or reuse, as the manifest allows) the engine directory of a model with the default
    buckets, as ``python -m idm_rt.build`` would, for ``device`` (TensorRT builds on it), and
    return it; progress goes to stderr.

    ``out`` defaults to a folder of :func:`cache_dir` named for the model, backend, precision and
    convolution mode (and the GPU, for TensorRT). Raises RuntimeError naming what is missing when
    TensorRT cannot build here.
    """
    require_packages(backend)
    from .builder import ENGINE_BUILDERS, BuildOptions, build

    missing = ENGINE_BUILDERS[backend].missing_requirements()
    if missing:
        raise RuntimeError(
            f"backend={backend!r} builds its engines on the machine that runs them, and this one lacks "
            + "; ".join(missing)
            + f". Use backend='onnxruntime', or build there with python -m idm_rt.build --backend {backend}"
        )
    model_path = Path(model_path) if model_path is not None else idm_rt.DEFAULT_MODEL
    device = torch.device(str(device))
    conv = auto_conv(backend, precision, device.type)
    if out is None:
        where = hashlib.sha256(str(model_path.resolve()).encode()).hexdigest()[:8]
        name = f"{model_path.stem}-{where}-{backend}-{precision}-{conv}"
        if BACKENDS[backend].gpu:  # engines hold for one GPU model: a cache shared by machines keeps one per GPU
            name += "-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
        out = cache_dir() / "engines" / name
    options = BuildOptions(model_path, Path(out), precision, backend, plan_buckets(tiles=tiles), conv=conv)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        build(options, lambda line: None if line.endswith(" reused") else print(line, file=sys.stderr))
    return Path(out)
