"""An engine directory as built by ``python -m idm_rt.build``: ``manifest.json``, the ONNX graphs and
their backend artifacts; plus the tensor names the graphs are exported with.

Layout (after TensorRT's demo/Diffusion)::

    DIR/manifest.json            model hash, precision, buckets, files, backend identity, flags
    DIR/onnx/encoder.onnx        LR -> LR features (dynamic sizes)
    DIR/onnx/encoder_block.onnx  LR features -> one block of the condition image at the HR size
    DIR/onnx/conditioner.onnx, DIR/onnx/unet_dynamic.onnx, DIR/onnx/unet_<bucket>.onnx
    DIR/<backend>/...            optimised ONNX (onnxruntime) or serialized engines (tensorrt)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..buckets import Bucket
from ..config import IDMConfig, check_max_scale
from ..cost import StageFlops
from ..sampling import SamplingSettings, presets_from_dict
from .registry import BACKENDS, BUILD_BACKENDS, ENGINE_BACKENDS, installed

MANIFEST_NAME = "manifest.json"
# 2: one conditioner and one dynamic U-Net graph for every size, no padding; 3: the encoder's HR part
# in blocks (encoder_block), memory bounded by the block
MANIFEST_FORMAT = "idm-rt-engines/3"

# The graphs of a directory: the encoder's two parts and the conditioner once each (dynamic sizes:
# tiles of the LR image, blocks of the HR condition image, tiles at their own size), the U-Net once with
# dynamic sizes and once per bucket with the bucket's static shape (the exact fits; ONNX Runtime's
# CPU graphs may use Winograd convolutions).
KINDS = ("encoder", "encoder_block", "conditioner", "unet_dynamic", "unet")
# any engine's precision
ENGINE_PRECISIONS = tuple(dict.fromkeys(p for name in ENGINE_BACKENDS for p in BACKENDS[name].precisions))


def conditioning_names(levels: int) -> list[str]:
    """Names of the flattened conditioning tensors for U-Net levels 1..L-1: shifts, then a1, then a2."""
    return [f"{kind}_{i}" for kind in ("shift", "a1", "a2") for i in range(1, levels)]


def table_names(levels: int) -> list[str]:
    """Names of the implicit layers' query tables (:func:`idm_rt.model.tables.query_tables_for`),
    deepest layer first: the one from level i to level i - 1 reads rows_i, rel_rows_i, cols_i, rel_cols_i."""
    return [f"{name}_{i}" for i in range(levels - 1, 0, -1) for name in ("rows", "rel_rows", "cols", "rel_cols")]


def graph_inputs(kind: str, config: IDMConfig) -> list[str]:
    """Input names of graph ``kind``, in the exported graph's order."""
    if kind == "encoder":
        return ["lr"]
    if kind == "encoder_block":
        implicit = config.encoder_upsampler == "implicit"
        return ["feat", "rows", "cols"] + (["rel_rows", "rel_cols", "cell"] if implicit else [])
    if kind == "conditioner":
        return ["cond", "p"]
    names = ["x_t", "cond", *conditioning_names(config.levels), "g"]
    return names + table_names(config.levels) if kind == "unet_dynamic" else names


def graph_outputs(kind: str, levels: int) -> list[str]:
    """Output names of graph ``kind``, in the exported graph's order."""
    return {
        "encoder": ["feat"],
        "encoder_block": ["cond"],
        "conditioner": conditioning_names(levels),
        "unet": ["eps"],
        "unet_dynamic": ["eps"],
    }[kind]


