"""Shared benchmark helpers: machine description, interleaved timing, JSON results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import idm_rt

# The smallest network the benchmarks' dry runs and fault runs use (and the tests' TINY): what they measure is
# the plumbing, not the pictures.
TINY_CONFIG = idm_rt.IDMConfig(
    inner_channel=8,
    channel_multiplier=(1, 2, 2),
    res_blocks=1,
    attn_levels=(2,),
    norm_groups=4,
    encoder_blocks=1,
    encoder_feats=8,
    implicit_hidden=16,
)
RESULTS = Path(__file__).parent / "results"
# Where a run writes unless told to replace the committed results (--replace): a rerun to try something must not
# overwrite the numbers the README quotes. Git ignores it.
SCRATCH = Path(__file__).parent / "scratch"

# Untimed pause before each call when ONNX Runtime is among the contestants: its worker threads spin
# for a while after a run and, on a small machine, would steal the cores from the next call.
ORT_SETTLE_S = 0.1


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    info: dict[str, object] = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    info["load_average"] = os.getloadavg()
    return info


def interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], object] = lambda: None,
    settle_s: float = 0.0,
) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, alternating between them so that load changes on a
    noisy machine hit all of them alike; returns seconds per run (``sync`` waits for a GPU,
    ``settle_s`` is an untimed pause before each call)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(settle_s)
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def add_replace_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--replace`` option of every benchmark that writes results."""
    parser.add_argument(
        "--replace",
        action="store_true",
        help=f"write into {RESULTS.parent.name}/{RESULTS.name}/, replacing the committed results "
        f"(default: {RESULTS.parent.name}/{SCRATCH.name}/, which git ignores)",
    )


def results_dir(replace: bool) -> Path:
    """The folder results go to (made if missing): :data:`RESULTS` when told to replace them, else :data:`SCRATCH`."""
    folder = RESULTS if replace else SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write(name: str, result: dict, module: str, replace: bool = False) -> Path:
    """``<name>.json`` in :func:`results_dir` with the command line (``python -m benchmarks.<module> ...``, or the
    module that was run when another one called this one, as ``benchmarks.latency --sizes`` does) and machine
    attached."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    ran = spec.name if spec and spec.name.startswith("benchmarks.") else f"benchmarks.{module}"
    result = {"command": "python -m " + " ".join([ran] + sys.argv[1:]), "machine": machine(), **result}
    path = results_dir(replace) / f"{name}.json"
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)  # a reader never sees half a file
    return path
