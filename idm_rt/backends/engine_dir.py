"""An engine directory as built by ``python -m idm_rt.build``: ``manifest.json``, the ONNX graphs and
their backend artifacts; plus the tensor names the graphs are exported with.

Layout (after TensorRT's demo/Diffusion)::

    DIR/manifest.json            model hash, precision, buckets, files, backend identity, flags
    DIR/onnx/encoder.onnx        LR -> condition image at the HR size (one graph, dynamic sizes)
    DIR/onnx/conditioner_<bucket>.onnx, DIR/onnx/unet_<bucket>.onnx
    DIR/<backend>/...            optimised ONNX (onnxruntime) or serialized engines (tensorrt)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..buckets import Bucket
from ..config import IDMConfig
from ..model import Conditioning

MANIFEST_NAME = "manifest.json"
FORMAT = "idm-rt-engines/1"

# Graph inputs and outputs, shared by the exporter and the runners.
ENCODER_INPUTS = ("lr", "rows", "cols")
CONDITIONER_INPUTS = ("cond", "p")


def conditioning_names(levels: int) -> list[str]:
    """Names of the flattened conditioning tensors for U-Net levels 1..L-1: shifts, then a1, then a2."""
    return [f"{kind}_{i}" for kind in ("shift", "a1", "a2") for i in range(1, levels)]


def unet_inputs(levels: int) -> list[str]:
    return ["x_t", "cond", *conditioning_names(levels), "g"]


def graph_outputs(kind: str, levels: int) -> list[str]:
    """Output names of graph ``kind`` (encoder / conditioner / unet), in the exported graph's order."""
    return {"encoder": ["cond"], "conditioner": conditioning_names(levels), "unet": ["eps"]}[kind]


def flatten_conditioning(c: Conditioning) -> list[torch.Tensor]:
    """Conditioning -> tensors in :func:`conditioning_names` order."""
    return [*c.shifts[1:], *c.a1[1:], *c.a2[1:]]


def unflatten_conditioning(cond: torch.Tensor, tensors: list[torch.Tensor]) -> Conditioning:
    """Inverse of :func:`flatten_conditioning`."""
    n = len(tensors) // 3
    return Conditioning(cond, [None, *tensors[:n]], [None, *tensors[n:2 * n]], [None, *tensors[2 * n:]])


def graph_key(kind: str, bucket: Bucket | None = None) -> str:
    """``"encoder"``, ``"conditioner/<bucket>"`` or ``"unet/<bucket>"``: the manifest's graph ids."""
    return kind if bucket is None else f"{kind}/{bucket.name}"


def graph_specs(buckets: list[Bucket]) -> list[tuple[str, Bucket | None]]:
    """(kind, bucket) of every graph of an engine directory: the encoder once, then the conditioner
    and the U-Net per bucket."""
    return [("encoder", None)] + [(kind, b) for b in buckets for kind in ("conditioner", "unet")]


@dataclass
class GraphEntry:
    """One graph of the directory: its ONNX file, the backend artifact built from it, and the keys
    that say what they were built from (a changed key means rebuild)."""

    onnx: str
    precision: str
    onnx_key: str
    engine: str | None = None
    engine_key: str | None = None
    onnx_bytes: int | None = None  # file sizes when written: a truncated copy is caught before it is loaded
    engine_bytes: int | None = None


@dataclass
class Manifest:
    """What ``manifest.json`` holds; paths are relative to the directory."""

    model_hash: str
    model_path: str
    network: dict[str, Any]
    max_scale: float
    precision: str
    backend: str
    opset: int
    buckets: list[Bucket]
    graphs: dict[str, GraphEntry]
    identity: dict[str, Any] = field(default_factory=dict)
    build_flags: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)  # the model's recommended sampling settings

    @property
    def config(self) -> IDMConfig:
        return IDMConfig.from_dict(self.network)

    def to_json(self) -> str:
        d = {"format": FORMAT, **self.__dict__}
        d["buckets"] = [b.to_dict() | {"name": b.name} for b in self.buckets]
        d["graphs"] = {k: g.__dict__ for k, g in self.graphs.items()}
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        """Parse manifest.json; fields this version does not know are ignored, missing ones named."""
        d = json.loads(text)
        if not isinstance(d, dict) or d.pop("format", None) != FORMAT:
            raise ValueError(f"not an idm-rt engine manifest (format {FORMAT!r} expected)")
        d = _known_fields(cls, d, "the manifest")
        if not isinstance(d["buckets"], list) or not isinstance(d["graphs"], dict):
            raise ValueError("its buckets must be a list and its graphs an object")
        if not d["buckets"]:
            raise ValueError("it lists no buckets")
        d["buckets"] = [Bucket.from_dict(b) for b in d["buckets"]]
        d["graphs"] = {k: GraphEntry(**_known_fields(GraphEntry, g, f"graph {k!r}")) for k, g in d["graphs"].items()}
        return cls(**d)


def _known_fields(cls, d: object, what: str) -> dict:
    """The entries of ``d`` that dataclass ``cls`` has; ValueError naming the required ones missing."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} is not a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    absent = [n for n in required if n not in d]
    if absent:
        raise ValueError(f"{what} has no {', '.join(absent)}")
    return {k: v for k, v in d.items() if k in fields}


def artifact(folder: str | os.PathLike, file: str, size: int | None) -> Path:
    """``folder/file``, checked to exist and to have the size the manifest recorded (a partial copy
    otherwise fails later inside the backend with a parser error)."""
    path = Path(folder) / file
    if not path.is_file():
        raise FileNotFoundError(f"{path}, listed in {Path(folder) / MANIFEST_NAME}, is missing; copy the whole "
                                f"directory again or rebuild it with python -m idm_rt.build")
    if size is not None and path.stat().st_size != size:
        raise ValueError(f"{path} has {path.stat().st_size} bytes, its build wrote {size}: an incomplete copy or "
                         f"a changed file; copy it again or rebuild with python -m idm_rt.build --force")
    return path


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """The manifest of an engine directory, with a clear error when there is none or it is unreadable."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not an engine directory (no {MANIFEST_NAME}); build one with "
                                f"`python -m idm_rt.build --out {folder}`")
    try:
        return Manifest.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is unreadable: {e}") from e
