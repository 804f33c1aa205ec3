"""ONNX Runtime artifacts: each graph saved after ONNX Runtime's provider-independent ("basic")
optimisations, so that sessions load a folded graph; the rest is applied when a session opens."""

from __future__ import annotations

from pathlib import Path


def optimise(onnx_path: Path, out_path: Path) -> None:
    """Write ``onnx_path`` optimised at ORT_ENABLE_BASIC (valid for every execution provider) to ``out_path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_path)
    options.log_severity_level = 3
    ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
