"""Issue 5's one GPU run: device correctness checks, then CUDA-event median timings.

1. Correctness on the device: the Triton implicit layer (both forms, both MLP variants,
   float32/float16/bfloat16) against the plain-torch reference; that reference against idm_rt's
   release form; a whole U-Net call with the kernels, with CUDA graphs, and the graphed DDIM loop
   against eager torch.
2. Timings (medians of CUDA-event intervals): every implicit level of the preset at 128x128 and
   256x256 (release's literal torch form, refactored torch form, fused kernels); one U-Net call
   (release-style eager fp32, ours eager, ours with kernels + CUDA graphs in fp32/fp16/bf16);
   one whole image at 20 and 200 DDIM steps.
3. Engines, where installed (onnxruntime-gpu, TensorRT 10): built from the same model for a 128x128
   bucket, every graph checked as ``export.parity`` does, a whole image against the torch backend,
   and one U-Net call timed.

Writes ``gpu_check_<card>.json`` and ``.md`` into the folder given (after every section, so a
cut-off run keeps what it measured) and exits 1 if a correctness check failed. Random weights of
the preset, no checkpoint needed. Usage::

    python -m benchmarks.gpu_check benchmarks/results [--preset official] [--quick] [--compile]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import idm_rt
from idm_rt import kernels
from idm_rt.cuda_graph import GraphedDDIM, GraphedDenoiser
from idm_rt.diffusion import LinearSchedule, ddim
from idm_rt.kernels import reference
from idm_rt.model.implicit import ImplicitUp, modulate, query_literal

DEVICE = "cuda"  # a module constant, so the logic can be dry-run elsewhere
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}
START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    """Median of ``reps`` CUDA-event intervals around ``fn`` (one synchronisation at the end)."""
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def rel_max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, NaN if out has any NaN."""
    out, ref = out.double(), ref.double()
    return ((out - ref).abs().max() / ref.abs().max()).item()


def layer_inputs(b: int, c: int, hs: int, ws: int, device: str, gen: torch.Generator) -> list[torch.Tensor]:
    """Random float64 layer inputs in the checkpoint layout: x, shift, a1, a2, bias, w1, b1, w2, b2."""
    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device)

    s1, s2 = randn(b, c), randn(b, c)
    norm = torch.sqrt(s1 * s1 + s2 * s2 + 1e-8)
    return [randn(b, c, hs, ws), randn(b, c, hs, ws), s1 / norm, s2 / norm, randn(c, scale=0.1),
            randn(256, c + 2, scale=(c + 2) ** -0.5), randn(256, scale=0.1), randn(c, 256, scale=1 / 16),
            randn(c, scale=0.1)]


def check(results: dict, name: str, err: float, tol: float) -> None:
    ok = err < tol  # False for NaN
    results["checks"].append({"name": name, "rel_err": err, "tol": tol, "ok": ok})
    log(f"{'ok  ' if ok else 'FAIL'} {name}: {err:.2e} (< {tol:g})")


def kernel_cases(quick: bool) -> list[tuple]:
    """(batch, channels, h, w, H', W', hidden_act, form, dtype): odd, non-square, non-2x, ties."""
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    cases = [
        (1, 128, 64, 64, 128, 128, None, "mlp", f32), (1, 512, 8, 8, 16, 16, None, "folded", f32),
        (2, 48, 5, 7, 11, 9, None, "mlp", f32), (3, 40, 3, 6, 10, 13, "relu", "mlp", f32),
        (2, 36, 4, 2, 14, 3, None, "folded", f32), (1, 512, 13, 9, 29, 31, "relu", "mlp", f32),
        (2, 256, 17, 23, 40, 41, None, "folded", f32), (1, 200, 33, 20, 70, 45, None, "mlp", f32),
        (2, 128, 32, 32, 64, 64, None, "mlp", f16), (2, 128, 32, 32, 64, 64, None, "folded", f16),
        (1, 96, 9, 11, 25, 20, "relu", "mlp", bf16), (1, 256, 16, 16, 32, 32, None, "folded", bf16),
    ]
    return cases[::2] if quick else cases


