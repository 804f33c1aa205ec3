"""What the engines' tile rule weighs: how many times faster per pixel a U-Net call runs on a bucket's static graph
than on ONNX Runtime's float32 dynamic graph (``OnnxRuntimeRunner.static_speedup``), for the fp32 (Winograd) engines
``from_pretrained(backend="onnxruntime")`` builds and, with ``--int8-dir``, an int8 engine directory built with the
same buckets; torch's call beside them.

    python -m benchmarks.static_speedup --int8-dir engines/int8 --repeats 7

For each bucket side s, one call each in turn per round: the dynamic graph at s x (s - 8) (a size no static graph
takes), each static graph at s x s, torch at s x s; medians of the per-pixel times over the rounds, and the ratios to
the dynamic graph's. Writes ``static_speedup.json`` and ``.md`` in ``benchmarks/scratch/`` (``benchmarks/results/``
with ``--replace``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import idm_rt
from idm_rt.fileio import atomic_write
from idm_rt.model.protocol import SamplingModel

from .common import add_replace_argument, write


def _call(model: SamplingModel, height: int, width: int):
    """A U-Net call of ``model`` (the torch model or an engine runner) on a fixed random tile of height x width,
    conditioned on itself at 4x."""
    rng = np.random.default_rng(0)
    x = model.asarray(np.clip(rng.standard_normal((1, 3, height, width), dtype=np.float32) * 0.3, -1, 1))
    g = model.asarray(np.array([0.9], dtype=np.float32))
    with model.sampling():
        c = model.condition(x, model.scale_fraction([4.0]))

    def run():
        with model.sampling():
            model.denoise(x, c, g)

    return run


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8-dir", default="", help="an int8 engine directory with the same buckets")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7, help="rounds, 1..50")
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded with the results)")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    if not 1 <= args.repeats <= 50:
        ap.error("--repeats must be in 1..50")
    options = {"threads": args.threads}
    fp32 = idm_rt.Upscaler.from_pretrained(backend="onnxruntime", runner_options=options).model
    int8 = idm_rt.Upscaler.from_engines(args.int8_dir, runner_options=options).model if args.int8_dir else None
    model = idm_rt.Upscaler.from_pretrained().model
    idm_rt.configure_threads(args.threads)
    sides = sorted({b.height for b in fp32.buckets if b.height == b.width})
    calls = {}
    for s in sides:
        calls[(s, "fp32 dynamic graph")] = (_call(fp32, s, s - 8), s * (s - 8))
        calls[(s, "fp32 static graph")] = (_call(fp32, s, s), s * s)
        if int8 is not None:
            calls[(s, "int8 static graph")] = (_call(int8, s, s), s * s)
        calls[(s, "torch")] = (_call(model, s, s), s * s)
    for run, _ in calls.values():
        run()
    times = {k: [] for k in calls}
    for _ in range(args.repeats):
        for k, (run, pixels) in calls.items():
            start = time.perf_counter()
            run()
            times[k].append((time.perf_counter() - start) / pixels * 1e6)
    rows = []
    for (s, name), per_pixel in times.items():
        us = statistics.median(per_pixel)
        dynamic = statistics.median(times[(s, "fp32 dynamic graph")])
        rows.append({"side": s, "call": name, "us_per_pixel": us, "speedup_over_dynamic": dynamic / us})
    result = {
        "threads": args.threads,
        "note": args.note,
        "rounds": args.repeats,
        "engines": {"fp32": str(fp32.folder), "int8": args.int8_dir or None},
        "rows": rows,
    }
    path = write("static_speedup", result, "static_speedup", args.replace)
    lines = [
        "# Static U-Net graphs against the dynamic one, per pixel",
        "",
        f"`{json.loads(path.read_text())['command']}`",
        "",
        f"Threads: {args.threads}. {args.note}",
        "",
        f"Median microseconds per pixel of one U-Net call over {args.repeats} interleaved rounds; the dynamic graph at "
        "s x (s - 8), the others at s x s.",
        "",
        "| side | call | us / pixel | x the dynamic graph's speed |",
        "|---|---|---|---|",
        *(f"| {r['side']} | {r['call']} | {r['us_per_pixel']:.2f} | {r['speedup_over_dynamic']:.2f} |" for r in rows),
    ]
    atomic_write(path.with_suffix(".md"), lambda p: Path(p).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines[-len(rows) - 2 :]))
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
