"""Per-U-Net-call latency: ONNX Runtime (CPU) against torch eager, same random weights, same inputs.

``python -m benchmarks.latency_onnx [--preset official] [--tile 128] [--repeats 7] [--threads N] [--profile]``

Two ONNX graphs of the same U-Net are timed: ``ort_cpu`` with direct Conv nodes, and
``ort_cpu_winograd`` with the wide 3x3 convolutions as Winograd transforms and products (what
``python -m idm_rt.build --backend onnxruntime --engine fp32`` builds, see ``export.winograd``).
All are timed alternately in one run (torch, ORT, ORT Winograd, torch, ...) so that a busy machine
slows them alike; the table reports medians and the median of the per-round ratios. A GPU section
(torch eager, ORT CUDA, TensorRT when installed) runs only when CUDA is present. Each run is appended
to ``latency_onnx.json`` in ``benchmarks/scratch/`` (``benchmarks/results/`` with ``--replace``): command,
machine, date, settings, medians and ratios, not the per-round times; and ``latency_onnx.md`` beside it,
tables of every run and of the ranges per graph version and thread count, is rewritten from it.

``--profile`` adds where ONNX Runtime's time goes: milliseconds per operator type of each graph
(its own profiler); for the direct graph, the U-Net's convolution FLOPs (torch's FLOP counter)
and the GFLOP/s its Conv kernels reach (the Conv op types, which include fused activations and
adds), next to what a 2048^3 float32 matmul reaches on the same threads as a reference; both
are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from idm_rt import IDM, preset
from idm_rt.backends.engine_dir import graph_inputs
from idm_rt.buckets import Bucket
from idm_rt.export.graphs import export_graph, sample_inputs
from idm_rt.fileio import atomic_write

from .common import ORT_SETTLE_S, add_replace_argument, interleaved, machine, results_dir

SUMMARY = "latency_onnx.json"  # in common.results_dir: every run's record, appended
ABOUT = (
    "One U-Net call, batch 1, random weights: torch eager against ONNX Runtime's CPU provider with direct Conv "
    "nodes (ort_cpu) and with Winograd convolutions (ort_cpu_winograd), timed in interleaved rounds. Per run: "
    "median ms of each, and speedup_vs_torch_eager, the median of the per-round ratios. winograd_version is "
    "idm_rt.export.winograd.VERSION, the Winograd graph the run timed (null: no Winograd graph yet); dates are "
    "the machine's local time."
)


def summarise(times: dict[str, list[float]], base: str) -> dict:
    """Median ms per backend and, against ``base``, the median of per-repeat speed-ups."""
    out = {}
    for name, ts in times.items():
        ratios = [b / t for b, t in zip(times[base], ts)]
        out[name] = {
            "median_ms": 1e3 * statistics.median(ts),
            "all_ms": [1e3 * t for t in ts],
            "speedup_vs_" + base: statistics.median(ratios),
        }
    return out


def run_record(result: dict, date: str, winograd_version: int | None) -> dict:
    """What the summary keeps of one run: its date, command, machine and settings, and per contestant the
    median and the median ratio (the per-round times are dropped)."""
    record = {"date": date, "winograd_version": winograd_version}
    for key, value in result.items():
        if key in ("cpu", "gpu") and value is not None:
            value = {
                name: {
                    "median_ms": r["median_ms"],
                    "rounds": len(r["all_ms"]),
                    **{k: v for k, v in r.items() if k.startswith("speedup")},
                }
                for name, r in value.items()
            }
        record[key] = value
    return record


def _ratio(run: dict, section: str, name: str) -> float | None:
    r = (run.get(section) or {}).get(name)
    return None if r is None else next(v for k, v in r.items() if k.startswith("speedup"))


def _span(values: list[float], fmt: str) -> str:
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def markdown(summary: dict) -> str:
    """latency_onnx.md: the ranges per Winograd graph version, preset, tile and thread count, then every run
    and the --profile runs' convolution throughput."""
    runs = summary["runs"]
    lines = [
        "# ONNX Runtime against torch eager, one U-Net call",
        "",
        f"Written by `python -m benchmarks.latency_onnx` from `latency_onnx.json` beside it: {summary['about']}",
        *(["", summary["history"]] if summary.get("history") else []),
        "",
        "## Ranges over the runs",
        "",
        "Ratios are each run's median per-round speed-up over torch eager; in brackets, their median over the runs.",
        "",
        "| Winograd graph | preset, tile | threads | runs | torch eager ms | ORT direct Conv | ORT Winograd |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["winograd_version"] or 0, run["preset"], run["tile"], run["threads"]), []).append(run)
    for (version, shape, tile, threads), group in sorted(groups.items()):
        cells = []
        for name in ("ort_cpu", "ort_cpu_winograd"):
            ratios = [r for r in (_ratio(run, "cpu", name) for run in group) if r is not None]
            cells.append(f"{_span(ratios, '.2f')}x ({statistics.median(ratios):.2f}x)" if ratios else "")
        torch_ms = [run["cpu"]["torch_eager"]["median_ms"] for run in group]
        lines.append(
            f"| {f'version {version}' if version else 'none'} | {shape}, {tile} | {threads} | {len(group)} "
            f"| {_span(torch_ms, '.0f')} | {cells[0]} | {cells[1]} |"
        )
    lines += [
        "",
        "## Every run",
        "",
        "| date | command | Winograd graph | threads | rounds | torch eager ms | ORT direct Conv | ORT Winograd "
        "| load average |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        cpu = run["cpu"]
        cells = [
            f"{cpu[n]['median_ms']:.1f} ms, {_ratio(run, 'cpu', n):.2f}x" if n in cpu else ""
            for n in ("ort_cpu", "ort_cpu_winograd")
        ]
        load = run["machine"].get("load_average")
        lines.append(
            f"| {run['date']} | `{run['command']}` | {run['winograd_version'] or 'none'} | {run['threads']} "
            f"| {cpu['torch_eager']['rounds']} | {cpu['torch_eager']['median_ms']:.1f} | {cells[0]} "
            f"| {cells[1]} | {f'{load[0]:.2f}' if load else ''} |"
        )
    profiled = [run for run in runs if run.get("profile")]
    if profiled:
        lines += [
            "",
            "## Convolution throughput (`--profile`)",
            "",
            "ONNX Runtime's Conv kernels in the direct graph (their share of its kernel time, GFLOP/s) against "
            "a 2048^3 float32 matmul in torch on the same threads.",
            "",
            "| date | threads | Conv share | Conv GFLOP/s | per thread | matmul GFLOP/s |",
            "|---|---|---|---|---|---|",
        ]
        for run in profiled:
            p = run["profile"]
            lines.append(
                f"| {run['date']} | {run['threads']} | {100 * p['conv_share']:.0f} % "
                f"| {p['conv_gflop_per_s']:.1f} | {p['conv_gflop_per_s'] / run['threads']:.1f} "
                f"| {p['matmul_2048_gflop_per_s']:.0f} |"
            )
    machines = sorted(
        {
            f"{r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']}, "
            f"ONNX Runtime {r['machine'].get('onnxruntime')}"
            for r in runs
        }
    )
    lines += ["", "Machines: " + "; ".join(machines) + ".", ""]
    return "\n".join(lines)


def save_run(record: dict, path: Path) -> None:
    """Append ``record`` to the summary at ``path`` (created if missing) and rewrite its Markdown tables."""
    summary = (
        json.loads(path.read_text())
        if path.exists()
        else {"benchmark": "python -m benchmarks.latency_onnx", "about": ABOUT, "runs": []}
    )
    summary["runs"].append(record)
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(summary, indent=1) + "\n"))
    atomic_write(path.with_suffix(".md"), lambda p: Path(p).write_text(markdown(summary)))


