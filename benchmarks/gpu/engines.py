"""The engine backends installed on the machine (TensorRT, ONNX Runtime's CUDA provider): built from a model of
the engine preset for one bucket (graphs traced on the device), checked graph by graph and image against the
torch backend, and one U-Net call timed against our eager fp32 call. Each backend and precision is one
variant; the most valuable first (TensorRT fp16), since the section may run out of time."""

from __future__ import annotations

import copy
import importlib.util
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

import idm_rt

from .common import Run, log, release_style
from .tf32 import torch_flags

# Max abs difference of an engine's image from the torch backend's (same seed, [0, 1] images): float32
# engines differ by float32 rounding through the sampler (and TF32 is off on both sides); float16 by its own.
IMAGE_TOL = {"fp32": 2e-3, "fp16": 5e-2}
BUILD_S = {"tensorrt": 120.0, "onnxruntime": 20.0}  # expected build time of one directory (small preset, 1 bucket)


def engine_variants(dry: bool) -> tuple[list[tuple[str, str, dict]], list[str]]:
    """(backend, precision, runner options) of the variants to run here, and what is missing for the others.
    A dry run takes ONNX Runtime's CPU provider in place of the GPU backends."""
    if dry:
        return [("onnxruntime", "fp32", {"threads": 1})], ["tensorrt (a dry run builds ONNX Runtime CPU engines)"]
    variants, missing = [], []
    if importlib.util.find_spec("tensorrt") is not None:
        variants += [("tensorrt", "fp16", {}), ("tensorrt", "fp16", {"cuda_graph": True}), ("tensorrt", "fp32", {})]
    else:
        missing.append("tensorrt (pip install 'idm-rt[gpu]')")
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            variants.append(("onnxruntime", "fp32", {}))
        else:
            missing.append("onnxruntime-gpu (only the CPU provider is installed)")
    except ImportError:
        missing.append("onnxruntime-gpu")
    return variants, missing


def variant_name(backend: str, precision: str, options: dict) -> str:
    return f"{backend} {precision}" + (" + CUDA graphs" if options.get("cuda_graph") else "")


@torch.no_grad()
def check_engines(run: Run) -> None:
    """Per variant: build (or reuse) the directory, ``idm_rt.export.parity``'s error of every graph, the
    largest difference of two whole images from the torch backend's (the bucket's static U-Net and the
    dynamic one), and one U-Net call's time against our eager fp32 call (TF32 off on both sides, as the
    fp32 engines are built)."""
    from idm_rt.backends import load_runner
    from idm_rt.backends.engine_dir import graph_inputs, graph_key
    from idm_rt.buckets import Bucket
    from idm_rt.build import main as build
    from idm_rt.export.graphs import graph_module, sample_inputs
    from idm_rt.export.parity import LIMITS, graph_errors

    variants, missing = engine_variants(run.dry)
    run.results["engine_backends"] = {"run": sorted({v[0] for v in variants}), "missing": missing}
    if not variants:
        log(f"no engine backend here ({'; '.join(missing)}): nothing to check")
        return
    preset = run.extra.get("engine_preset", "small")
    model = run.model(preset)
    release_style(model, False, "torch")
    size = run.size
    cpu_model, bucket = copy.deepcopy(model).cpu(), Bucket(size, size)
    args = tuple(t.to(run.device) for t in sample_inputs(cpu_model, "unet", bucket))
    feeds, key = dict(zip(graph_inputs("unet", model.config), args)), graph_key("unet", bucket)
    net = graph_module(model, "unet")
    rng = np.random.default_rng(0)
    images = [
        rng.random((size // 2, size // 2, 3), dtype=np.float32),
        rng.random((size // 2 - 5, size // 2 - 3, 3), dtype=np.float32),
    ]
    kw = dict(scale=2, steps=4, seed=0, progress=False, sampler="dpmpp_2m", init="noise")
    with torch_flags(False, False):  # as in the fp32 engines
        base = run.median_ms(lambda: net(*args))
        want = idm_rt.Upscaler(model, device=run.device, tile=0).upscale(images, **kw)
    built: dict[tuple[str, str], int] = {}
    folder = tempfile.TemporaryDirectory(prefix="gpu_check_engines_")
    tmp = Path(folder.name)
    model_dir = idm_rt.save_model(cpu_model, tmp / "model")

    def one(backend: str, precision: str, options: dict) -> None:
        name = variant_name(backend, precision, options)
        out = tmp / f"{backend}-{precision}"
        if (backend, precision) not in built:
            built[backend, precision] = build(
                [
                    "--engine",
                    precision,
                    "--backend",
                    backend,
                    "--model",
                    str(model_dir),
                    "--out",
                    str(out),
                    "--tile",
                    str(size),
                    "--conv",
                    "direct",
                    "--export-device",
                    str(run.device),
                ]
            )
        if built[backend, precision] != 0:
            run.check(f"{name}: build (exit status {built[backend, precision]})", math.nan, 1)
            return
        runner = load_runner(out, backend, run.device, **options)
        for graph, graph_precision, case, err in graph_errors(runner, cpu_model):
            run.check(f"{name}: {graph} {case} (export.parity)", err, LIMITS[graph_precision])
        got = idm_rt.Upscaler.from_engines(out, backend=backend, device=run.device, runner_options=options).upscale(
            images, **kw
        )
        for g, w in zip(got, want):
            run.check(
                f"{name}: {w.shape[1]}x{w.shape[0]} output vs torch backend (max abs)",
                float(np.abs(g - w).max()),
                IMAGE_TOL[precision],
            )
        ms = run.median_ms(lambda: runner.run_graph(key, feeds))
        run.add(
            "engines",
            {"size": size, "preset": preset, "variant": name, "ms": ms, "base_ms": base, "speedup": base / ms},
        )
        log(f"U-Net {size}px {name}: {ms:.3f} ms ({base / ms:.2f}x our eager fp32 call without TF32, {base:.3f} ms)")

    with folder:
        for backend, precision, options in variants:
            expected = 10.0 if (backend, precision) in built else BUILD_S[backend]
            run.variant(
                f"engines: {variant_name(backend, precision, options)}",
                lambda b=backend, p=precision, o=options: one(b, p, o),
                expected,
            )