def dim_size(dim: str | int | None, known: dict[str, int]) -> int:
    """One dimension of a graph's input or output from the sizes ``known`` by name (the inputs' own): a
    fixed size stays; a name ``known`` has takes its size; ``h_i`` and ``w_i`` (U-Net level i, as
    the export names them) are ``ceil(h_0 / 2^i)`` and ``ceil(w_0 / 2^i)``. ValueError
    for any other name (a graph this version does not know how to size)."""
    if isinstance(dim, int) and dim > 0:
        return dim
    if isinstance(dim, str) and dim in known:
        return known[dim]
    level = re.fullmatch(r"([hw])_(\d+)", dim) if isinstance(dim, str) else None
    if level is None or f"{level[1]}_0" not in known:
        raise ValueError(
            f"cannot size a graph dimension {dim!r} from {sorted(known)}: the graph was not written "
            "by this version's export; rebuild the directory with python -m idm_rt.build --force"
        )
    return -(-known[f"{level[1]}_0"] // 2 ** int(level[2]))


def graph_key(kind: str, bucket: Bucket | None = None) -> str:
    """``"encoder"``, ``"encoder_block"``, ``"conditioner"``, ``"unet_dynamic"`` or ``"unet/<bucket>"``: the
    manifest's graph ids."""
    return kind if bucket is None else f"{kind}/{bucket.name}"


def graph_specs(buckets: list[Bucket], static: bool = True) -> list[tuple[str, Bucket | None]]:
    """(kind, bucket) of every graph of an engine directory: the encoder's two parts, the conditioner
    and the dynamic U-Net once, then (``static``) the U-Net per bucket."""
    return [(kind, None) for kind in KINDS[:-1]] + [("unet", b) for b in buckets if static]


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
    """What ``manifest.json`` holds; paths are relative to the directory, and each is the one name a
    build writes for its graph (:func:`artifact_name`), so that none leads outside the directory."""

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
    static: bool = True  # the U-Net also in a static graph per bucket (False: every call on the dynamic graph)
    defaults: dict[str, Any] = field(default_factory=dict)  # the model's recommended sampling settings
    presets: dict[str, Any] = field(default_factory=dict)  # its other named ones (idm_rt.sampling.presets_from_dict)
    pending: list[str] = field(default_factory=list)  # files a build is writing (removed by the next one)
    # FLOPs per pixel of each stage (idm_rt.cost.StageFlops), counted by the build: a service estimates a request's
    # work from them without torch; empty in directories built before they were recorded
    stage_flops: dict[str, float] = field(default_factory=dict)

    @property
    def config(self) -> IDMConfig:
        return IDMConfig.from_dict(self.network)

    @property
    def recommended(self) -> SamplingSettings | None:
        """The model's recommended sampling settings, or None."""
        return SamplingSettings.from_dict(self.defaults, "defaults") if self.defaults else None

    @property
    def named_presets(self) -> dict[str, SamplingSettings]:
        """The model's other named sampling settings."""
        return presets_from_dict(self.presets, "presets")

    def graph_files(self) -> list[str]:
        """The graph and artifact files of the directory's graphs."""
        return [f for g in self.graphs.values() for f in (g.onnx, g.engine) if f]

    def files(self) -> list[str]:
        """Every file of the directory this manifest lists: its graphs' and the pending writes."""
        return self.graph_files() + list(self.pending)

    def to_json(self) -> str:
        d = {"format": MANIFEST_FORMAT, **self.__dict__}
        d["buckets"] = [b.to_dict() | {"name": b.name} for b in self.buckets]
        d["graphs"] = {k: g.__dict__ for k, g in self.graphs.items()}
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse and check manifest.json: every field of the right type and range, every graph one this
        directory's buckets have, every file the name a build gives it. Fields this version does not
        know are ignored, missing ones named."""
        d = json.loads(text)
        found = d.pop("format", None) if isinstance(d, dict) else None
        if isinstance(found, str) and found.startswith("idm-rt-engines/") and found != MANIFEST_FORMAT:
            raise ValueError(
                f"it was written by another version of idm-rt (format {found!r}; this one reads "
                f"{MANIFEST_FORMAT!r}): build it again with python -m idm_rt.build and the same --out, "
                "which replaces the files it lists"
            )
        if found != MANIFEST_FORMAT:
            raise ValueError(f"not an idm-rt engine manifest of this version (format {MANIFEST_FORMAT!r} expected)")
        d = _known_fields(cls, d, "the manifest")
        for name, kind in (
            ("model_hash", str),
            ("model_path", str),
            ("network", dict),
            ("backend", str),
            ("precision", str),
            ("buckets", list),
            ("graphs", dict),
            ("identity", dict),
            ("build_flags", dict),
            ("complete", bool),
            ("static", bool),
            ("defaults", dict),
            ("presets", dict),
            ("pending", list),
            ("stage_flops", dict),
        ):
            if name in d and not isinstance(d[name], kind):
                raise ValueError(f"its {name} must be a JSON {_JSON_NAMES[kind]}, got {d[name]!r}")
        if not isinstance(d["opset"], int) or isinstance(d["opset"], bool):
            raise ValueError(f"its opset must be an integer, got {d['opset']!r}")
        if d["backend"] not in BUILD_BACKENDS:
            raise ValueError(f"its backend must be one of {BUILD_BACKENDS}, got {d['backend']!r}")
        if d["precision"] not in BACKENDS[d["backend"]].precisions:
            raise ValueError(
                f"its precision must be one of {BACKENDS[d['backend']].precisions} for "
                f"{d['backend']}, got {d['precision']!r}"
            )
        d["max_scale"] = check_max_scale(d["max_scale"])
        check_config_size(IDMConfig.from_dict(d["network"]))
        if not 1 <= len(d["buckets"]) <= MAX_BUCKETS:
            raise ValueError(f"it lists {len(d['buckets'])} buckets; 1..{MAX_BUCKETS} expected")
        d["buckets"] = [Bucket.from_dict(b) for b in d["buckets"]]
        d["graphs"] = {
            k: _graph_entry(k, g, d["buckets"], d["backend"], d.get("static", True)) for k, g in d["graphs"].items()
        }
        if d.get("stage_flops"):
            StageFlops.from_dict(d["stage_flops"])
        for f in d.get("pending", []):
            if not isinstance(f, str) or not BUILT_FILE.fullmatch(f):
                raise ValueError(f"its pending file {f!r} is not a file a build writes")
        manifest = cls(**d)
        _ = manifest.recommended, manifest.named_presets  # checked here, not when an image is sampled
        return manifest


_JSON_NAMES = {str: "string", dict: "object", list: "array", bool: "true or false"}
MAX_BUCKETS = 64


def check_config_size(config: IDMConfig) -> None:
    """The network-size guard (:func:`idm_rt.model.idm.check_size`) where torch is installed; a runner without torch
    builds no network from a manifest, it only opens the graph files the manifest names."""
    if installed("torch"):
        from ..model.idm import check_size

        check_size(config)


PARTIAL = ".partial"  # suffix of a file being written, renamed into place when complete
INT8_CHECK = "int8_check"  # build_flags entry: an int8 build's check against the float32 model (export.int8_check)


def artifact_name(key: str, backend: str | None = None) -> str:
    """The file a build writes for graph ``key``: its ONNX graph (``backend`` None) or the backend's
    artifact (optimised ONNX for onnxruntime, a serialized engine for tensorrt)."""
    name = key.replace("/", "_")
    if backend is None:
        return f"onnx/{name}.onnx"
    return f"{backend}/{name}{'.plan' if backend == 'tensorrt' else '.onnx'}"


# Every name :func:`artifact_name` gives (for any bucket; with the conditioner per bucket of format 1),
# and the temp name of each while it is written.
_NAME = r"(encoder(_block)?|conditioner(_\d+x\d+_b\d+-\d+)?|unet_dynamic|unet_\d+x\d+_b\d+-\d+)"
BUILT_FILE = re.compile(rf"((onnx|onnxruntime)/{_NAME}\.onnx|tensorrt/{_NAME}\.plan)({re.escape(PARTIAL)})?")


def _graph_entry(key: object, d: object, buckets: list[Bucket], backend: str, static: bool) -> GraphEntry:
    """A graph of the manifest, checked: a key of these buckets, typed fields, the files a build names."""
    if key not in {graph_key(*spec) for spec in graph_specs(buckets, static)}:
        raise ValueError(f"it lists a graph {key!r} that its buckets do not have")
    entry = GraphEntry(**_known_fields(GraphEntry, d, f"graph {key!r}"))
    for name, kinds in (
        ("onnx", (str,)),
        ("precision", (str,)),
        ("onnx_key", (str,)),
        ("engine", (str, type(None))),
        ("engine_key", (str, type(None))),
        ("onnx_bytes", (int, type(None))),
        ("engine_bytes", (int, type(None))),
    ):
        value = getattr(entry, name)
        if not isinstance(value, kinds) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
            raise ValueError(f"graph {key!r}: {name} {value!r} is not of the expected type")
    if entry.precision not in ENGINE_PRECISIONS:
        raise ValueError(f"graph {key!r}: precision {entry.precision!r} is not one of {ENGINE_PRECISIONS}")
    if entry.onnx != artifact_name(key) or entry.engine not in (None, artifact_name(key, backend)):
        raise ValueError(
            f"graph {key!r}: its files {entry.onnx!r}, {entry.engine!r} are not the ones a build writes "
            f"({artifact_name(key)!r}, {artifact_name(key, backend)!r})"
        )
    return entry


def _known_fields(cls, d: object, what: str) -> dict:
    """The entries of ``d`` that dataclass ``cls`` has; ValueError naming the required ones missing."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} is not a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [
        n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    absent = [n for n in required if n not in d]
    if absent:
        raise ValueError(f"{what} has no {', '.join(absent)}")
    return {k: v for k, v in d.items() if k in fields}


def inside(folder: str | os.PathLike, file: str) -> Path:
    """``folder/file`` after checking that it stays inside ``folder``: a relative path without ``..``
    whose parts below ``folder`` are no symbolic links (a link would lead reads, writes and deletes
    elsewhere). ValueError naming the path otherwise."""
    base = Path(folder)
    rel = Path(file)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"{file!r} is not a path inside the engine directory {folder}")
    path = base
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise ValueError(
                f"{path} is a symbolic link; an engine directory holds its own files only (copy the "
                f"target in, or build into another folder)"
            )
    if not path.resolve().is_relative_to(base.resolve()):
        raise ValueError(f"{path} resolves outside the engine directory {folder}")
    return path


def artifact(folder: str | os.PathLike, file: str, size: int | None) -> Path:
    """``folder/file``, checked to stay inside the folder (:func:`inside`), to exist and to have the size
    the manifest recorded (a partial copy otherwise fails later inside the backend with a parser error)."""
    path = inside(folder, file)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}, listed in {Path(folder) / MANIFEST_NAME}, is missing; copy the whole "
            f"directory again or rebuild it with python -m idm_rt.build"
        )
    if size is not None and path.stat().st_size != size:
        raise ValueError(
            f"{path} has {path.stat().st_size} bytes, its build wrote {size}: an incomplete copy or "
            f"a changed file; copy it again or rebuild with python -m idm_rt.build --force"
        )
    return path


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """The manifest of an engine directory, with a clear error when there is none or it is unreadable."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{folder} is not an engine directory (no {MANIFEST_NAME}); build one with "
            f"`python -m idm_rt.build --out {folder}`"
        )
    try:
        path = inside(folder, MANIFEST_NAME)
        return Manifest.from_json(path.read_text())
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:  # (deeply nested JSON)
        raise ValueError(f"{path} is unreadable: {e}") from e
