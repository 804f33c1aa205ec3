"""Everything that needs an NVIDIA GPU, checked and timed in one run: device correctness checks, then
CUDA-event median timings (sections in :mod:`benchmarks.gpu`).

1. Correctness on the device: the Triton implicit layer (both forms, both MLP variants,
   float32/float16/bfloat16) against the release's literal form; a whole U-Net call with the
   kernels, with CUDA graphs, and the graphed DDIM loop against eager torch.
2. Timings (medians of CUDA-event intervals): every implicit level of the preset at 128x128 and
   256x256 (release's literal torch form, refactored torch form, fused kernels); one U-Net call
   (release-style eager fp32, ours eager, ours with kernels + CUDA graphs in fp32/fp16/bf16);
   one whole image at 20 and 200 DDIM steps.
3. Engines, where installed (onnxruntime-gpu, TensorRT 10): built from the same model for a 128x128
   bucket, every graph checked as ``idm_rt.export.parity`` does, a whole image against the torch
   backend, and one U-Net call timed.

Writes ``gpu_check_<card>.json`` and ``.md`` into the folder given (after every section, so a
cut-off run keeps what it measured) and exits 1 if a correctness check failed. Random weights of
the preset, no checkpoint needed. Usage::

    python -m benchmarks.gpu_check benchmarks/results [--preset official] [--quick] [--compile]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from idm_rt import kernels

from .gpu.common import log, make_model
from .gpu.engines import check_engines
from .gpu.kernels import check_kernels, time_levels
from .gpu.report import save
from .gpu.unet import check_model, time_image, time_unet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path, help="folder for gpu_check_<card>.json and .md")
    ap.add_argument("--preset", default="official", help="network shape (random weights)")
    ap.add_argument("--quick", action="store_true", help="fewer cases and repetitions, no 200-step image")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); "
              "run it on an NVIDIA GPU machine with a CUDA build of torch", file=sys.stderr)
        return 2
    if not kernels.triton_available():
        print("gpu_check: triton is not installed (pip install triton)", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    import triton

    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "preset": args.preset, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
               "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
               "checks": [], "autocast_error": {}, "levels": [], "unet": [], "image": [], "engines": []}
    reps = 10 if args.quick else 30
    sections = [
        ("kernel correctness", lambda m: check_kernels(results, args.quick)),
        ("model correctness", lambda m: check_model(results, m, 128)),
        ("implicit levels", lambda m: [time_levels(results, m, s, reps) for s in (128, 256)]),
        ("U-Net call", lambda m: time_unet(results, m, 128, reps, args.compile)),
        ("whole image", lambda m: time_image(results, m, 128, (20,) if args.quick else (20, 200))),
        ("engines", lambda m: check_engines(results, m, 128, reps)),
    ]
    model = make_model(args.preset)
    for name, run in sections:
        log(f"== {name}")
        run(model)
        save(results, args.out_dir)
    ok = all(c["ok"] for c in results["checks"])
    log(f"done; all checks passed: {ok}; results in {args.out_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
