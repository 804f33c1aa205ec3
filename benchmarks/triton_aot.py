"""Ahead-of-time compilation of the Triton kernels for NVIDIA GPUs, on a machine without one.

Every launch the layer's launchers make (:mod:`idm_rt.kernels.triton_implicit`) is recorded on CPU
tensors for the implicit levels of the ``official`` and ``small`` presets (tiles of 128 and 256 pixels
and an odd 57x13 tile, batch 1 and 2, float32 with IEEE and TF32 products, float16, bfloat16, with and
without the hidden ReLU). Each kernel is compiled with every autotune config, for each compute capability,
in each of its variants (argument dtypes, ReLU, IEEE or TF32 products; one specialisation of the integer
arguments each, Triton's divisibility by 16 and values of 1, or all of them with
``--all-specialisations``), through Triton's own binder and ``triton.compile`` with a ``GPUTarget``, down
to a cubin (ptxas). Shared memory per block is checked against the card's opt-in limit: a config over it
is one the autotuner skips on that card; a variant with no config under it would fail there.

    python -m benchmarks.triton_aot                 # the sweep: benchmarks/results/triton_aot.json
    python -m benchmarks.triton_aot --ci            # a representative few (tests/test_triton_aot.py)

Run it without ``TRITON_INTERPRET`` (the interpreter's kernels do not compile).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .common import add_replace_argument, write

# Shared memory one block may use (opt-in maximum), bytes, per compute capability: the CUDA C++
# Programming Guide's technical specifications (A100 8.0: 163 KB; RTX 30xx/A10 8.6 and L4/RTX 40xx 8.9:
# 99 KB; H100 9.0: 227 KB).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
KERNELS = ("_mlp_kernel", "_map_kernel", "_gather_kernel")
# --ci: (kernel, dtype, relu, config index, capability), a few of each kernel, each dtype and both targets
CI_PICKS = [
    ("_mlp_kernel", "float32", False, 0, 90),
    ("_mlp_kernel", "float16", True, 3, 80),
    ("_map_kernel", "bfloat16", False, 2, 80),
    ("_gather_kernel", "float32", False, 2, 90),
]


@dataclass
class Launch:
    """One kernel launch as the launcher made it: the autotuned kernel, its arguments and the case."""

    kernel: str
    args: tuple
    kwargs: dict
    case: dict


def layer_cases() -> Iterator[dict]:
    """(channels, source and target sizes, batch, dtype, relu, tf32) of the implicit levels to record."""
    from idm_rt import preset
    from idm_rt.model.tables import level_sizes

    for name in ("official", "small"):
        cfg = preset(name)
        for tile in ((128, 128), (256, 256), (57, 13)):
            sizes = level_sizes(tile, cfg.levels)
            for i in range(1, cfg.levels):
                for batch in (1, 2):
                    for dtype, tf32 in (("float32", False), ("float32", True), ("float16", False), ("bfloat16", False)):
                        for relu in (False, True):
                            yield {
                                "preset": name,
                                "channels": cfg.channels[i],
                                "src": sizes[i],
                                "dst": sizes[i - 1],
                                "batch": batch,
                                "dtype": dtype,
                                "tf32": tf32,
                                "relu": relu,
                            }


def record(cases: Iterator[dict]) -> list[Launch]:
    """Every launch the launchers make for ``cases``, on CPU tensors, with the kernels replaced by recorders."""
    from idm_rt.kernels import triton_implicit as ti
    from idm_rt.model.implicit import query_tables

    launches: list[Launch] = []
    case: dict = {}

    class Recorder:
        def __init__(self, name: str):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(Launch(self.name, args, kwargs, dict(case)))

    saved = {name: getattr(ti, name) for name in KERNELS}
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for name in KERNELS:
            setattr(ti, name, Recorder(name))
        for case in cases:
            dtype = getattr(torch, case["dtype"])
            (hs, ws), (hh, ww), c, b = case["src"], case["dst"], case["channels"], case["batch"]
            x, a, bias = torch.zeros(b, c, hs, ws, dtype=dtype), torch.zeros(b, c), torch.zeros(c)
            w1, b1, w2 = torch.zeros(256, c + 2, dtype=dtype), torch.zeros(256), torch.zeros(c, 256, dtype=dtype)
            tables = tuple(t.contiguous() for t in query_tables((hs, ws), (hh, ww)))
            torch.backends.cuda.matmul.allow_tf32 = case["tf32"]
            ti.mlp_upsample(x, x, a, a, bias, w1, b1, w2, bias, tables, case["relu"])
            if not case["relu"]:  # the folded form is for linear weights only
                m = torch.zeros(c, c)
                ti.folded_upsample(x, x, a, a, bias, m, bias, bias, bias, tables)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        for name, kernel in saved.items():
            setattr(ti, name, kernel)
    return launches


def specialise(launch: Launch, config, capability: int):
    """(ASTSource, target, options) of ``launch`` with autotune ``config`` for ``capability``: Triton's own
    binder specialises the arguments as a launch on that GPU would."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from idm_rt.kernels import triton_implicit as ti

    fn = getattr(ti, launch.kernel).fn
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {**launch.kwargs, **config.all_kwargs()}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(fn, signature, constexprs, attrs), target, options


def distinct(launches: list[Launch], every_specialisation: bool) -> list[Launch]:
    """One launch per kernel and specialisation (what Triton compiles once), the first seen; or, unless
    ``every_specialisation``, one per kernel variant (dtypes, ReLU, product precision)."""
    seen, out = set(), []
    for launch in launches:
        src, _, options = specialise(launch, _configs(launch.kernel)[0], 90)
        spec = f"{src.hash()[:12]}-{options.hash()[:12]}"
        variant = (
            launch.kernel,
            launch.case["dtype"],
            launch.case["relu"] and launch.kernel == "_mlp_kernel",
            launch.kwargs.get("PRECISION"),
        )
        key = spec if every_specialisation else variant
        if key not in seen:
            seen.add(key)
            launch.case["specialisation"] = spec
            out.append(launch)
    return out


