"""ONNX Runtime engines against the torch backend at three output sizes, in one run: a photo upscaled 4x to 512x512,
1024x1024 and 2048x2048 (0.26, 1 and 4 megapixels) by the bundled model at its defaults through ``Upscaler.upscale``,
each backend with its own default tiling; and the engines with a given tile side (``--engine-tiles``, e.g. the
largest bucket's square, the rule before the tiles were fitted to the output) to see what the tiling costs.

    python -m benchmarks.engine_sizes --threads 1 --engine-tiles 256
    python -m benchmarks.engine_sizes --sides 512,1024 --repeats 3
    python -m benchmarks.engine_sizes --engine-dirs engines/tiles-256-384    # engines built with other buckets

The engines are the fp32 ONNX Runtime ones ``from_pretrained(backend="onnxruntime")`` builds (or reuses from its
cache). Contestants alternate within each round, sizes one after another; medians over the rounds, the ratio of
each median to torch's, and each output's largest difference from the engines' default output in 8-bit levels.
Writes ``engine_sizes.json`` and ``.md`` in ``benchmarks/scratch/`` (``benchmarks/results/`` with ``--replace``).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np

import idm_rt
from idm_rt.fileio import atomic_write
from idm_rt.image_files import read_image
from idm_rt.tiling import TilePlan

from .common import ORT_SETTLE_S, add_replace_argument, write
from .stage_profile import photo_png, upscalers, warm_up


def contestants(
    ups: dict[str, idm_rt.Upscaler], engine_tiles: list[int], engine_dirs: list[str], threads: int
) -> dict[str, tuple[idm_rt.Upscaler, dict]]:
    """Name -> (upscaler, extra upscale arguments): each backend at its own tiling, the engines at each given tile,
    and each given engine directory (``threads`` intra-op threads) at its own tiling."""
    named = {b: (up, {}) for b, up in ups.items()}
    for t in engine_tiles:
        named[f"onnxruntime, tile {t}"] = (ups["onnxruntime"], {"tile": t})
    for folder in engine_dirs:
        up = idm_rt.Upscaler.from_engines(folder, runner_options={"threads": threads})
        warm_up(up)
        buckets = ",".join(str(b.height) if b.height == b.width else f"{b.width}x{b.height}" for b in up.model.buckets)
        named[f"onnxruntime {up.model.manifest.precision}, buckets {buckets}"] = (up, {})
    return named


def tiling(up: idm_rt.Upscaler, side: int, extra: dict) -> dict:
    """The tile side an upscale of side x side uses, its tile count and tiled pixels per output pixel."""
    tile = extra.get("tile", up.choose_tile((side, side)))
    if tile is None:
        return {"tile": None, "tiles": 1, "tiled_pixels_per_pixel": 1.0}
    plan = TilePlan.for_image((side, side), tile, up.model.config.size_multiple)
    return {
        "tile": tile,
        "tiles": len(plan.tiles),
        "tiled_pixels_per_pixel": sum(h * w for _, _, h, w in plan.tiles) / side**2,
    }


def _same_run(named: dict, name: str, side: int) -> bool:
    """Whether contestant ``name`` runs the engines with the tile they choose themselves at ``side`` (not rerun: its
    times are theirs)."""
    up, extra = named[name]
    return name != "onnxruntime" and up is named["onnxruntime"][0] and extra.get("tile") == up.choose_tile((side, side))


def table(result: dict) -> str:
    names = list(result["sizes"][0]["contestants"])
    lines = [
        "| output | "
        + " | ".join(f"{n}: s (x torch)" for n in names)
        + " | tile, tiles (tiled px / px), largest difference from the engines' default output |",
        "|---" * (len(names) + 2) + "|",
    ]
    for row in result["sizes"]:
        cells = [f"{c['median_s']:.2f} ({c['ratio_to_torch']:.2f})" for c in row["contestants"].values()]
        tiles = "; ".join(
            f"{n}: {c['tiling']['tile']}, {c['tiling']['tiles']} "
            f"({c['tiling']['tiled_pixels_per_pixel']:.2f}), "
            f"max diff {c['max_diff_to_engine_default_8bit']}/255"
            for n, c in row["contestants"].items()
        )
        lines.append(f"| {row['output']} ({row['megapixels']:.2f} MP) | " + " | ".join(cells) + f" | {tiles} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", default="512,1024,2048", help="output sides, each 64..4096 (inputs are a quarter)")
    ap.add_argument("--engine-tiles", default="", help="tile sides the engines also run with (comma-separated)")
    ap.add_argument(
        "--engine-dirs", default="", help="engine directories (python -m idm_rt.build) also run (comma-separated)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="rounds, 1..20")
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded with the results)")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    sides = [int(v) for v in args.sides.split(",")]
    tiles = [int(v) for v in args.engine_tiles.split(",") if v]
    if not all(64 <= s <= 4096 for s in sides) or not 1 <= args.repeats <= 20:
        ap.error("--sides must be in 64..4096 and --repeats in 1..20")
    idm_rt.configure_allocator()
    dirs = [d for d in args.engine_dirs.split(",") if d]
    named = contestants(upscalers(["torch", "onnxruntime"], args.threads), tiles, dirs, args.threads)
    images = {s: read_image(io.BytesIO(photo_png(s // 4))) for s in sides}
    times = {s: {n: [] for n in named} for s in sides}
    outputs: dict = {s: {} for s in sides}
    for r in range(args.repeats):
        for s in sides:
            for n, (up, extra) in named.items():
                if _same_run(named, n, s):  # the same tiles as the engines' default: the same computation
                    continue
                time.sleep(ORT_SETTLE_S)
                start = time.perf_counter()
                out = up.upscale(images[s], scale=4.0, seed=0, progress=False, **extra)
                times[s][n].append(time.perf_counter() - start)
                outputs[s][n] = np.asarray(out)
                print(f"round {r + 1}: {s}x{s}, {n}: {times[s][n][-1]:.2f} s", flush=True)
    rows = []
    for s in sides:
        for n in named:
            if _same_run(named, n, s):
                times[s][n], outputs[s][n] = times[s]["onnxruntime"], outputs[s]["onnxruntime"]
        torch_s = statistics.median(times[s]["torch"])
        ref = outputs[s]["onnxruntime"].astype(np.int16)
        rows.append(
            {
                "output": f"{s}x{s}",
                "megapixels": s * s / 1e6,
                "contestants": {
                    n: {
                        "median_s": statistics.median(times[s][n]),
                        "all_s": times[s][n],
                        "ratio_to_torch": statistics.median(times[s][n]) / torch_s,
                        "tiling": tiling(up, s, extra),
                        "max_diff_to_engine_default_8bit": int(np.abs(outputs[s][n].astype(np.int16) - ref).max()),
                    }
                    for n, (up, extra) in named.items()
                },
            }
        )
    result = {
        "input": "scikit-image astronaut resized to side/4, upscaled 4x at the model's defaults",
        "threads": args.threads,
        "note": args.note,
        "sizes": rows,
    }
    result["table"] = table(result)
    print(result["table"])
    path = write("engine_sizes", result, "engine_sizes", args.replace)
    text = (
        f"# Engines against torch by output size\n\n`{json.loads(path.read_text())['command']}`\n\n"
        f"Threads: {args.threads}. {args.note}\n\nMedian seconds per image over {args.repeats} interleaved "
        f"rounds (ratio to torch's median); the tiles each used.\n\n{result['table']}\n"
    )
    atomic_write(path.with_suffix(".md"), lambda p: Path(p).write_text(text))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
