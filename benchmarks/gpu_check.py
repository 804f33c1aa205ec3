"""Everything that needs an NVIDIA GPU, checked and timed in one run that always ends with a verdict.

Sections, most valuable first (:mod:`benchmarks.gpu`):

1. kernels: the Triton kernels against the release's literal form (float32 within derived TF32 budgets,
   float16, bfloat16), case i on autotune config i, so every config is checked and nothing is tuned;
2. unet_checks: our U-Net (kernels), with CUDA graphs, under fp16/bf16 autocast, and the graphed DDIM
   loop, against the release's eager form;
3. unet_timing: one U-Net call: release eager fp32, ours eager fp32 and fp16 autocast, CUDA graphs fp32/fp16/bf16;
4. image_timing: one image's DDIM loop (20 and 200 steps) and one Upscaler.upscale call;
5. levels_timing: every implicit level, torch forms against the kernels;
6. engines: TensorRT and ONNX Runtime's CUDA provider where installed (engine preset, graphs traced on the GPU);
7. compile: torch.compile under CUDA graphs, fp16.

The plan, with each section's expected time, is printed first. Each section runs in its own process with a
time limit, and each variant inside it on its own: an exception, a crash or a timeout is a recorded result
(with its traceback) and the run goes on; no variant starts that would end past ``--budget-s``. The results
are written after every variant to ``OUT/gpu_check_<card>.json`` (and ``.md`` after every section): the
checks, every variant's outcome and wall time, and one table of speedups per U-Net call and per image
against the release's eager form. Exit status 0 when every section ran and every check passed, 1 otherwise,
2 when this machine cannot run it. ``--dry-run`` runs every section's plumbing on the CPU at tiny sizes (the
kernels under Triton's interpreter, CUDA graphs off, ONNX Runtime's CPU provider for the engines); the
tests run it. Usage::

    python -m benchmarks.gpu_check [OUT] [--preset official] [--engine-preset small] [--quick] [--budget-s 450]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# Expected seconds per section on one H100 host with an empty Triton cache (estimates from CPU-side
# compile times until a run measures them: a previous results file of the same card replaces them).
SECTIONS = {
    "kernels": 45,
    "unet_checks": 60,
    "unet_timing": 70,
    "image_timing": 60,
    "levels_timing": 30,
    "engines": 30,
    "compile": 120,
}
CHILD_START_S = 8  # a section's process: imports, CUDA context, model


def card_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def section_function(name: str):
    from .gpu.engines import check_engines
    from .gpu.kernels import check_kernels, time_levels
    from .gpu.unet import check_model, time_compile, time_image, time_unet

    return {
        "kernels": check_kernels,
        "unet_checks": check_model,
        "unet_timing": time_unet,
        "image_timing": time_image,
        "levels_timing": time_levels,
        "engines": check_engines,
        "compile": time_compile,
    }[name]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "out_dir", type=Path, nargs="?", default=RESULTS, help="folder of the results (default benchmarks/results)"
    )
    ap.add_argument("--preset", default="official", help="network of the torch sections (random weights)")
    ap.add_argument("--engine-preset", default="small", help="network the engines are built from")
    ap.add_argument("--size", type=int, default=128, help="output side of the U-Net and image sections")
    ap.add_argument("--quick", action="store_true", help="fewer cases, repetitions and sizes, no 200-step image")
    ap.add_argument("--budget-s", type=float, default=450.0, help="no variant starts that would end later (s)")
    ap.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--dry-run", action="store_true", help="every section's plumbing on the CPU at tiny sizes")
    ap.add_argument("--in-process", action="store_true", help="sections in this process (no time limit each)")
    ap.add_argument("--section", help=argparse.SUPPRESS)  # a section's own process
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # its deadline, time.time()
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)  # the results file it adds to
    args = ap.parse_args(argv)
    if not 16 <= args.size <= 1024 or args.size % 16:
        ap.error(f"--size must be a multiple of 16 in 16..1024, got {args.size}")
    if not 10 <= args.budget_s <= 3600:
        ap.error(f"--budget-s must be in 10..3600, got {args.budget_s}")
    args.names = list(SECTIONS) if not args.sections else args.sections.split(",")
    unknown = [n for n in args.names if n not in SECTIONS]
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    return args


def results_path(args: argparse.Namespace, device_name: str) -> Path:
    return args.out_dir / f"gpu_check_{card_slug(device_name)}.json"


def run_section(args: argparse.Namespace, path: Path, name: str, deadline: float) -> None:
    """Section ``name`` in this process, on the results at ``path`` (saved after every variant)."""
    import torch

    from .gpu.common import Run, log
    from .gpu.tf32 import FLAGS

    torch.backends.cudnn.allow_tf32 = FLAGS["cudnn_allow_tf32"]  # torch's defaults, set so that the budgets hold
    torch.backends.cuda.matmul.allow_tf32 = FLAGS["matmul_allow_tf32"]
    results = json.loads(path.read_text())
    device = torch.device("cpu" if args.dry_run else "cuda")
    run = Run(
        path,
        results,
        name,
        device,
        args.dry_run,
        args.preset,
        16 if args.dry_run else args.size,
        1 if args.dry_run else 10 if args.quick else 30,
        time.monotonic() + deadline - time.time(),
        args.quick,
        {"engine_preset": args.engine_preset},
    )
    log(f"== {name}")
    section_function(name)(run)
    run.save()


def header(args: argparse.Namespace) -> tuple[dict, str] | str:
    """The run's description, and the device's name; or why this machine cannot run it."""
    import torch

    from .gpu.tf32 import FLAGS

    info = {
        "command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "preset": "dry" if args.dry_run else args.preset,
        "engine_preset": args.engine_preset,
        "size": 16 if args.dry_run else args.size,
        "tf32": FLAGS,
        "budget_s": args.budget_s,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        if not args.dry_run:
            return "gpu_check: triton is not installed (pip install triton)"
    if args.dry_run:
        return info, "cpu dry run"
    if not torch.cuda.is_available():
        return (
            "gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); run it on an "
            "NVIDIA GPU machine with a CUDA build of torch, or with --dry-run"
        )
    name = torch.cuda.get_device_name()
    info |= {
        "device": name,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "cuda": torch.version.cuda,
    }
    return info, name


def expected_times(path: Path) -> dict[str, float]:
    """Each section's expected seconds: measured by the previous run on this card, else the estimates."""
    try:
        previous = json.loads(path.read_text()).get("sections", {})
    except (OSError, ValueError):
        previous = {}
    return {
        n: previous.get(n, {}).get("wall_s") if previous.get(n, {}).get("status") == "ok" else s
        for n, s in SECTIONS.items()
    }