def _session(onnx_path: Path, threads: int, profile_dir: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "ort")
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ort_feeds(model: IDM, args_t: tuple) -> dict:
    """The U-Net's inputs as ORT feeds, by name."""
    return {n: t.numpy() for n, t in zip(graph_inputs("unet", model.config), args_t)}


def cpu_section(model: IDM, graphs: dict[str, Path], args_t: tuple, repeats: int, threads: int) -> dict:
    """torch eager against an ORT session per graph (``ort_cpu`` + suffix), timed alternately with a
    pause before each call (:data:`ORT_SETTLE_S`)."""
    feeds = ort_feeds(model, args_t)
    torch.set_num_threads(threads)
    from idm_rt.export.graphs import UNetGraph

    net = UNetGraph(model).eval()

    def torch_call():
        with torch.no_grad():
            net(*args_t)

    fns = {"torch_eager": torch_call}
    for name, path in graphs.items():
        session = _session(path, threads)
        fns[name] = lambda session=session: session.run(None, feeds)
    return summarise(interleaved(fns, repeats, settle_s=ORT_SETTLE_S), "torch_eager")


def ort_ms_per_op_type(onnx_path: Path, feeds: dict, threads: int, runs: int = 3) -> dict[str, float]:
    """Median milliseconds per operator type over ``runs`` calls (ORT's own profiler)."""
    import collections

    with tempfile.TemporaryDirectory() as tmp:
        session = _session(onnx_path, threads, tmp)
        for _ in range(runs + 1):  # the first run (allocations) is dropped below
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, list[float]] = collections.defaultdict(lambda: [0.0] * (runs + 1))
    run = 0  # a run's kernel events are logged before its own model_run event
    for e in events:
        if e.get("name") == "model_run":
            run += 1
        elif e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and run <= runs:
            per_op[e["args"]["op_name"]][run] += e["dur"] / 1e3
    ms = {op: statistics.median(v[1:]) for op, v in per_op.items()}
    return dict(sorted(ms.items(), key=lambda kv: -kv[1]))


