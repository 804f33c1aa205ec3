"""Command line: ``python -m idm_rt upscale ...``, ``... serve ...`` and ``... convert ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from . import sampling
from .backends.engine_dir import read_manifest
from .file_jobs import check_writable, plan_jobs
from .memory import configure_allocator
from .options import OPTIONS, add_arguments
from .threads import configure_threads
from .upscale_files import check_call_options, load_upscaler, report_plan, run_job, to_run, upscale_options

UPSCALE_EXAMPLES = """examples:
  python -m idm_rt upscale photo.png -o photo_x4.png --scale 4
  python -m idm_rt upscale shots/ 'more/*.jpg' -o out/ --scale 3.3 --steps 20 --seed 0
  python -m idm_rt upscale small.png -o big.png --size 1920x1080 --tile 256 --device cuda
  python -m idm_rt upscale face.png -o face_x8.png --scale 8 --model idm_face_8x.pth
  python -m idm_rt upscale photo.png -o photo_x4.png --scale 4 --engines engines/default-onnxruntime-fp32
  python -m idm_rt upscale photo.png -o photo_x4.png --scale 4 --backend onnxruntime
  python -m idm_rt upscale photos/ -o out/ --scale 4 --ray                      # Ray Data, one worker per CPU
  python -m idm_rt upscale s3://bucket/photos/ -o s3://bucket/x4/ --scale 4 --ray --address auto --device cuda
"""

SERVE_EXAMPLES = """examples:
  python -m idm_rt serve                                   # bundled model on http://127.0.0.1:8000
  python -m idm_rt serve --model models/face8x --replicas 2 --max-batch 8 --batch-wait-ms 20
  python -m idm_rt serve --device cuda --replica-gpus 0.5 --replicas 4 --host 0.0.0.0 --address auto
  curl --data-binary @photo.png 'http://127.0.0.1:8000/v1/upscale?scale=4&seed=0' -o photo_x4.png
