"""TensorRT engine building (10.x, 11.x) from the exported ONNX graphs, behind availability checks.

Follows the TensorRT 10 Python API documentation: ``Builder``, ``OnnxParser``, one optimisation
profile per engine (``set_shape(name, min, opt, max)``), a workspace limit
(``set_memory_pool_limit``), a timing cache shared by all engines of a directory, and
``build_serialized_network``. Float16 U-Nets are parsed into a strongly typed network so that the
float32 islands of the ONNX graph (normalisation, softmax) are kept as written; TF32 is off, so that
float32 layers keep float32 accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch

from idm_rt.backends.engine_dir import dim_size, inside
from idm_rt.backends.tensorrt import import_tensorrt
from idm_rt.buckets import Bucket
from idm_rt.fileio import atomic_write
from idm_rt.model.pieces import BLOCK, FEATURE_TILE

# The encoder's HR part runs in blocks of at most BLOCK + 2 (halo) pixels a side, reading at most as
# many feature rows and columns (scales >= 1); its features in LR tiles of FEATURE_TILE plus their
# receptive field on each side. So both profiles are bounded, and any image size runs.
BLOCK_MAX = BLOCK + 2
# bump when the builder's settings or profiles change (2: TF32 off for fp16 builds too; 3: the encoder's profiles
# bounded by its tiles and blocks): part of the engine key
VERSION = 3


def missing_requirements() -> list[str]:
    """What this machine lacks to build TensorRT engines (empty: nothing)."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("an NVIDIA GPU visible to torch (torch.cuda.is_available() is False)")
    try:
        import_tensorrt()  # the runner's version rule
    except ImportError as e:
        missing.append(str(e))
    return missing


def identity() -> dict[str, str]:
    """TensorRT version and GPU of this machine: engines are only valid for both."""
    trt = import_tensorrt()
    major, minor = torch.cuda.get_device_capability()
    return {
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
        "cuda": str(torch.version.cuda),
    }


def profile_shapes(kind: str, bucket: Bucket | None, onnx_path: Path, buckets: list[Bucket]) -> dict[str, tuple]:
    """(min, opt, max) shape per input. Static per-bucket U-Nets: the bucket's shape and batch range.
    The encoder's features: LR tiles up to :data:`~idm_rt.model.encoder.FEATURE_TILE` plus the receptive
    field on each side (at most one pixel per convolution); its blocks: up to :data:`BLOCK_MAX` pixels a side.
    The conditioner and the dynamic U-Net: any tile up to the largest bucket extents, 1 x 1 upwards
    (optimised for the largest bucket); the U-Net's batch up to the largest batch of any bucket."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    if kind == "encoder":
        side = FEATURE_TILE + 2 * sum(n.op_type == "Conv" for n in graph.node)
        return {"lr": ((1, 3, 1, 1), (1, 3, 64, 64), (1, 3, side, side))}
    if kind == "encoder_block":
        c = next(i for i in graph.input if i.name == "feat").type.tensor_type.shape.dim[1].dim_value
        table = ((1,), (BLOCK_MAX,), (BLOCK_MAX,))
        shapes = {
            "feat": ((1, c, 1, 1), (1, c, 64, 64), (1, c, BLOCK_MAX, BLOCK_MAX)),
            "rows": table,
            "cols": table,
            "rel_rows": table,
            "rel_cols": table,
            "cell": ((2,), (2,), (2,)),
        }
        return {i.name: shapes[i.name] for i in graph.input}  # the nearest upsampler has no rel_* or cell
    if kind == "unet":
        shapes = {}
        for inp in graph.input:
            rest = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim[1:])
            shapes[inp.name] = tuple((b,) + rest for b in (bucket.min_batch, bucket.max_batch, bucket.max_batch))
        return shapes
    top = max(buckets, key=lambda b: (b.height * b.width, b.height))
    extents = ((1, 1), (top.height, top.width), (max(b.height for b in buckets), max(b.width for b in buckets)))
    batch = (1, 1, 1) if kind == "conditioner" else (1, top.max_batch, max(b.max_batch for b in buckets))
    shapes = {}
    for inp in graph.input:  # every size follows from the image's: level i is ceil(n / 2^i)
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        shapes[inp.name] = tuple(
            tuple(dim_size(d, {"batch": b, "h_0": hw[0], "w_0": hw[1]}) for d in dims) for b, hw in zip(batch, extents)
        )
    return shapes


def manifest_flags(options: Any) -> dict[str, Any]:
    """Build settings recorded in the manifest: the workspace limit, strong typing (fp16) and TF32 (off)."""
    return {"workspace_mb": options.workspace_mb, "strongly_typed": options.precision == "fp16", "tf32": False}


def key_flags(options: Any) -> list:
    """Settings an engine's key depends on: the workspace limit and this builder's VERSION."""
    return [options.workspace_mb, VERSION]


def write_engine(
    onnx_path: Path, out_path: Path, kind: str, bucket: Bucket | None, precision: str, options: Any
) -> None:
    """The engine of one graph, profiled for ``options.buckets``, with the directory's shared timing cache."""
    profile = profile_shapes(kind, bucket, onnx_path, options.buckets)
    build_engine(
        onnx_path,
        out_path,
        profile,
        fp16=precision == "fp16",
        workspace_mb=options.workspace_mb,
        timing_cache=inside(options.out, "tensorrt/timing.cache"),
    )


def build_engine(
    onnx_path: Path, engine_path: Path, profile: dict[str, tuple], fp16: bool, workspace_mb: int, timing_cache: Path
) -> None:
    """Parse ``onnx_path``, build a serialized engine with one optimisation profile, write it to
    ``engine_path``; the timing cache is read first and written back (atomically) after the build."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if fp16 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.clear_flag(trt.BuilderFlag.TF32)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    cache = config.create_timing_cache(timing_cache.read_bytes()) if timing_cache.exists() else None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):  # none yet, or another GPU's
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path.name} (see its log above)")
    engine_path.write_bytes(serialized)
    timings = config.get_timing_cache()
    if timings is not None:
        atomic_write(timing_cache, lambda tmp: Path(tmp).write_bytes(timings.serialize()))
