"""INT8 U-Net engines (ONNX Runtime, CPU) against float32: per-call time, noise-prediction error, image quality.

``python -m benchmarks.int8_onnx [--model PATH] [--tile 128] [--scales 2,3,4,6,8] [--crop 192] [--threads 2,1]
[--repeats 15] [--calibration auto] [--engines DIR] [--methods] [--sensitivity] [--pause-pid-file FILE]``

Builds (or reuses, in ``--engines DIR``) three engine directories of the model for one bucket with
``python -m idm_rt.build``'s builder: ``fp32`` (the default ONNX Runtime build: Winograd convolutions
where they pay), ``fp32_direct`` (the graph that is quantised) and ``int8`` (:mod:`idm_rt.export.quantize`).

1. **Noise prediction** on real U-Net inputs recorded from the torch sampler on held-out images (of
   the calibration source, not calibrated on): relative error of eps per sampling step, and the PSNR
   of the x0 estimate it implies (``(x_t - sqrt(1 - g^2) eps) / g``, which is what the error does to
   the image), for the shipped settings and for int8 activations. ``--methods`` adds each
   calibration method; ``--sensitivity`` the gain of keeping each convolution in float32 when all
   others are quantised (how :data:`idm_rt.export.quantize.KEEP_FLOAT` was chosen).
2. **Time per U-Net call** of each static graph on a recorded input, interleaved rounds (medians; the
   speed-up is the median of per-round ratios against ``fp32``), at each ``--threads``.
   ``--pause-pid-file`` stops that process (SIGSTOP) during the timing only, and resumes it (SIGCONT)
   after, also on failure: a background job on a shared machine.
3. **Images**: :func:`training.evaluate.evaluate`'s protocol on scikit-image's photos (central crops),
   the ``fp32`` and ``int8`` engines with the model's recommended settings and the same seed, tiled
   as engines tile (the bucket's side): PSNR(Y) of each against HR, and of int8 against fp32.

The verdict ships int8 when it is faster at every thread count and, at every scale, (a) its PSNR
against the fp32 images is at least :data:`MARGIN_DB` above fp32's PSNR against HR, and (b) its
PSNR against HR is within :data:`HR_TOLERANCE_DB` of fp32's. Writes ``int8_onnx.json``
in ``benchmarks/scratch/`` (``benchmarks/results/`` with ``--replace``)
and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from idm_rt import DEFAULT_MODEL
from idm_rt.backends import load_runner
from idm_rt.backends.engine_dir import graph_key, read_manifest
from idm_rt.buckets import Bucket
from idm_rt.checkpoints import load_model
from idm_rt.export import quantize
from idm_rt.export.builder import BuildOptions, build
from idm_rt.export.int8_check import HR_TOLERANCE_DB, MARGIN_DB
from idm_rt.fileio import atomic_write
from idm_rt.sampling import SamplingSettings
from idm_rt.training.evaluate import evaluate, large_enough, load_images
from idm_rt.training.metrics import psnr_y

from .common import ORT_SETTLE_S, add_replace_argument, interleaved, machine, results_dir
from .latency_onnx import _session, summarise

# The convolutions quantize.VERSION 1 kept in float32 (first, last, the full-resolution level's 1x1 skips): what a
# model sampled from little noise loses with only those kept.
FIRST_LAST_SKIPS = (r"^unet\.input_conv$", r"^unet\.final\.", r"^unet\.up\.{last}\.blocks\.\d+\.res\.skip$")
ENGINES = {"fp32": ("fp32", "winograd"), "fp32_direct": ("fp32", "direct"), "int8": ("int8", "direct")}
HELD_OUT_SCALES = (2.0, 4.0, 8.0)


def build_engines(model_path: Path, folder: Path, bucket: Bucket, calibration: str) -> dict[str, Path]:
    """The three engine directories (built, or reused when they match)."""
    out = {}
    for name, (precision, conv) in ENGINES.items():
        out[name] = folder / name
        options = BuildOptions(
            model_path,
            out[name],
            precision,
            "onnxruntime",
            [bucket],
            conv=conv,
            calibration=calibration,
            check_int8=False,
        )  # measured here, at more length
        build(options, lambda line: print(f"  {name}: {line}"))
    return out


def eps_report(session, feeds: list[dict], wants: list[np.ndarray]) -> dict:
    """Relative error of eps against ``wants`` per noise level g (mean over calls), overall, and the
    PSNR (dB, images in [-1, 1]) of the x0 estimate it implies."""
    per_step: dict[str, list[float]] = {}
    num = den = x0_se = 0.0
    for feed, want in zip(feeds, wants):
        diff = session.run(None, feed)[0] - want
        g = float(feed["g"][0])
        per_step.setdefault(f"{g:.5f}", []).append(float(np.linalg.norm(diff) / np.linalg.norm(want)))
        num, den = num + float((diff**2).sum()), den + float((want**2).sum())
        x0_se += (1 - g * g) / (g * g) * float((diff**2).sum())
    n = sum(w.size for w in wants)
    return {
        "eps_rel_error": (num / den) ** 0.5,
        "eps_rel_error_per_g": {k: statistics.mean(v) for k, v in per_step.items()},
        "x0_psnr_db": 10 * math.log10(4 / (x0_se / n)),
    }


def variants(fp32_onnx: Path, cal_feeds: list[dict], levels: int, methods: bool, work: Path) -> dict[str, Path]:
    """Other quantisations of the same graph than the engine's: int8 activations, no convolution in
    float32, only :data:`FIRST_LAST_SKIPS` in float32, and with ``methods`` each other calibration method
    (uint8 activations, the shipped float32 convolutions); leaves the prepared graph and each method's ranges
    in ``work``."""
    base = quantize.QuantSettings()
    prepared = work / "prepared.onnx"
    quantize.prepare(fp32_onnx, prepared)
    proto = onnx.load(str(fp32_onnx))
    keep = quantize.excluded_nodes(proto, base.keep_float, levels)
    patterns = [re.compile(p.format(last=levels - 1)) for p in FIRST_LAST_SKIPS]
    first_last_skips = [n for n, path in quantize.module_paths(proto).items() if any(p.search(path) for p in patterns)]
    out = {}
    for method in quantize.METHODS if methods else (base.method,):
        ranges = work / f"ranges_{method}.json"
        print(f"  calibrating ({method})")
        quantize.calibrate(prepared, cal_feeds, method, ranges)
        if method != base.method:  # the shipped method's graph is the int8 engine's
            cases = {f"int8_{method}": (quantize.QuantSettings(method=method), keep)}
        else:
            cases = {
                "int8_int8_activations": (quantize.QuantSettings(activations="int8"), keep),
                "int8_all_convs": (base, []),
                "int8_first_last_skips": (base, first_last_skips),
            }
        for name, (settings, exclude) in cases.items():
            out[name] = work / f"{name}.onnx"
            quantize.quantize(prepared, out[name], ranges, settings, exclude)
    return out


def sensitivity(fp32_onnx: Path, work: Path, feeds: list[dict], wants: list[np.ndarray]) -> list[dict]:
    """x0 PSNR with every convolution quantised but one, for each convolution (best first); with the
    shipped method's ranges that :func:`variants` left in ``work``."""
    base = quantize.QuantSettings()
    prepared, ranges = work / "prepared.onnx", work / f"ranges_{base.method}.json"
    proto = onnx.load(str(fp32_onnx))
    paths = quantize.module_paths(proto)
    rows = []
    for node in [n.name for n in proto.graph.node if n.op_type == "Conv"]:
        path = work / "one.onnx"
        quantize.quantize(prepared, path, ranges, base, [node])
        rows.append(
            {
                "node": node,
                "module": paths.get(node, "?"),
                "x0_psnr_db": eps_report(_session(path, 1), feeds, wants)["x0_psnr_db"],
            }
        )
        print(f"    {rows[-1]['module']:<45} {rows[-1]['x0_psnr_db']:.2f} dB")
    return sorted(rows, key=lambda r: -r["x0_psnr_db"])