def child_command(args: argparse.Namespace, path: Path, name: str, deadline: float) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gpu_check",
        str(args.out_dir),
        "--results",
        str(path),
        "--preset",
        args.preset,
        "--engine-preset",
        args.engine_preset,
        "--size",
        str(args.size),
        "--section",
        name,
        "--deadline",
        f"{deadline:.3f}",
    ]
    return cmd + ["--quick"] * args.quick + ["--dry-run"] * args.dry_run


def supervise(args: argparse.Namespace, path: Path, name: str, expected: float, end: float) -> dict:
    """Section ``name`` in its own process (or this one with --in-process), stopped at its time limit; its
    outcome, whatever happened."""
    start = time.time()
    limit = min(end, start + max(3 * expected, expected + 60)) if not args.dry_run else end
    record = {"expected_s": expected}
    if args.in_process:
        try:
            run_section(args, path, name, limit)
            record["status"] = "ok"
        except Exception as e:  # noqa: BLE001 (a section's failure is its recorded result)
            record |= {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    else:
        proc = subprocess.Popen(
            child_command(args, path, name, limit - 2),
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=max(limit - time.time(), 1))
            record |= {"status": "ok" if proc.returncode == 0 else "crashed", "exit_status": proc.returncode}
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the section's own process group (start_new_session)
            _, err = proc.communicate()
            record["status"] = "timed out"
        if record["status"] != "ok":
            record["stderr_tail"] = err[-6000:]
        sys.stderr.write(err[-2000:] if record["status"] != "ok" else "")
    record["wall_s"] = round(time.time() - start, 1)
    return record


def verdict(results: dict) -> str:
    checks, sections = results.get("checks", []), results.get("sections", {})
    if any(not c["ok"] for c in checks):
        return "FAIL (a check failed)"
    if any(s["status"] != "ok" for s in sections.values()) or any(
        v.get("status") != "ok" for v in results.get("variants", [])
    ):
        return "INCOMPLETE (all checks that ran passed; see the sections and variants not completed)"
    return "PASS"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel is imported, here and in the sections' processes
    if args.section:
        run_section(args, args.results, args.section, args.deadline)
        return 0
    described = header(args)
    if isinstance(described, str):
        print(described, file=sys.stderr)
        return 2
    info, device_name = described
    from .gpu.common import log
    from .gpu.report import markdown

    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = results_path(args, device_name)
    expected = expected_times(path)
    start = time.time()
    end = start + args.budget_s
    plan = [{"section": n, "expected_s": expected[n] + CHILD_START_S * (not args.in_process)} for n in args.names]
    results = {
        **info,
        "device": info.get("device", device_name),
        "plan": plan,
        "sections": {},
        "checks": [],
        "variants": [],
    }
    log(
        f"gpu_check on {device_name}, budget {args.budget_s:.0f} s; plan (expected seconds"
        f"{', GPU estimates' if args.dry_run else ''}):"
    )
    for p in plan:
        log(f"  {p['section']:<14} {p['expected_s']:6.0f}")
    log(f"  {'total':<14} {sum(p['expected_s'] for p in plan):6.0f}")
    save(path, results, markdown)
    for p in plan:
        name = p["section"]
        if end - time.time() < 5:
            results["sections"][name] = {"status": "skipped", "reason": "no time left", "expected_s": p["expected_s"]}
        else:
            record = supervise(args, path, name, p["expected_s"], end)
            results = json.loads(path.read_text())
            results["sections"][name] = record
            log(f"== {name}: {record['status']} in {record['wall_s']:.1f} s (expected {p['expected_s']:.0f})")
        results["verdict"] = verdict(results)
        save(path, results, markdown)
    log(f"verdict: {results['verdict']}; results in {path} and {path.with_suffix('.md')}")
    return 0 if results["verdict"] == "PASS" else 1


def save(path: Path, results: dict, markdown) -> None:
    for target, text in (
        (path, json.dumps(results, indent=1, default=str) + "\n"),
        (path.with_suffix(".md"), markdown(results)),
    ):
        tmp = target.with_name(f".{target.name}.partial")
        tmp.write_text(text)
        tmp.replace(target)


if __name__ == "__main__":
    sys.exit(main())