"""


def _size(text: str) -> tuple[int, int]:
    from .buckets import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    from .backends import BACKENDS

    ap = argparse.ArgumentParser(prog="python -m idm_rt", description="IDM continuous-scale super-resolution")
    sub = ap.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "upscale",
        help="upscale images",
        epilog=UPSCALE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Upscale image files by any real factor (or to a given size).",
    )
    up.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders (all images inside) or globs")
    up.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file (one input) or folder (written as OUT/<name>.png; several inputs need one)",
    )
    g = up.add_mutually_exclusive_group(required=True)
    OPTIONS["scale"].add_to(g)
    g.add_argument("--size", type=_size, metavar="WxH", help="explicit output size, e.g. 1920x1080")
    sampling.add_arguments(up)
    add_arguments(up, "seed", "tile", "max_memory")
    up.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cpu; cuda for TensorRT --engines)")
    up.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8"),
        help="U-Net precision: fp32 (default) or fp16/bf16 autocast (GPUs only: many times slower on "
        "a CPU, so refused there); with --backend, the precision its engines are built in (fp32 or "
        "fp16, int8 for onnxruntime; default fp32 for onnxruntime, fp16 for tensorrt); --engines "
        "keep their build's",
    )
    src = up.add_mutually_exclusive_group()
    src.add_argument("--model", help="checkpoint: released .pth or project folder (default: the bundled model)")
    src.add_argument(
        "--engines",
        metavar="DIR",
        help="an engine directory built by python -m idm_rt.build, run with its backend "
        "(ONNX Runtime or TensorRT) instead of torch",
    )
    up.add_argument(
        "--backend",
        choices=("torch", *BACKENDS),
        help="torch (default where torch is installed; else onnxruntime, the bundled model's shipped "
        "graphs); onnxruntime or tensorrt run engines, built for --model on first use "
        "into ~/.cache/idm_rt ($IDM_RT_CACHE) and reused after; with --engines, default: the "
        "directory's own",
    )
    up.add_argument(
        "--max-scale",
        type=float,
        metavar="M",
        help="largest training scale of a released .pth (8 for the face model, 4 for DIV2K; default 8)",
    )
    up.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")
    up.add_argument(
        "--follow-links",
        action="store_true",
        help="upscale links found in an input folder that lead out of it (default: skipped, said)",
    )
    add_arguments(up, "max_pixels", "threads")
    ray = up.add_argument_group("Ray Data (the serve extra: pip install 'idm-rt[serve]')")
    ray.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Data with a pool of Upscaler workers; inputs and OUT may also be URIs that "
        "pyarrow reads (s3://, gs://, ...); existing outputs are skipped (a rerun continues an "
        "interrupted job) unless --overwrite",
    )
    ray.add_argument(
        "--address",
        help="the Ray cluster: auto (the one `ray start` runs here), HOST:PORT or "
        "ray://HOST:PORT (default: $RAY_ADDRESS, else a local Ray instance)",
    )
    add_arguments(ray, "workers", "worker_cpus", "worker_gpus")

    sv = sub.add_parser(
        "serve",
        help="serve upscaling over HTTP with Ray Serve",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve POST /v1/upscale?scale=S (or size=WxH; steps, sampler, seed, "
        "format=png|webp|jpeg) with the image file as the body, GET /v1/model and "
        "GET /healthz, with Ray Serve: replicas, requests batched across clients. Needs "
        "the serve extra: pip install 'idm-rt[serve]'.",
    )
    sv_src = sv.add_mutually_exclusive_group()
    sv_src.add_argument(
        "--model", help="checkpoint, model folder, or engine directory with --backend (default: the bundled model)"
    )
    sv_src.add_argument("--engines", metavar="DIR", help="an engine directory, served with its backend (or --backend)")
    sv.add_argument(
        "--backend",
        choices=("torch", *BACKENDS),
        help="torch (default where torch is installed; else onnxruntime); onnxruntime or tensorrt run "
        "engines: --model an engine directory, or a model they are built for on first use",
    )
    sv.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cpu; cuda for tensorrt)")
    add_arguments(sv, "replicas", "replica_cpus", "replica_gpus", "max_batch", "batch_wait_ms")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    add_arguments(sv, "port")
    sv.add_argument(
        "--address",
        help="the Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS, "
        "else a local Ray instance, stopped with the service)",
    )
    add_arguments(
        sv,
        "max_body_mb",
        "max_pixels",
        "max_steps",
        "timeout_s",
        "body_timeout_s",
        "max_uploads",
        "max_client_requests",
        "max_queued",
        "max_memory",
        max_memory={
            "help": "memory each worker replica's calls may plan, e.g. 4GiB; with several "
            "replicas on one machine, give each its share"
        },
    )

    cv = sub.add_parser(
        "convert",
        help="convert a released .pth checkpoint to the project format",
        description="Convert a released IDM .pth into a folder with model.safetensors and config.json.",
        epilog="example:\n  python -m idm_rt convert idm_face_8x.pth models/face8x --max-scale 8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cv.add_argument("input", metavar="IN.pth")
    cv.add_argument("output", metavar="OUT", help="output folder")
    cv.add_argument(
        "--max-scale",
        type=float,
        required=True,
        help="largest training magnification M of that model (8 for faces, 4 for DIV2K)",
    )
    cv.add_argument("--fp16", action="store_true", help="store the weights as float16")
    cv.add_argument("--overwrite", action="store_true", help="replace an existing model in OUT")
    return ap


def cmd_upscale(args: argparse.Namespace) -> int:
    if args.ray:
        from .batch_job import run_batch_job

        return run_batch_job(args)
    if args.address or args.workers or args.worker_cpus or args.worker_gpus is not None:
        print("error: --address, --workers, --worker-cpus and --worker-gpus are for --ray", file=sys.stderr)
        return 1
    configure_threads(args.threads)
    configure_allocator()
    try:
        plan = plan_jobs(args.inputs, args.output, args.follow_links)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report_plan(plan)
    failed = len(plan.problems)
    if not args.overwrite:
        for job in plan.existing:
            print(f"error: {job.dst} exists (use --overwrite to replace it); skipped {job.src}", file=sys.stderr)
        failed += len(plan.existing)
    jobs = to_run(plan, args.overwrite)
    if not jobs:
        return 1
    try:
        check_writable({j.dst.path.parent for j in jobs if j.dst.fs is None})
        up = load_upscaler(args)
        check_call_options(up, args)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    options = upscale_options(args)
    for job in tqdm(jobs, desc="images", unit="img", disable=len(jobs) == 1):
        status, message = run_job(up, job, options, args.overwrite, progress=True)
        tqdm.write(
            message if status == "done" else f"error: {message}", file=sys.stdout if status == "done" else sys.stderr
        )
        failed += status != "done"
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from pydantic import ValidationError

        from .serve import ServeSettings, run_service
    except ImportError:
        print("error: serving needs Ray Serve: pip install 'idm-rt[serve]'", file=sys.stderr)
        return 1
    if args.engines:  # the directory as --model, with its own backend unless told
        try:
            args.backend = args.backend or read_manifest(args.engines).backend
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if args.backend == "torch":
            print("error: --engines runs engines; --backend torch is for --model", file=sys.stderr)
            return 1
        args.model = args.engines
    if args.model and not Path(args.model).exists():  # said now rather than by each replica
        print(f"error: no checkpoint at {args.model}", file=sys.stderr)
        return 1
    fields = {k: v for k, v in vars(args).items() if k in ServeSettings.model_fields}
    try:
        settings = ServeSettings(**fields)
    except ValidationError as e:
        for err in e.errors():
            print(f"error: --{str(err['loc'][0]).replace('_', '-')}: {err['msg']}", file=sys.stderr)
        return 1
    return run_service(settings, host=args.host, port=args.port, address=args.address)


def cmd_convert(args: argparse.Namespace) -> int:
    from .backends.registry import require

    try:
        require(("torch", "safetensors"), "python -m idm_rt convert")
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    import torch

    from .checkpoints import CheckpointMismatch, load_model, model_hash, save_model

    if (Path(args.output) / "model.safetensors").exists() and not args.overwrite:
        print(f"error: {args.output} already holds a model (use --overwrite to replace it)", file=sys.stderr)
        return 1
    try:
        model = load_model(args.input, max_scale=args.max_scale)
    except (FileNotFoundError, CheckpointMismatch, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    prov = {"converted_from": Path(args.input).name, "source_hash": model_hash(model)}
    try:
        save_model(model, args.output, dtype=torch.float16 if args.fp16 else torch.float32, provenance=prov)
    except OSError as e:
        print(f"error: cannot write {args.output}: {e}", file=sys.stderr)
        return 1
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output} ({n / 1e6:.1f} M parameters, max scale {model.max_scale:g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"upscale": cmd_upscale, "serve": cmd_serve, "convert": cmd_convert}[args.command](args)
    except KeyboardInterrupt:  # outputs are written atomically: nothing half-written is left
        print("interrupted", file=sys.stderr)
        return 130
