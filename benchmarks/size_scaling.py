"""Per-image time and peak memory against the output's size, for each backend, in one run: whether the
cost grows with the pixels and no faster (``python -m benchmarks.latency --sizes ...`` runs it).

Every (backend, size) runs in a fresh process, so that its peak resident memory is its own: the
bundled model (or ``--model``) at its recommended sampling through ``Upscaler`` with its default
tiling, a photo upscaled 4x to side x side, the process's allocator set as the command line sets it
(``idm_rt.configure_allocator``). Writes ``size_scaling.json``
in ``benchmarks/scratch/`` (``benchmarks/results/`` with ``--replace``) and a plot of the
seconds per output megapixel and the peak memory against the output's megapixels.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from idm_rt import DEFAULT_MODEL

from .common import add_replace_argument, machine, results_dir, write

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")


def child(backend: str, side: int, model: str | None, engines: str | None, threads: int) -> dict:
    """One upscale to side x side in this process: seconds, peak resident memory, tile choice."""
    import torch
    from skimage import data

    import idm_rt

    idm_rt.configure_threads(threads)
    idm_rt.configure_allocator()
    up = idm_rt.Upscaler.from_engines(engines) if engines else idm_rt.Upscaler.from_pretrained(model)
    lr = np.asarray(Image.fromarray(data.astronaut()).resize((side // 4, side // 4), Image.BICUBIC))
    start = time.perf_counter()
    up.upscale(lr, scale=4, seed=0, progress=False)
    seconds = time.perf_counter() - start
    tile = up.choose_tile((side, side))
    return {
        "backend": backend,
        "side": side,
        "megapixels": side * side / 1e6,
        "seconds": seconds,
        "seconds_per_megapixel": seconds / (side * side / 1e6),
        "tile": tile,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
        "sampling": dataclasses.asdict(up.sampling),
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started: VmHWM belongs to the process's own address
    space, while getrusage's ru_maxrss keeps the parent's peak across fork and exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def build_engines(model: str | None, precision: str, out: Path) -> Path:
    """An ONNX Runtime engine directory of the model with the default buckets."""
    from idm_rt.build import main as build

    args = ["--backend", "onnxruntime", "--engine", precision, "--out", str(out)]
    args += ["--skip-int8-check"] * (precision == "int8")  # measured as it is, whatever its images
    if build(args + (["--model", model] if model else [])) != 0:
        raise RuntimeError(f"building the {precision} engines failed")
    return out


def run(sides: list[int], backends: list[str], model: str | None, threads: int) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"onnxruntime": "fp32", "onnxruntime-int8": "int8"}
        folders = {b: build_engines(model, engines[b], Path(tmp) / b) for b in backends if b in engines}
        for backend in backends:
            for side in sides:
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.size_scaling",
                    "--child",
                    backend,
                    str(side),
                    "--threads",
                    str(threads),
                ]
                if model:
                    cmd += ["--model", model]
                if backend in folders:
                    cmd += ["--engines", str(folders[backend])]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"{backend} at {side}x{side} failed:\n{done.stderr[-3000:]}")
                out = done.stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(
                    f"{backend:17s} {side}x{side} ({r['megapixels']:.2f} MP, tile {r['tile']}): "
                    f"{r['seconds']:.1f} s, {r['seconds_per_megapixel']:.1f} s/MP, peak {r['peak_rss_mib']:.0f} MiB",
                    flush=True,
                )
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        for r in mine:
            r["vs_smallest"] = r["seconds_per_megapixel"] / mine[0]["seconds_per_megapixel"]
    folder = Path(model) if model else DEFAULT_MODEL
    provenance = json.loads((folder / "config.json").read_text()).get("provenance", {}) if folder.is_dir() else {}
    return {
        "model": model or "bundled default",
        "model_step": provenance.get("step"),
        "scale": 4,
        "threads": threads,
        "rows": rows,
    }


def plot(result: dict, path: Path) -> None:
    """Two panels, seconds per megapixel and peak memory against output megapixels, one line per backend."""
    width, height, pad = 900, 380, 60
    colours = {"torch": (31, 119, 180), "onnxruntime": (214, 39, 40), "onnxruntime-int8": (44, 160, 44)}
    image = Image.new("RGB", (width, 2 * height), "white")
    draw = ImageDraw.Draw(image)
    rows = result["rows"]
    x_max = max(r["megapixels"] for r in rows) * 1.05
    for panel, (key, label) in enumerate(
        (("seconds_per_megapixel", "seconds per output megapixel"), ("peak_rss_mib", "peak resident memory (MiB)"))
    ):
        top = panel * height
        y_max = max(r[key] for r in rows) * 1.15
        sx = lambda v: pad + (width - 2 * pad) * v / x_max
        sy = lambda v: top + height - pad - (height - 2 * pad) * v / y_max
        draw.line([(pad, top + pad), (pad, top + height - pad), (width - pad, top + height - pad)], fill="black")
        draw.text((pad, top + 15), label + "  vs  output megapixels (4x, default tiling)", fill="black")
        for frac in (0.25, 0.5, 0.75, 1.0):
            draw.text((5, sy(y_max * frac) - 6), f"{y_max * frac:.0f}", fill="gray")
        for mp in sorted({r["megapixels"] for r in rows}):
            draw.text((sx(mp) - 12, top + height - pad + 8), f"{mp:.2f}", fill="gray")
        for i, backend in enumerate(sorted({r["backend"] for r in rows})):
            points = [(sx(r["megapixels"]), sy(r[key])) for r in rows if r["backend"] == backend]
            draw.line(points, fill=colours.get(backend, "black"), width=3)
            for x, y in points:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colours.get(backend, "black"))
            draw.text((width - 220, top + pad + 18 * i), backend, fill=colours.get(backend, "black"))
    image.save(path)


def main(argv: list[str] | None = None) -> dict | None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("BACKEND", "SIDE"), help=argparse.SUPPRESS)
    ap.add_argument("--engines", help=argparse.SUPPRESS)
    ap.add_argument("--sides", default="512,724,1024,1448,2048", help="output sides (0.26 to 4.2 MP by default)")
    ap.add_argument("--backends", default="torch,onnxruntime", help=f"some of {','.join(BACKENDS)}")
    ap.add_argument("--model", help="model folder (default: the bundled model)")
    ap.add_argument("--threads", type=int, default=2)
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.model, args.engines, args.threads)))
        return None
    result = run([int(s) for s in args.sides.split(",")], args.backends.split(","), args.model, args.threads)
    result["machine"] = machine()
    png = results_dir(args.replace) / "size_scaling.png"
    plot(result, png)
    print(f"wrote {write('size_scaling', result, 'size_scaling', args.replace)} and {png}")
    return result


if __name__ == "__main__":
    main()
