"""Quality against time, one table to choose from: the bundled model's ``fast`` preset (its own HR estimate,
back-projected, no U-Net call), its defaults (one U-Net step), two steps (the defaults before 2026-12-07) and its
``detailed`` preset; PSNR and SSIM (Y, border
cropped; means over scikit-image's photos, held out from training, :func:`training.evaluate.evaluate`), the fine
detail fraction and NIQE (medians) and Consistency at each scale, and the seconds
per 1-megapixel image (a 256x256 photo upscaled 4x to 1024x1024) on the torch backend and the ONNX Runtime engines.

    python -m benchmarks.quality_cost --threads 1
    python -m benchmarks.quality_cost --scales 2,4 --crop 192 --repeats 3

The timings alternate between the settings and backends round by round (medians; the ratio of each to the
defaults on the same backend). Writes ``quality_cost.json`` and ``.md`` in ``benchmarks/scratch/``
(``benchmarks/results/`` with ``--replace``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import time
from pathlib import Path

import idm_rt
from idm_rt.fileio import atomic_write
from idm_rt.image_files import read_image
from idm_rt.sampling import choose_preset
from idm_rt.training.evaluate import SKIMAGE_PHOTOS, evaluate, load_images

from .common import ORT_SETTLE_S, add_replace_argument, write
from .stage_profile import photo_png, upscalers

# Name -> (preset, settings changed from it).
CHOICES = {
    "fast (0 U-Net calls)": ("fast", {}),
    "defaults": ("default", {}),
    "2 steps": ("default", {"steps": 2}),
    "detailed": ("detailed", {}),
}
# The quality columns, per scale: (key of training.evaluate's rows, heading, digits).
MEASURES = (
    ("psnr", "PSNR", 2),
    ("ssim", "SSIM", 4),
    ("detail", "detail", 3),
    ("niqe", "NIQE", 2),
    ("cons", "Consistency", 2),
)


def table(result: dict) -> str:
    scales, backends = result["scales"], result["backends"]
    head = (
        ["setting", "U-Net calls / tile"]
        + [f"{heading} {s:g}x" for _, heading, _ in MEASURES for s in scales]
        + [f"s / image, {b} (x defaults)" for b in backends]
    )
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, row in result["rows"].items():
        cells = [name, str(row["settings"]["steps"])]
        cells += [f"{row['quality'][f'{s:g}'][key]:.{digits}f}" for key, _, digits in MEASURES for s in scales]
        cells += [f"{row['time'][b]['median_s']:.2f} ({row['time'][b]['ratio_to_defaults']:.2f})" for b in backends]
        lines.append("| " + " | ".join(cells) + " |")
    bicubic = result["bicubic"]
    cells = [f"{bicubic[f'{s:g}'][key]:.{digits}f}" for key, _, digits in MEASURES for s in scales]
    lines.append("| bicubic | - | " + " | ".join(cells) + " |" + " - |" * len(backends))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="2,4", help="comma-separated magnifications of the quality columns")
    ap.add_argument("--crop", type=int, default=192, help="HR crop side of the quality images")
    ap.add_argument("--side", type=int, default=1024, help="timed output side, 64..4096 (input: a quarter)")
    ap.add_argument("--backends", default="torch,onnxruntime")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds, 1..20")
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded with the results)")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    if not 1 <= args.repeats <= 20 or not 64 <= args.side <= 4096:
        ap.error("--repeats must be in 1..20 and --side in 64..4096")
    scales = [float(v) for v in args.scales.split(",")]
    backends = args.backends.split(",")
    idm_rt.configure_allocator()
    ups = upscalers(backends, args.threads)
    up = ups["torch"] if "torch" in ups else idm_rt.Upscaler.from_pretrained()
    settings = {
        name: dataclasses.replace(choose_preset(preset, up.sampling, up.presets), **changed)
        for name, (preset, changed) in CHOICES.items()
    }
    images = load_images("skimage", args.crop)
    quality, bicubic = {}, {}
    for name, s in settings.items():
        rows = evaluate(up.model, images, scales, s)
        quality[name] = {f"{r['scale']:g}": {key: r[key] for key, _, _ in MEASURES} for r in rows}
        bicubic = {f"{r['scale']:g}": {key: r[f"{key}_bic"] for key, _, _ in MEASURES} for r in rows}
    image = read_image(io.BytesIO(photo_png(args.side // 4)))
    times = {name: {b: [] for b in backends} for name in settings}
    for r in range(args.repeats):
        for name, (preset, changed) in CHOICES.items():
            for b, u in ups.items():
                time.sleep(ORT_SETTLE_S)
                start = time.perf_counter()
                u.upscale(image, scale=4.0, seed=0, progress=False, quality=preset, **changed)
                times[name][b].append(time.perf_counter() - start)
                print(f"round {r + 1}: {name}, {b}: {times[name][b][-1]:.2f} s", flush=True)
    medians = {name: {b: statistics.median(t) for b, t in per.items()} for name, per in times.items()}
    result = {
        "images": "scikit-image photos: " + ", ".join(SKIMAGE_PHOTOS),
        "crop": args.crop,
        "scales": scales,
        "timed": f"scikit-image astronaut resized to {args.side // 4}x{args.side // 4}, upscaled 4x to "
        f"{args.side}x{args.side} ({args.side**2 / 1e6:.2f} MP)",
        "threads": args.threads,
        "note": args.note,
        "backends": backends,
        "bicubic": bicubic,
        "rows": {
            name: {
                "settings": settings[name].to_dict(),
                "quality": quality[name],
                "time": {
                    b: {
                        "median_s": medians[name][b],
                        "all_s": times[name][b],
                        "ratio_to_defaults": medians[name][b] / medians["defaults"][b],
                    }
                    for b in backends
                },
            }
            for name in settings
        },
    }
    result["table"] = table(result)
    print(result["table"])
    path = write("quality_cost", result, "quality_cost", args.replace)
    text = (
        f"# Quality against time\n\n`{json.loads(path.read_text())['command']}`\n\n"
        f"Threads: {args.threads}. {args.note}\n\nPSNR/SSIM: Y channel, means over {result['images']} "
        f"({args.crop}-px crops). Seconds per image, {result['timed']}: medians of {args.repeats} interleaved "
        f"rounds (ratio to the defaults on the same backend).\n\n{result['table']}\n"
    )
    atomic_write(path.with_suffix(".md"), lambda p: Path(p).write_text(text))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
