"""Where the time of one upscale goes, stage by stage, on the torch backend and on ONNX Runtime engines, timed in
one run: a PNG decoded, upscaled by the bundled model through ``Upscaler.upscale`` with its default tiling, encoded to
PNG again. The stages are the ones idm_rt marks (:mod:`idm_rt.stage_timing`), recorded around the call, so the code
timed is the code that runs; each stage's time is its own (nested stages excepted), and they add up to the total.

    python -m benchmarks.stage_profile --threads 1                  # 256x256 photo at 4x (1 MP), defaults and fast
    python -m benchmarks.stage_profile --side 512 --quality default --repeats 2

The photo is scikit-image's astronaut resized to ``--side``/4. The engines are the fp32 ONNX Runtime ones
``from_pretrained(backend="onnxruntime")`` builds (or reuses from its cache). The contestants alternate round by
round; each stage's median over the rounds is reported, with the median total. Writes ``stage_profile.json`` and
``stage_profile.md`` in ``benchmarks/scratch/`` (``benchmarks/results/`` with ``--replace``).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

import idm_rt
from idm_rt.fileio import atomic_write
from idm_rt.image_files import encode_image, read_image
from idm_rt.stage_timing import STAGES, UNET, recording

from .common import ORT_SETTLE_S, add_replace_argument, write

# The stages this benchmark adds around the library's.
DECODE, UPSCALER, ENCODE = "decode PNG", "Upscaler: checks, arrays in and out", "encode PNG"
ORDER = (DECODE, UPSCALER, *STAGES, ENCODE)


def photo_png(side: int) -> bytes:
    """scikit-image's astronaut resized to side x side, as PNG bytes."""
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((side, side), Image.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def upscalers(backends: list[str], threads: int) -> dict[str, idm_rt.Upscaler]:
    """The bundled model on each backend (engines built or taken from the cache), ``threads`` intra-op threads."""
    ups = {}
    for backend in backends:
        if backend == "torch":
            ups[backend] = idm_rt.Upscaler.from_pretrained()
        else:
            ups[backend] = idm_rt.Upscaler.from_pretrained(backend=backend, runner_options={"threads": threads})
    idm_rt.configure_threads(threads)  # (after a build, which sets its own)
    for up in ups.values():
        warm_up(up)
    return ups


def warm_up(up: idm_rt.Upscaler) -> None:
    """One tiny upscale: first-call allocations and lazily built tables stay out of the timings."""
    up.upscale(np.zeros((32, 32, 3), np.uint8), scale=4, progress=False)


def profile_once(up: idm_rt.Upscaler, png: bytes, quality: str) -> dict:
    """One decode, 4x upscale and encode with every stage timed: seconds and entries per stage, the wall time."""
    start = time.perf_counter()
    with recording() as clock:
        with clock.stage(DECODE):
            image = read_image(io.BytesIO(png))
        with clock.stage(UPSCALER):
            out = up.upscale(image, scale=4.0, seed=0, progress=False, quality=quality)
        with clock.stage(ENCODE):
            encode_image(out, "PNG", io.BytesIO())
    wall = time.perf_counter() - start
    return {"stages": dict(clock.seconds), "calls": dict(clock.calls), "wall_s": wall}


def summarise(runs: list[dict]) -> dict:
    """Median seconds of each stage over the rounds (in :data:`ORDER`), the median wall time, the U-Net calls per
    image and their mean seconds."""
    names = sorted({n for r in runs for n in r["stages"]}, key=lambda n: ORDER.index(n))
    stages = {n: statistics.median(r["stages"].get(n, 0.0) for r in runs) for n in names}
    calls = runs[0]["calls"].get(UNET, 0)
    return {
        "stages_s": stages,
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "wall_all_s": [r["wall_s"] for r in runs],
        "unet_calls_per_image": calls,
        "unet_call_mean_s": stages.get(UNET, 0.0) / calls if calls else None,
        "rounds": len(runs),
    }


def table(result: dict) -> str:
    """Markdown: one row per stage, one column per (backend, preset): median seconds and share of the total."""
    columns = [(b, q) for b in result["backends"] for q in result["qualities"]]
    profiles = [result["profile"][b][q] for b, q in columns]
    names = [n for n in ORDER if any(n in p["stages_s"] for p in profiles)]
    lines = ["| stage | " + " | ".join(f"{b}, {q}" for b, q in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for n in names:
        cells = [
            f"{p['stages_s'].get(n, 0.0):.2f} ({100 * p['stages_s'].get(n, 0.0) / p['wall_s']:.0f}%)" for p in profiles
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append(
        "| U-Net calls x mean s | "
        + " | ".join(
            f"{p['unet_calls_per_image']} x {p['unet_call_mean_s']:.3f}" if p["unet_calls_per_image"] else "0"
            for p in profiles
        )
        + " |"
    )
    lines.append("| **total (wall)** | " + " | ".join(f"**{p['wall_s']:.2f}**" for p in profiles) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=1024, help="output side, 64..4096 (the input is side/4)")
    ap.add_argument("--quality", default="default,fast", help="sampling presets to profile")
    ap.add_argument("--backends", default="torch,onnxruntime")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="rounds, 1..20")
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded with the results)")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    if not 64 <= args.side <= 4096 or not 1 <= args.repeats <= 20:
        ap.error("--side must be in 64..4096 and --repeats in 1..20")
    idm_rt.configure_allocator()
    png = photo_png(args.side // 4)
    qualities, backends = args.quality.split(","), args.backends.split(",")
    ups = upscalers(backends, args.threads)
    runs: dict = {b: {q: [] for q in qualities} for b in backends}
    for r in range(args.repeats):
        for q in qualities:
            for b, up in ups.items():
                time.sleep(ORT_SETTLE_S)
                runs[b][q].append(profile_once(up, png, q))
                print(f"round {r + 1}: {b}, {q}: {runs[b][q][-1]['wall_s']:.2f} s", flush=True)
    up = next(iter(ups.values()))
    result = {
        "input": f"scikit-image astronaut resized to {args.side // 4}x{args.side // 4}, PNG",
        "output": f"{args.side}x{args.side}",
        "threads": args.threads,
        "note": args.note,
        "backends": backends,
        "qualities": qualities,
        "tiles": {b: u.choose_tile((args.side, args.side)) for b, u in ups.items()},
        "settings": {q: idm_rt.sampling.choose_preset(q, up.sampling, up.presets).to_dict() for q in qualities},
        "profile": {b: {q: summarise(runs[b][q]) for q in qualities} for b in backends},
    }
    result["table"] = table(result)
    print(result["table"])
    path = write("stage_profile", result, "stage_profile", args.replace)
    text = (
        f"# Stage profile, {result['output']} output\n\n`{json.loads(path.read_text())['command']}`\n\n"
        f"Threads: {args.threads}. {args.note}\n\nMedian seconds (share of the total) over {args.repeats} "
        f"interleaved rounds; each stage's own time.\n\n{result['table']}\n"
    )
    atomic_write(path.with_suffix(".md"), lambda p: Path(p).write_text(text))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
