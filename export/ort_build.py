"""ONNX Runtime artifacts: each graph saved after ONNX Runtime's provider-independent ("basic")
optimisations, so that sessions load a folded graph; the rest is applied when a session opens.

An engine builder of :data:`export.builder.ENGINE_BUILDERS`, as :mod:`export.tensorrt_build`: ``missing_requirements``,
``identity``, ``manifest_flags``, ``key_flags`` and ``write_engine``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from idm_rt.buckets import Bucket


def missing_requirements() -> list[str]:
    """Nothing beyond ONNX Runtime itself (checked before the export): its artifacts build on any machine."""
    return []


def identity() -> dict[str, str]:
    """The ONNX Runtime version the artifacts were optimised with."""
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


def manifest_flags(options: Any) -> dict[str, Any]:
    """Build settings of its own recorded in the manifest: none."""
    return {}


def key_flags(options: Any) -> list:
    """Settings of its own that an artifact's key depends on: none."""
    return []


def write_engine(
    onnx_path: Path, out_path: Path, kind: str, bucket: Bucket | None, precision: str, options: Any
) -> None:
    """The artifact of one graph: the graph optimised (see :func:`optimise`)."""
    optimise(onnx_path, out_path)


def optimise(onnx_path: Path, out_path: Path) -> None:
    """Write ``onnx_path`` optimised at ORT_ENABLE_BASIC (valid for every execution provider) to ``out_path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_path)
    options.log_severity_level = 3
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