@contextlib.contextmanager
def paused(pid_file: Path | None):
    """SIGSTOP the process of ``pid_file`` inside the block, SIGCONT after (also on errors and SIGTERM)."""
    if pid_file is None:
        yield False
        return
    pid = int(pid_file.read_text().strip())
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    os.kill(pid, signal.SIGSTOP)
    try:
        yield True
    finally:
        os.kill(pid, signal.SIGCONT)
        signal.signal(signal.SIGTERM, previous)


def timing(graphs: dict[str, Path], feed: dict, threads: list[int], repeats: int) -> dict:
    """Per-call time of each graph, interleaved, per thread count (speed-ups against ``fp32``)."""
    out = {}
    for n in threads:
        sessions = {name: _session(path, n) for name, path in graphs.items()}
        fns = {name: (lambda s=s: s.run(None, feed)) for name, s in sessions.items()}
        out[str(n)] = summarise(interleaved(fns, repeats, warmup=2, settle_s=ORT_SETTLE_S), "fp32")
        print(
            f"  {n} thread(s): "
            + ", ".join(f"{k} {v['median_ms']:.1f} ms (x{v['speedup_vs_fp32']:.2f})" for k, v in out[str(n)].items())
        )
    return out


def image_quality(folders: dict[str, Path], scales: list[float], crop: int, tile: int, seed: int) -> list[dict]:
    """Per scale: PSNR(Y) against HR of the fp32 and int8 engines, and of int8 against fp32 (means over images)."""
    images = large_enough(load_images("skimage", crop), scales)
    rows, outputs = {}, {}
    for name in ("fp32", "int8"):
        runner = load_runner(folders[name], threads=1)
        outputs[name] = {}
        rows[name] = evaluate(
            runner,
            images,
            scales,
            runner.manifest.recommended or SamplingSettings(),
            seed,
            tile=tile,
            outputs=outputs[name],
        )
    table = []
    for s, r32, r8 in zip(scales, rows["fp32"], rows["int8"]):
        vs = [psnr_y(outputs["int8"][s, n], outputs["fp32"][s, n], math.ceil(s)) for n, _ in images]
        table.append(
            {
                "scale": s,
                "psnr_hr_fp32": r32["psnr"],
                "psnr_hr_int8": r8["psnr"],
                "psnr_hr_delta": r8["psnr"] - r32["psnr"],
                "psnr_int8_vs_fp32": statistics.mean(vs),
                "psnr_int8_vs_fp32_min": min(vs),
                "ssim_hr_fp32": r32["ssim"],
                "ssim_hr_int8": r8["ssim"],
                "images": len(images),
            }
        )
    return table


