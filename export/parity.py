"""``python -m idm_rt.export.parity DIR``: every graph of a built engine directory against the torch float32
model it was built from, on random inputs; prints the relative error per graph.

Relative error = ||engine - torch|| / ||torch|| (L2 over all outputs of the graph). Limits: 1e-4 for
float32 graphs, 1e-2 for float16 ones, 1e-1 for int8 ones: quantisation error is not rounding error,
so an int8 U-Net is judged by its images too (:mod:`.int8_check`, which every int8 build runs, and
``python -m benchmarks.int8_onnx``); measured here: 3.6e-3 for the bundled model's (256x256), 6e-2 for an
untrained test network's. Exit status 0 when every graph is within its limit, else 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection

import torch

from idm_rt.arrays import to_host
from idm_rt.backends import ENGINE_BACKENDS, EngineRunner, load_runner
from idm_rt.backends.engine_dir import graph_inputs
from idm_rt.checkpoints import load_model, model_hash

from .graphs import graph_module, sample_inputs

LIMITS = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-1}
DYNAMIC_SIZES = ((40, 24), (13, 57))  # (H, W) at which the graphs with dynamic sizes are checked


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """L2 norm of the difference over the L2 norm of the reference, all outputs together."""
    diff = sum(float((g.float() - w.float()).pow(2).sum()) for g, w in zip(got, want))
    ref = sum(float(w.float().pow(2).sum()) for w in want)
    return (diff / max(ref, 1e-30)) ** 0.5


def graph_errors(
    runner: EngineRunner, model, seed: int = 0, keys: Collection[str] | None = None
) -> list[tuple[str, str, str, float]]:
    """(graph, precision, batch x size, relative error) for every graph (or those of ``keys``): the static
    U-Nets at each end of their batch range, the graphs with dynamic sizes at a few sizes no power of two
    divides."""
    rows = []
    for key, entry in runner.manifest.graphs.items():
        if keys is not None and key not in keys:
            continue
        kind, _, name = key.partition("/")
        bucket = next((b for b in runner.buckets if b.name == name), None)
        if kind == "unet":
            cases = [(batch, None) for batch in sorted({bucket.min_batch, bucket.max_batch})]
        else:
            cases = [(2 if kind == "unet_dynamic" else 1, size) for size in DYNAMIC_SIZES]
        for batch, size in cases:
            args = sample_inputs(model, kind, bucket, batch, seed, size=size)
            with torch.no_grad():
                want = graph_module(model, kind)(*args)
            want = list(want) if isinstance(want, tuple) else [want]
            feeds = dict(zip(graph_inputs(kind, model.config), args))
            got = [torch.as_tensor(to_host(g)) for g in runner.run_graph(key, feeds)]
            shape = "x".join(map(str, args[0].shape[-2:] if kind != "encoder_block" else (len(args[1]), len(args[2]))))
            rows.append((key, entry.precision, f"{batch} x {shape}", relative_error([g.cpu() for g in got], want)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m idm_rt.export.parity", description=__doc__.split("\n\n")[0].replace("``", "")
    )
    ap.add_argument("folder", metavar="DIR", help="engine directory written by python -m idm_rt.build")
    ap.add_argument("--model", help="the torch model (default: the path recorded in the manifest)")
    ap.add_argument("--backend", choices=ENGINE_BACKENDS, help="default: the directory's backend")
    ap.add_argument("--device", help="default: cuda for tensorrt, cpu for onnxruntime")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        runner = load_runner(args.folder, args.backend, args.device)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        model = load_model(args.model or runner.manifest.model_path)
    except (FileNotFoundError, ValueError) as e:
        hint = "" if args.model else f" (the model path {args.folder}'s manifest records; --model PATH gives another)"
        print(f"error: {e}{hint}", file=sys.stderr)
        return 1
    if model_hash(model) != runner.manifest.model_hash:
        print(
            f"error: the model (hash {model_hash(model)}) is not the one {args.folder} was built from "
            f"({runner.manifest.model_hash})",
            file=sys.stderr,
        )
        return 1
    failed = 0
    print(f"{'graph':<32} {'precision':<9} {'batch x size':>14} {'rel. error':>11}  limit")
    for key, precision, case, err in graph_errors(runner, model, args.seed):
        ok = err < LIMITS[precision]
        failed += not ok
        print(f"{key:<32} {precision:<9} {case:>14} {err:>11.2e}  {LIMITS[precision]:.0e} {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