def _configs(kernel: str) -> list:
    from idm_rt.kernels import triton_implicit as ti

    return getattr(ti, kernel).configs


def compile_one(launch: Launch, index: int, capability: int) -> dict:
    """Compile ``launch`` with autotune config ``index`` for ``capability``: a result row (shared memory,
    whether it fits the card, seconds), or the error."""
    import triton

    config = _configs(launch.kernel)[index]
    row = {
        "kernel": launch.kernel,
        "config": index,
        "capability": capability,
        "case": {
            k: launch.case[k] for k in ("dtype", "tf32", "relu", "channels", "src", "dst", "batch", "specialisation")
        },
    }
    start = time.perf_counter()
    try:
        src, target, options = specialise(launch, config, capability)
        row["signature"] = {k: v for k, v in src.signature.items() if v != "constexpr"}
        kernel = triton.compile(src, target=target, options=options.__dict__)
    except Exception as e:  # noqa: BLE001 (a failed compilation is this sweep's result, whatever raised it)
        return row | {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000], "seconds": time.perf_counter() - start}
    shared = int(kernel.metadata.shared)
    return row | {
        "ok": bool(kernel.asm.get("cubin")),
        "shared_bytes": shared,
        "fits": shared <= SHARED_LIMIT[capability],
        "seconds": time.perf_counter() - start,
    }


def sweep(capabilities: list[int], ci: bool, every_specialisation: bool = False, log=print) -> dict:
    """Compile every distinct launch with every config for every capability (``ci``: :data:`CI_PICKS`)."""
    launches = distinct(record(layer_cases()), every_specialisation)
    jobs = []
    if ci:
        for kernel, dtype, relu, index, cap in CI_PICKS:
            launch = next(
                la
                for la in launches
                if la.kernel == kernel and la.case["dtype"] == dtype and la.case["relu"] == relu and not la.case["tf32"]
            )
            jobs.append((launch, index, cap))
    else:
        jobs = [(la, i, cap) for cap in capabilities for la in launches for i in range(len(_configs(la.kernel)))]
    log(f"{len(launches)} kernel variants, {len(jobs)} compilations")
    rows = []
    for n, (launch, index, cap) in enumerate(jobs, 1):
        rows.append(compile_one(launch, index, cap))
        r = rows[-1]
        log(
            f"[{n}/{len(jobs)}] sm_{cap} {r['kernel']} config {index} {r['case']['dtype']}: "
            + (
                f"{r['shared_bytes']} B shared{'' if r['fits'] else ' OVER THE LIMIT'}"
                if r["ok"]
                else f"FAILED {r.get('error', 'no cubin')}"
            )
            + f" ({r['seconds']:.1f} s)"
        )
    return {
        "rows": rows,
        "summary": summarise(rows),
        "variants": len(launches),
        "every_specialisation": every_specialisation,
    }


def summarise(rows: list[dict]) -> dict:
    """Per kernel and capability: compilations, failures, configs over the shared-memory limit, the largest
    shared memory, compile seconds; and the verdict, every specialisation compiled and fitting somewhere."""
    out = {}
    for key in sorted({(r["kernel"], r["capability"]) for r in rows}):
        part = [r for r in rows if (r["kernel"], r["capability"]) == key]
        ok = [r for r in part if r["ok"]]
        specs: dict[str, bool] = {}
        for r in ok:
            spec = r["case"]["specialisation"]
            specs[spec] = specs.get(spec, False) or r["fits"]
        over = sorted({r["config"] for r in ok if not r["fits"]})
        out[f"{key[0]} sm_{key[1]}"] = {
            "compiled": len(ok),
            "failed": len(part) - len(ok),
            "configs_over_shared_limit": over,
            "max_shared_bytes": max((r["shared_bytes"] for r in ok), default=0),
            "shared_limit_bytes": SHARED_LIMIT[key[1]],
            "variants_without_a_fitting_config": sum(not fits for fits in specs.values()),
            "median_compile_s": statistics.median(r["seconds"] for r in part),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--capabilities",
        default="80,90",
        help=f"compute capabilities, of {sorted(SHARED_LIMIT)} (default 80,90: A100, H100)",
    )
    ap.add_argument("--ci", action="store_true", help="only a representative few; print JSON, write nothing")
    ap.add_argument(
        "--all-specialisations",
        action="store_true",
        help="every specialisation of the integer arguments, not one per kernel variant (about 4x)",
    )
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("triton_aot: unset TRITON_INTERPRET (interpreted kernels do not compile)", file=sys.stderr)
        return 2
    try:
        caps = [int(c) for c in args.capabilities.split(",")]
    except ValueError:
        caps = []
    if not caps or any(c not in SHARED_LIMIT for c in caps):
        print(
            f"triton_aot: --capabilities takes some of {sorted(SHARED_LIMIT)}, got {args.capabilities!r}",
            file=sys.stderr,
        )
        return 2
    import triton

    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.ci else (lambda msg: print(msg, flush=True))
    result = {
        "triton": triton.__version__,
        "shared_limit_bytes": SHARED_LIMIT,
        **sweep(caps, args.ci, args.all_specialisations, log),
    }
    if args.ci:
        print(json.dumps(result))
    else:
        print(f"wrote {write('triton_aot', result, 'triton_aot', args.replace)}")
    bad = [k for k, s in result["summary"].items() if s["failed"] or s["variants_without_a_fitting_config"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
