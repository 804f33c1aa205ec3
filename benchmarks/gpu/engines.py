"""The engine backends installed on the GPU machine (ONNX Runtime's CUDA provider, TensorRT): built from the
model, checked graph by graph and image against the torch backend, and one U-Net call timed."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import torch

import idm_rt

from .common import DEVICE, check, log, median_ms, release_style

# Max abs difference of an engine's image from the torch backend's (same seed, [0, 1] images).
IMAGE_TOL = {"fp32": 2e-3, "fp16": 5e-2}


def engine_variants() -> list[tuple[str, str, dict]]:
    """(backend, precision, runner options) of the engine backends installed here."""
    variants = []
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            variants.append(("onnxruntime", "fp32", {}))
    except ImportError:
        pass
    if importlib.util.find_spec("tensorrt") is not None:
        variants += [("tensorrt", "fp32", {}), ("tensorrt", "fp16", {}), ("tensorrt", "fp16", {"cuda_graph": True})]
    return variants


@torch.no_grad()
def check_engines(results: dict, model: idm_rt.IDM, size: int, reps: int, device: str = DEVICE,
                  variants: list[tuple[str, str, dict]] | None = None,
                  timer: Callable[[Callable[[], object], int], float] = median_ms) -> None:
    """The engine backends installed here (or ``variants``), built from this model for one size x size
    bucket: ONNX Runtime's CUDA provider (fp32) and TensorRT (fp32, fp16, fp16 with CUDA graphs). Per
    variant: ``idm_rt.export.parity``'s relative error of every graph, the largest difference of a whole
    image from the torch backend's (same seed), and one U-Net call's time (``timer``) against our eager
    fp32 call (both torch references with TF32 off, as the fp32 engines are built)."""
    import copy
    import tempfile

    import numpy as np

    from idm_rt.backends import load_runner
    from idm_rt.backends.engine_dir import graph_inputs, graph_key
    from idm_rt.buckets import Bucket
    from idm_rt.build import main as build
    from idm_rt.export.graphs import graph_module, sample_inputs
    from idm_rt.export.parity import LIMITS, graph_errors

    variants = engine_variants() if variants is None else variants
    results["engine_backends"] = sorted({backend for backend, _, _ in variants})
    if not variants:
        log("neither onnxruntime-gpu nor tensorrt is installed here: no engines to check")
        return
    release_style(model, False)
    cpu_model, bucket = copy.deepcopy(model).cpu(), Bucket(size, size)
    args = tuple(t.to(device) for t in sample_inputs(cpu_model, "unet", bucket))
    feeds, key = dict(zip(graph_inputs("unet", model.config), args)), graph_key("unet", bucket)
    net = graph_module(model, "unet")
    rng = np.random.default_rng(0)
    # an exact fit of the bucket (its static graph) and a size no bucket has (the dynamic graph)
    images = [rng.random((size // 2, size // 2, 3), dtype=np.float32),
              rng.random((size // 2 - 5, size // 2 - 3, 3), dtype=np.float32)]
    kw = dict(scale=2, steps=4, seed=0, progress=False, sampler="dpmpp_2m", init="noise")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # as in the fp32 engines
    try:
        base = timer(lambda: net(*args), reps)
        want = idm_rt.Upscaler(model, device=device, tile=0).upscale(images, **kw)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = idm_rt.save_model(cpu_model, Path(tmp) / "model")
        status = {}
        for backend, precision, options in variants:
            name = f"{backend} {precision}" + (" + CUDA graphs" if options.get("cuda_graph") else "")
            out = Path(tmp) / f"{backend}-{precision}"
            if (backend, precision) not in status:
                status[backend, precision] = build(["--engine", precision, "--backend", backend, "--model",
                                                    str(model_dir), "--out", str(out), "--tile", str(size),
                                                    "--conv", "direct"])
            if status[backend, precision] != 0:
                check(results, f"{name}: build (exit status {status[backend, precision]})", math.nan, 1)
                continue
            runner = load_runner(out, backend, device, **options)
            for graph, graph_precision, case, err in graph_errors(runner, cpu_model):
                check(results, f"{name}: {graph} {case} (export.parity)", err, LIMITS[graph_precision])
            got = idm_rt.Upscaler.from_engines(out, backend=backend, device=device,
                                               runner_options=options).upscale(images, **kw)
            for g, w in zip(got, want):
                check(results, f"{name}: {w.shape[1]}x{w.shape[0]} output vs torch backend (max abs)",
                      float(np.abs(g - w).max()), IMAGE_TOL[precision])
            ms = timer(lambda: runner.run_graph(key, feeds), reps)
            results["engines"].append({"size": size, "variant": name, "ms": ms, "speedup": base / ms})
            log(f"U-Net {size}px {name}: {ms:.3f} ms ({base / ms:.2f}x our eager fp32 call without TF32, "
                f"{base:.3f} ms)")