def check_kernels(results: dict, quick: bool) -> None:
    """The fused layer against the float64 reference on the device; the reference against idm_rt."""
    gen = torch.Generator().manual_seed(0)
    for b, c, hs, ws, hh, ww, act, form, dtype in kernel_cases(quick):
        inputs = layer_inputs(b, c, hs, ws, DEVICE, gen)
        ref = reference.per_target_mlp(*inputs, (hh, ww), act)
        out = kernels.implicit_upsample(*(t.to(dtype) for t in inputs), (hh, ww), act, backend="triton", form=form)
        name = f"kernel {form} {act or 'linear'} {str(dtype)[6:]} B{b} C{c} {hs}x{ws}->{hh}x{ww}"
        check(results, name, rel_max_err(out, ref), TOL[dtype])
    for c, hs, ws, hh, ww, relu in [(128, 32, 32, 64, 64, False), (64, 7, 5, 15, 12, True)]:
        layer = ImplicitUp(c, 256, relu).to(DEVICE)
        x, shift, a1, a2 = (t.float() for t in layer_inputs(2, c, hs, ws, DEVICE, gen)[:4])
        with torch.no_grad():
            want = query_literal(modulate(x, shift, a1, a2, layer.bias), layer.fc1, layer.fc2, (hh, ww), relu)
            got = reference.per_target_mlp(x, shift, a1, a2, layer.bias, layer.fc1.weight, layer.fc1.bias,
                                           layer.fc2.weight, layer.fc2.bias, (hh, ww), "relu" if relu else None)
        check(results, f"reference vs idm_rt query_literal C{c} {hs}x{ws}->{hh}x{ww}", rel_max_err(got, want), 1e-5)


def make_model(preset: str) -> idm_rt.IDM:
    torch.manual_seed(0)
    return idm_rt.IDM(idm_rt.preset(preset)).to(DEVICE).eval()