def verdict(times: dict, quality: list[dict]) -> dict:
    """Whether int8 ships, with the reason of each check."""
    faster = {n: t["int8"]["speedup_vs_fp32"] for n, t in times.items()}
    checks = {
        "faster at every thread count": all(v > 1 for v in faster.values()),
        f"PSNR int8 vs fp32 >= PSNR fp32 vs HR + {MARGIN_DB:.1f} dB at every scale": all(
            q["psnr_int8_vs_fp32"] >= q["psnr_hr_fp32"] + MARGIN_DB for q in quality
        ),
        f"PSNR vs HR within {HR_TOLERANCE_DB} dB of fp32 at every scale": all(
            q["psnr_hr_delta"] >= -HR_TOLERANCE_DB for q in quality
        ),
    }
    return {"ship": all(checks.values()), "checks": checks, "speedup_vs_fp32": faster}


def fmt_load(loads: list) -> str:
    return " / ".join(", ".join(f"{v:.1f}" for v in load) for load in loads)


def markdown(r: dict) -> str:
    """The results as a Markdown report."""
    m = r["machine"]
    lines = [
        f"# INT8 U-Net (ONNX Runtime, CPU) against float32: {'SHIP' if r['verdict']['ship'] else 'DO NOT SHIP'}",
        "",
        f"`{r['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, ONNX Runtime {m.get('onnxruntime')}, torch {m['torch']}; "
        f"background job paused during timing: {r['paused']}; load average (1, 5, 15 min) before and after "
        f"timing: {fmt_load(r['load_average_before_after_timing'])}. Model: `{r['model']}`, bucket {r['bucket']}.",
        f"Quantisation: {json.dumps(r['int8_settings'])}; calibration images: {r['calibration']}; "
        f"{len(r['kept_float'])} convolutions kept in float32: {', '.join(r['kept_float_modules'])}.",
        "",
        "## Time per U-Net call (median ms; speed-up: median of per-round ratios against fp32)",
        "",
        "| threads | " + " | ".join(r["timing"][next(iter(r["timing"]))]) + " |",
        "|---|" + "---|" * len(r["timing"][next(iter(r["timing"]))]),
    ]
    for n, t in r["timing"].items():
        lines.append(
            f"| {n} | " + " | ".join(f"{v['median_ms']:.1f} (x{v['speedup_vs_fp32']:.2f})" for v in t.values()) + " |"
        )
    lines += [
        "",
        f"## Noise prediction on held-out trajectories ({r['held_out']['calls']} U-Net calls; "
        f"{r['held_out']['images']}; scales {', '.join(f'{s:g}' for s in r['held_out']['scales'])})",
        "",
        "Against the fp32 graph with direct convolutions (the one quantised). x0 PSNR: of the estimate "
        "(x_t - sqrt(1 - g^2) eps) / g, images in [-1, 1]: how much of the eps error reaches the image "
        "(late steps, g near 1, have large relative eps errors that reach it scaled by sqrt(1 - g^2) / g).",
        "",
        f"int8: the engine's graph ({r['int8_settings']['method']} calibration, uint8 activations, "
        "the convolutions above in float32); the others change one thing.",
        "",
        "| graph | eps rel. error | per noise level g | x0 PSNR (dB) |",
        "|---|---|---|---|",
    ]
    for name, e in r["eps"].items():
        steps = ", ".join(f"{g}: {v:.3f}" for g, v in e["eps_rel_error_per_g"].items())
        lines.append(f"| {name} | {e['eps_rel_error']:.4f} | {steps} | {e['x0_psnr_db']:.2f} |")
    lines += [
        "",
        f"## Images ({r['quality'][0]['images']} scikit-image photos, {r['crop']} px central crops, "
        f"{r['sampling']}, seed {r['seed']})",
        "",
        "training.evaluate's protocol; the default fp32 engine and the int8 engine, both tiled in tiles of the "
        "bucket's size (the static graphs).",
        "",
        "| scale | PSNR(Y) fp32 vs HR | PSNR(Y) int8 vs HR | difference | PSNR(Y) int8 vs fp32 (mean, min) |",
        "|---|---|---|---|---|",
    ]
    for q in r["quality"]:
        lines.append(
            f"| {q['scale']:g}x | {q['psnr_hr_fp32']:.3f} | {q['psnr_hr_int8']:.3f} | "
            f"{q['psnr_hr_delta']:+.3f} | {q['psnr_int8_vs_fp32']:.2f}, {q['psnr_int8_vs_fp32_min']:.2f} |"
        )
    lines += [
        "",
        "## Verdict",
        "",
        f"The {MARGIN_DB:.1f} dB margin keeps the MSE of int8's deviation from the fp32 images at most "
        f"{100 * 10 ** (-MARGIN_DB / 10):.1f} % of fp32's MSE against HR, which moves PSNR against HR by at most "
        f"{HR_TOLERANCE_DB} dB when the two are uncorrelated; the second image check measures it directly.",
        "",
    ]
    lines += [f"- {'pass' if ok else 'FAIL'}: {c}" for c, ok in r["verdict"]["checks"].items()]
    if r.get("sensitivity"):
        lines += [
            "",
            "## Sensitivity: x0 PSNR with all convolutions quantised but one",
            "",
            "| kept in float32 | x0 PSNR (dB) |",
            "|---|---|",
        ]
        lines += [f"| {s['module']} | {s['x0_psnr_db']:.2f} |" for s in r["sensitivity"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.int8_onnx", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="default: the bundled model")
    ap.add_argument("--tile", type=int, default=128, help="the bucket (square HR tile side)")
    ap.add_argument("--scales", default="2,3,4,6,8")
    ap.add_argument("--crop", type=int, default=192, help="central crop of the evaluation photos")
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration", default="auto", help="calibration images (see python -m idm_rt.build)")
    ap.add_argument("--engines", type=Path, help="where the engine directories are built or reused (default: temp)")
    ap.add_argument("--methods", action="store_true", help="compare the calibration methods")
    ap.add_argument("--sensitivity", action="store_true", help="x0 PSNR with each convolution kept in float32")
    ap.add_argument("--pause-pid-file", type=Path, help="SIGSTOP this process while timing, SIGCONT after")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the untimed work shares the machine
    bucket = Bucket(args.tile, args.tile)
    scales, threads = [float(s) for s in args.scales.split(",")], [int(n) for n in args.threads.split(",")]
    model = load_model(args.model)
    settings = quantize.QuantSettings()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folders = build_engines(args.model, args.engines or work / "engines", bucket, args.calibration)
        key = graph_key("unet", bucket)
        artifact = {name: folders[name] / read_manifest(folders[name]).graphs[key].engine for name in folders}
        fp32_onnx = folders["fp32_direct"] / read_manifest(folders["fp32_direct"]).graphs[key].onnx
        calibration = quantize.Calibration.load(args.calibration, settings)
        sampling = model.recommended or SamplingSettings()
        print("recording U-Net inputs")
        cal_feeds = quantize.record_unet_inputs(
            model, calibration.images, bucket, settings.scales, sampling, settings.seed
        )
        held, held_what = quantize.held_out_images(args.calibration, settings, 4)
        feeds = quantize.record_unet_inputs(model, held, bucket, HELD_OUT_SCALES, sampling, settings.seed + 1)
        graphs = {"int8": artifact["int8"], **variants(fp32_onnx, cal_feeds, model.config.levels, args.methods, work)}
        reference = _session(artifact["fp32_direct"], 1)
        wants = [reference.run(None, feed)[0] for feed in feeds]
        eps = {name: eps_report(_session(path, 1), feeds, wants) for name, path in graphs.items()}
        sens = []
        if args.sensitivity:
            print("sensitivity")
            sens = sensitivity(fp32_onnx, work, feeds, wants)
        kept = quantize.excluded_nodes(onnx.load(str(fp32_onnx)), settings.keep_float, model.config.levels)
        paths = quantize.module_paths(onnx.load(str(fp32_onnx)))  # while the graph exists (a temp folder's)
        print("timing")
        contestants = {
            "fp32": artifact["fp32"],
            "fp32_direct": artifact["fp32_direct"],
            "int8": artifact["int8"],
            "int8_int8_activations": graphs["int8_int8_activations"],
        }
        with paused(args.pause_pid_file) as was_paused:
            load_before = os.getloadavg()
            times = timing(contestants, feeds[0], threads, args.repeats)
            load_after = os.getloadavg()
        print("images")
        quality = image_quality(folders, scales, args.crop, args.tile, args.seed)
    result = {
        "command": " ".join(["python -m benchmarks.int8_onnx", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "paused": was_paused,
        "load_average_before_after_timing": [load_before, load_after],
        "model": str(args.model),
        "bucket": bucket.name,
        "int8_settings": settings.to_dict(),
        "calibration": calibration.source,
        "kept_float": kept,
        "kept_float_modules": [paths.get(n, n) for n in kept],
        "held_out": {"images": held_what, "scales": HELD_OUT_SCALES, "calls": len(feeds)},
        "sampling": sampling.to_dict(),
        "seed": args.seed,
        "crop": args.crop,
        "eps": eps,
        "timing": times,
        "quality": quality,
        "sensitivity": sens,
    }
    result["verdict"] = verdict(times, quality)
    folder = results_dir(args.replace)
    atomic_write(folder / "int8_onnx.json", lambda p: Path(p).write_text(json.dumps(result, indent=2) + "\n"))
    atomic_write(folder / "int8_onnx.md", lambda p: Path(p).write_text(markdown(result)))
    print(markdown(result))
    print(f"wrote {folder / 'int8_onnx.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