def profile_section(model: IDM, graphs: dict[str, Path], args_t: tuple, threads: int) -> dict:
    """ORT time per operator type of each graph; for the direct graph also the convolution FLOPs
    and the GFLOP/s its Conv kernels reach, against a 2048^3 matmul on the same threads."""
    from torch.utils.flop_counter import FlopCounterMode

    from idm_rt.export.graphs import UNetGraph

    feeds = ort_feeds(model, args_t)
    out = {f"{name}_ms_per_op_type": ort_ms_per_op_type(path, feeds, threads) for name, path in graphs.items()}
    ms = out["ort_cpu_ms_per_op_type"]
    conv_ms = sum(v for op, v in ms.items() if op in ("Conv", "FusedConv", "NhwcFusedConv"))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        UNetGraph(model).eval()(*args_t)
    conv_gflop = counter.get_flop_counts()["Global"].get(torch.ops.aten.convolution, 0) / 1e9
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm = statistics.median(interleaved({"mm": lambda: a @ b}, 5)["mm"])
    return {
        **out,
        "conv_share": conv_ms / sum(ms.values()),
        "conv_gflop": conv_gflop,
        "conv_gflop_per_s": conv_gflop / (conv_ms / 1e3) if conv_ms else None,
        "matmul_2048_gflop_per_s": 2 * 2048**3 / mm / 1e9,
    }


def winograd_error(model: IDM, onnx_path: Path, args_t: tuple) -> float:
    """Max abs difference of the Winograd graph's eps from torch eager float32 (|eps| is ~1)."""
    from idm_rt.export.graphs import UNetGraph

    got = _session(onnx_path, 1).run(None, ort_feeds(model, args_t))
    with torch.no_grad():
        want = UNetGraph(model).eval()(*args_t)
    return float((torch.from_numpy(got[0]) - want).abs().max())


def gpu_section(model: IDM, onnx_path: Path, args_t: tuple, repeats: int) -> dict:
    """torch eager and ORT CUDA (IO binding through the runner's code path) on the GPU."""
    import onnxruntime as ort

    from idm_rt.export.graphs import UNetGraph

    net = UNetGraph(model).cuda().eval()
    gpu_args = tuple(t.cuda() for t in args_t)
    fns = {"torch_eager_cuda": lambda: net(*gpu_args)}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        session = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider"])
        binding = session.io_binding()
        for name, t in zip(graph_inputs("unet", model.config), gpu_args):
            binding.bind_input(name, "cuda", 0, t.numpy(force=True).dtype, tuple(t.shape), t.data_ptr())
        binding.bind_output("eps", "cuda")
        fns["ort_cuda"] = lambda: session.run_with_iobinding(binding)
    with torch.no_grad():
        return summarise(interleaved(fns, repeats, sync=torch.cuda.synchronize), "torch_eager_cuda")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.latency_onnx", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="official")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--profile", action="store_true", help="add ORT time per operator type and conv GFLOP/s")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = IDM(preset(args.preset)).eval()
    bucket = Bucket(args.tile, args.tile)
    args_t = sample_inputs(model, "unet", bucket)
    result = {
        "command": " ".join(["python -m benchmarks.latency_onnx", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "preset": args.preset,
        "tile": args.tile,
        "batch": 1,
        "threads": args.threads,
        "weights": "random (torch.manual_seed(0))",
    }
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {
            "ort_cpu": export_graph(model, "unet", bucket, Path(tmp) / "unet.onnx"),
            "ort_cpu_winograd": export_graph(model, "unet", bucket, Path(tmp) / "unet_wg.onnx", conv="winograd"),
        }
        result["winograd_max_abs_vs_torch"] = winograd_error(model, graphs["ort_cpu_winograd"], args_t)
        result["cpu"] = cpu_section(model, graphs, args_t, args.repeats, args.threads)
        if args.profile:
            result["profile"] = profile_section(model, graphs, args_t, args.threads)
        result["gpu"] = (
            gpu_section(model, graphs["ort_cpu"], args_t, args.repeats) if torch.cuda.is_available() else None
        )
    print(
        f"U-Net call, {args.preset} shape, {args.tile}x{args.tile} tile, batch 1, {args.threads} threads "
        f"(Winograd graph max abs vs torch: {result['winograd_max_abs_vs_torch']:.1e})"
    )
    for section in ("cpu", "gpu"):
        for name, r in (result[section] or {}).items():
            speedup = next(v for k, v in r.items() if k.startswith("speedup"))
            print(f"  {name:<18} {r['median_ms']:>10.1f} ms   x{speedup:.2f}")
    if args.profile:
        prof = result["profile"]
        print(
            f"  ORT Conv: {100 * prof['conv_share']:.0f}% of kernel time, {prof['conv_gflop']:.1f} GFLOP at "
            f"{prof['conv_gflop_per_s']:.0f} GFLOP/s (2048^3 matmul: {prof['matmul_2048_gflop_per_s']:.0f} GFLOP/s)"
        )
    from idm_rt.export.winograd import VERSION

    path = results_dir(args.replace) / SUMMARY
    save_run(run_record(result, time.strftime("%Y-%m-%dT%H:%M:%S"), VERSION), path)
    print(f"appended to {path} and {path.with_suffix('.md').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