def conditioning(model: idm_rt.IDM, size: int) -> idm_rt.Conditioning:
    gen = torch.Generator().manual_seed(size)
    lr = (torch.rand(1, 3, size // 4, size // 4, generator=gen) * 2 - 1).to(DEVICE)
    with torch.no_grad():
        return model.condition(model.encode(lr, (size, size)), model.scale_fraction(4.0))


def release_style(model: idm_rt.IDM, on: bool) -> None:
    """The release's eager form (literal implicit MLP, no kernels) or ours (fast form, kernels auto)."""
    model.set_implicit_form("literal" if on else "fast")
    model.set_kernels("torch" if on else "auto")


@torch.no_grad()
def check_model(results: dict, model: idm_rt.IDM, size: int) -> None:
    """Whole U-Net with kernels and with graphs, and the graphed DDIM loop, against eager torch."""
    c = conditioning(model, size)
    x = torch.randn(c.cond.shape, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    g = torch.tensor([0.6], device=DEVICE)
    release_style(model, True)
    ref = model.denoise(x, c, g)
    release_style(model, False)
    check(results, f"U-Net {size}px: kernels vs release eager (fp32)", rel_max_err(model.denoise(x, c, g), ref), 1e-4)
    check(results, f"U-Net {size}px: kernels + CUDA graph fp32", rel_max_err(GraphedDenoiser(model)(x, c, g), ref), 1e-4)
    for dtype in (torch.float16, torch.bfloat16):
        err = rel_max_err(GraphedDenoiser(model, autocast=dtype)(x, c, g), ref)
        results["autocast_error"][str(dtype)[6:]] = err
        check(results, f"U-Net {size}px: kernels + CUDA graph {str(dtype)[6:]} (measured error)", err, 5e-2)
    eager = ddim(lambda x_, g_: model.denoise(x_, c, g_), LinearSchedule(), x, 20)
    check(results, f"DDIM 20 steps {size}px: graphed loop vs eager", rel_max_err(GraphedDDIM(model)(c, x, 20), eager), 1e-4)


@torch.no_grad()
def time_levels(results: dict, model: idm_rt.IDM, size: int, reps: int) -> None:
    """Every implicit level of the model at ``size``: torch forms against the fused kernels (fp32, B=1)."""
    cfg = model.config
    gen = torch.Generator().manual_seed(size)
    for i in range(1, cfg.levels):
        c, src, dst = cfg.channels[i], size >> i, size >> (i - 1)
        layer = ImplicitUp(c, cfg.implicit_hidden, cfg.implicit_relu).to(DEVICE)
        x, shift, a1, a2 = (t.float() for t in layer_inputs(1, c, src, src, DEVICE, gen)[:4])
        w = (layer.bias, layer.fc1.weight, layer.fc1.bias, layer.fc2.weight, layer.fc2.bias)
        act = "relu" if cfg.implicit_relu else None

        def torch_form(literal: bool) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                layer.literal, layer.kernels = literal, "torch"
                return layer(x, shift, a1, a2, (dst, dst))
            return run

        def fused(form: str) -> Callable[[], torch.Tensor]:
            return lambda: kernels.implicit_upsample(x, shift, a1, a2, *w, (dst, dst), act, backend="triton", form=form)

        row = {"size": size, "level": i, "channels": c, "src": src, "dst": dst,
               "literal_torch_ms": median_ms(torch_form(True), reps),
               "refactored_torch_ms": median_ms(torch_form(False), reps),
               "fused_mlp_ms": median_ms(fused("mlp"), reps)}
        if act is None:
            row["fused_folded_ms"] = median_ms(fused("folded"), reps)
        row["fused_auto_ms"] = median_ms(fused("auto"), reps)
        row["speedup_vs_literal"] = row["literal_torch_ms"] / row["fused_auto_ms"]
        row["speedup_vs_refactored"] = row["refactored_torch_ms"] / row["fused_auto_ms"]
        results["levels"].append(row)
        log(f"level {i} @{size}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})}")


@torch.no_grad()
def time_unet(results: dict, model: idm_rt.IDM, size: int, reps: int, compile: bool) -> None:
    """One U-Net call, batch 1: release-style eager fp32 vs ours eager vs ours with kernels + graphs."""
    c = conditioning(model, size)
    x, g = torch.randn(c.cond.shape, device=DEVICE), torch.tensor([0.6], device=DEVICE)
    release_style(model, True)
    variants = {"release eager fp32": median_ms(lambda: model.denoise(x, c, g), reps)}
    release_style(model, False)
    variants["ours eager fp32 (kernels)"] = median_ms(lambda: model.denoise(x, c, g), reps)
    graphed = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    for name, dtype in graphed.items():
        fast = GraphedDenoiser(model, autocast=dtype)
        variants[f"ours kernels + CUDA graph {name}"] = median_ms(lambda: fast(x, c, g), reps)
    if compile:
        fast = GraphedDenoiser(model, autocast=torch.float16, compile=True)
        variants["ours kernels + compile + CUDA graph fp16"] = median_ms(lambda: fast(x, c, g), reps)
    base = variants["release eager fp32"]
    for name, ms in variants.items():
        results["unet"].append({"size": size, "variant": name, "ms": ms, "speedup": base / ms})
        log(f"U-Net {size}px {name}: {ms:.3f} ms ({base / ms:.2f}x)")


@torch.no_grad()
def time_image(results: dict, model: idm_rt.IDM, size: int, steps_list: tuple[int, ...]) -> None:
    """One whole image (the sampling loop only; encoding and conditioning run once), DDIM."""
    c = conditioning(model, size)
    x_T = torch.randn(c.cond.shape, device=DEVICE)
    sched = LinearSchedule()
    loops = {"fp32": GraphedDDIM(model), "fp16": GraphedDDIM(model, autocast=torch.float16)}
    for steps in steps_list:
        release_style(model, True)
        ms = {"release eager fp32": median_ms(lambda: ddim(lambda x, g: model.denoise(x, c, g), sched, x_T, steps), 1, 0)}
        release_style(model, False)
        for name, loop in loops.items():
            ms[f"ours graphed DDIM {name}"] = median_ms(lambda: loop(c, x_T, steps), 1, 1)
        for name, t in ms.items():
            results["image"].append({"size": size, "steps": steps, "variant": name, "ms": t,
                                     "speedup": ms["release eager fp32"] / t})
            log(f"image {size}px {steps} steps {name}: {t:.1f} ms")


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
def check_engines(results: dict, model: idm_rt.IDM, size: int, reps: int) -> None:
    """The engine backends installed here, built from this model for one size x size bucket: ONNX
    Runtime's CUDA provider (fp32) and TensorRT (fp32, fp16, fp16 with CUDA graphs). Per variant:
    ``export.parity``'s relative error of every graph, the largest difference of a whole image from
    the torch backend's (same seed), and one U-Net call's time against our eager fp32 call (both
    torch references with TF32 off, as the fp32 engines are built)."""
    import copy
    import tempfile

    import numpy as np

    from idm_rt.export.graphs import graph_module, sample_inputs
    from idm_rt.export.parity import LIMITS, graph_errors
    from idm_rt.backends import load_runner
    from idm_rt.backends.engine_dir import graph_inputs, graph_key
    from idm_rt.buckets import Bucket
    from idm_rt.build import main as build

    variants = engine_variants()
    results["engine_backends"] = sorted({backend for backend, _, _ in variants})
    if not variants:
        log("neither onnxruntime-gpu nor tensorrt is installed here: no engines to check")
        return
    release_style(model, False)
    cpu_model, bucket = copy.deepcopy(model).cpu(), Bucket(size, size)
    args = tuple(t.to(DEVICE) for t in sample_inputs(cpu_model, "unet", bucket))
    feeds, key = dict(zip(graph_inputs("unet", model.config), args)), graph_key("unet", bucket)
    net = graph_module(model, "unet")
    image = np.random.default_rng(0).random((size // 2, size // 2, 3), dtype=np.float32)
    kw = dict(scale=2, steps=4, seed=0, progress=False, sampler="dpmpp_2m", init="noise")
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # as in the fp32 engines
    try:
        base = median_ms(lambda: net(*args), reps)
        want = idm_rt.Upscaler(model, device=DEVICE, tile=0).upscale(image, **kw)
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
            runner = load_runner(out, backend, DEVICE, **options)
            for graph, graph_precision, case, err in graph_errors(runner, cpu_model):
                check(results, f"{name}: {graph} {case} (export.parity)", err, LIMITS[graph_precision])
            got = idm_rt.Upscaler.from_engines(out, backend=backend, device=DEVICE,
                                               runner_options=options).upscale(image, **kw)
            check(results, f"{name}: {size // 2}px x2 image vs torch backend (max abs)",
                  float(np.abs(got - want).max()), IMAGE_TOL[precision])
            ms = median_ms(lambda: runner.run_graph(key, feeds), reps)
            results["engines"].append({"size": size, "variant": name, "ms": ms, "speedup": base / ms})
            log(f"U-Net {size}px {name}: {ms:.3f} ms ({base / ms:.2f}x our eager fp32 call without TF32, "
                f"{base:.3f} ms)")


def markdown(results: dict) -> str:
    """The results as Markdown tables."""
    lines = [f"# gpu_check on {results['device']}", "",
             f"torch {results['torch']}, triton {results['triton']}, preset `{results['preset']}`, "
             f"all checks passed: **{all(c['ok'] for c in results['checks'])}**", "",
             "## Correctness", "", "| check | rel. error | tol | ok |", "| --- | --- | --- | --- |"]
    lines += [f"| {c['name']} | {c['rel_err']:.2e} | {c['tol']:g} | {c['ok']} |" for c in results["checks"]]
    lines += ["", "## Implicit levels (fp32, batch 1, ms)", "",
              "| size | level | C | src -> dst | literal torch | refactored torch | fused mlp | fused folded "
              "| fused auto | vs literal | vs refactored |", "|" + " --- |" * 11]
    for r in results["levels"]:
        lines.append(f"| {r['size']} | {r['level']} | {r['channels']} | {r['src']} -> {r['dst']} | "
                     f"{r['literal_torch_ms']:.4f} | {r['refactored_torch_ms']:.4f} | {r['fused_mlp_ms']:.4f} | "
                     f"{r.get('fused_folded_ms', math.nan):.4f} | {r['fused_auto_ms']:.4f} | "
                     f"{r['speedup_vs_literal']:.2f}x | {r['speedup_vs_refactored']:.2f}x |")
    lines += ["", "## One U-Net call (batch 1)", "", "| size | variant | ms | speedup |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['size']} | {r['variant']} | {r['ms']:.3f} | {r['speedup']:.2f}x |" for r in results["unet"]]
    lines += ["", "## One image, DDIM loop", "", "| size | steps | variant | ms | speedup |", "|" + " --- |" * 5]
    lines += [f"| {r['size']} | {r['steps']} | {r['variant']} | {r['ms']:.1f} | {r['speedup']:.2f}x |"
              for r in results["image"]]
    backends = ", ".join(results.get("engine_backends", [])) or "none installed"
    lines += ["", f"## Engines ({backends}), one U-Net call (batch 1, vs ours eager fp32 without TF32)", "",
              "| size | variant | ms | speedup |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['size']} | {r['variant']} | {r['ms']:.3f} | {r['speedup']:.2f}x |" for r in results["engines"]]
    return "\n".join(lines) + "\n"


def save(results: dict, out_dir: Path) -> None:
    stem = "gpu_check_" + re.sub(r"[^A-Za-z0-9]+", "_", results["device"]).strip("_").lower()
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out_dir / f"{stem}.md").write_text(markdown(results))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path, help="folder for gpu_check_<card>.json and .md")
    ap.add_argument("--preset", default="official", help="network shape (random weights)")
    ap.add_argument("--quick", action="store_true", help="fewer cases and repetitions, no 200-step image")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); "
              "run it on an NVIDIA GPU machine with a CUDA build of torch", file=sys.stderr)
        return 2
    if not kernels.triton_available():
        print("gpu_check: triton is not installed (pip install triton)", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    import triton

    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "preset": args.preset, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
               "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
               "checks": [], "autocast_error": {}, "levels": [], "unet": [], "image": [], "engines": []}
    reps = 10 if args.quick else 30
    sections = [
        ("kernel correctness", lambda m: check_kernels(results, args.quick)),
        ("model correctness", lambda m: check_model(results, m, 128)),
        ("implicit levels", lambda m: [time_levels(results, m, s, reps) for s in (128, 256)]),
        ("U-Net call", lambda m: time_unet(results, m, 128, reps, args.compile)),
        ("whole image", lambda m: time_image(results, m, 128, (20,) if args.quick else (20, 200))),
        ("engines", lambda m: check_engines(results, m, 128, reps)),
    ]
    model = make_model(args.preset)
    for name, run in sections:
        log(f"== {name}")
        run(model)
        save(results, args.out_dir)
    ok = all(c["ok"] for c in results["checks"])
    log(f"done; all checks passed: {ok}; results in {args.out_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
