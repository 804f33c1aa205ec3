"""``python -m idm_rt.build``: the command line that exports IDM to ONNX per bucket and builds ONNX Runtime
or TensorRT engines (:mod:`idm_rt.export.builder`) into an engine directory.

Exit status: 0 built; 1 failed; 2 bad arguments; 3 ONNX written but TensorRT engines not built
because this machine has no NVIDIA GPU or no TensorRT (the message says how to finish).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import idm_rt
from idm_rt.backends import BACKENDS, BUILD_BACKENDS
from idm_rt.backends.engine_dir import ENGINE_PRECISIONS
from idm_rt.buckets import DEFAULT_TILES, RULE, TileCosts, parse_batch, parse_list, parse_size, plan_buckets, route
from idm_rt.config import check_max_scale
from idm_rt.threads import add_threads_argument, configure_threads

from .engines import auto_conv, require_packages

EXAMPLES = """examples:
  python -m idm_rt.build --precision fp32 --backend onnxruntime
  python -m idm_rt.build --precision int8 --backend onnxruntime --tile 128
  python -m idm_rt.build --precision fp16 --model models/face8x --scales 2,4,8 --input-size 16x16
  python -m idm_rt.build --precision fp16 --tile 128,256 --batch 1,4 --out engines/face --workspace 8192
  python -m idm_rt.build --scales 2,3,4 --input-size 64x64 --tile 256 --explain
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m idm_rt.build",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export IDM to ONNX per bucket (HR tile shape + batch range) and build "
        "ONNX Runtime or TensorRT engines with a manifest.",
    )
    ap.add_argument(
        "--precision",
        "--engine",
        dest="precision",
        choices=ENGINE_PRECISIONS,
        help="U-Net precision (encoder and conditioner stay fp32; --engine is its earlier name); default fp16 for "
        "TensorRT, fp32 for "
        "ONNX Runtime (as Upscaler builds them); int8 (ONNX Runtime on CPUs): each bucket's U-Net "
        "quantised after calibration on the model's own sampling (its dynamic U-Net stays fp32)",
    )
    ap.add_argument(
        "--calibration",
        metavar="SOURCE",
        help="--precision int8: the calibration images, a folder, 'skimage', 'synthetic' or 'auto' (default: "
        "../shared/datasets/train beside a checkout, else scikit-image's photos, else synthetic)",
    )
    ap.add_argument(
        "--skip-int8-check",
        action="store_true",
        help="--precision int8: keep the engine without checking it against the float32 model (parity and "
        "images on held-out photos; by default an engine that falls short is an error, exit 1)",
    )
    ap.add_argument("--model", help="checkpoint: released .pth or project folder (default: the bundled model)")
    ap.add_argument(
        "--max-scale",
        type=float,
        metavar="M",
        help="largest training scale M of the model (released .pth files do not record it: 8 unless "
        "given, 4 for the DIV2K models); engines record it",
    )
    ap.add_argument("--out", help="engine directory (default: engines/<model>-<backend>-<engine>)")
    ap.add_argument("--scales", help="magnifications to cover, e.g. 2,3,4,8 (with --input-size)")
    ap.add_argument("--input-size", help="LR input size WxH for --scales, e.g. 64x64")
    ap.add_argument(
        "--tile",
        help=f"square HR tile side(s), e.g. 128 or 128,256 (default "
        f"{','.join(map(str, DEFAULT_TILES))} when no --scales)",
    )
    ap.add_argument("--batch", default="1", help="batch size N or range MIN,MAX of every bucket (default 1)")
    ap.add_argument(
        "--backend",
        choices=BUILD_BACKENDS,
        default="tensorrt",
        help="engines to build (default tensorrt; onnxruntime works on a CPU)",
    )
    ap.add_argument("--workspace", type=int, default=4096, metavar="MiB", help="TensorRT workspace limit (MiB)")
    ap.add_argument(
        "--conv",
        choices=("auto", "direct", "winograd"),
        default="auto",
        help="the U-Net's wide 3x3 convolutions as Conv nodes or as Winograd transforms and products "
        "(fewer multiplications: faster with ONNX Runtime on a CPU, slower than cuDNN on a GPU); "
        "auto (default): winograd for --backend onnxruntime --precision fp32, else direct",
    )
    ap.add_argument(
        "--export-device",
        default="cpu",
        metavar="DEVICE",
        help="where the graphs are traced for export (default cpu; cuda traces a float16 U-Net in seconds "
        "where a CPU takes minutes, the same graph)",
    )
    ap.add_argument(
        "--no-static",
        action="store_true",
        help="the U-Net with dynamic sizes only, no static graph per bucket: about a third of the files' "
        "size (the bundled model's graphs are built so), every call on the dynamic graph",
    )
    ap.add_argument("--force", action="store_true", help="rebuild everything, even what the manifest says matches")
    add_threads_argument(ap)
    ap.add_argument(
        "--explain",
        action="store_true",
        help="print the buckets and which bucket each --scales request uses, then stop",
    )
    return ap


def _plan(args: argparse.Namespace):
    scales = parse_list(args.scales, float) if args.scales else []
    size = parse_size(args.input_size) if args.input_size else None
    tiles = parse_list(args.tile, int) if args.tile is not None else []
    if args.tile is not None and not tiles:
        raise ValueError(f"--tile needs one or more sides, got {args.tile!r}")
    return scales, size, plan_buckets(scales, size, tiles, parse_batch(args.batch))


def explain(buckets, scales, size, multiple: int | None, costs: TileCosts) -> str:
    """The bucket plan and, for each requested scale, the bucket (or tiling) the request runs on (``costs``: what the
    engines' tile rule weighs, :meth:`idm_rt.backends.base.EngineRunner.costs_for`)."""
    lines = ["buckets (HR tile height x width, batch range):"] + [f"  {b.name}" for b in buckets]
    if size and multiple:
        lines.append("requests (input and output width x height):")
        for s in scales:
            out = (round(size[1] * s), round(size[0] * s))
            lines.append(f"  {size[0]}x{size[1]} x{s:g}: " + route(buckets, out, multiple, costs).describe())
    lines += ["rule:", RULE]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    configure_threads(args.threads)
    try:
        scales, size, buckets = _plan(args)
    except ValueError as e:
        ap.error(str(e))
    if args.workspace < 16:
        ap.error("--workspace is in MiB and must be at least 16")
    if args.max_scale is not None:
        try:
            check_max_scale(args.max_scale)
        except ValueError as e:
            ap.error(f"--max-scale: {e}")
    args.precision = args.precision or BACKENDS[args.backend].precisions[0]
    if args.precision not in BACKENDS[args.backend].precisions:
        ap.error(
            f"--precision {args.precision} is for --backend onnxruntime (TensorRT builds take "
            f"{' or '.join(BACKENDS['tensorrt'].precisions)})"
        )
    if (args.calibration is not None or args.skip_int8_check) and args.precision != "int8":
        ap.error(f"{'--calibration' if args.calibration is not None else '--skip-int8-check'} is for --precision int8")
    if args.conv == "winograd" and (args.backend, args.precision) != ("onnxruntime", "fp32"):
        ap.error(
            "--conv winograd is for --backend onnxruntime --precision fp32 (TensorRT chooses its own "
            "convolution algorithms, and the transforms lose too much in float16)"
        )
    conv = args.conv if args.conv != "auto" else auto_conv(args.backend, args.precision)
    model_path = Path(args.model) if args.model else idm_rt.DEFAULT_MODEL
    if not model_path.exists():
        hint = "this build of idm-rt has no bundled default model yet; " if not args.model else ""
        print(
            f"error: {hint}no model at {model_path}; pass --model PATH (a released .pth or a project folder)",
            file=sys.stderr,
        )
        return 1
    try:
        if args.explain:
            from idm_rt.checkpoints import load_model
            from idm_rt.cost import stage_flops

            config = load_model(model_path).config
            runner = BACKENDS[args.backend].runner_class(check=False)
            costs = runner.costs_for(stage_flops(config), not args.no_static, conv == "winograd", args.precision)
            print(explain(buckets, scales, size, config.size_multiple, costs))
            return 0
        require_packages(args.backend)
        from .builder import BuildOptions, build  # onnx and the exporter, only when building

        out = Path(args.out) if args.out else Path("engines") / f"{model_path.stem}-{args.backend}-{args.precision}"
        command = shlex.join(["python", "-m", "idm_rt.build", *(sys.argv[1:] if argv is None else argv)])
        options = BuildOptions(
            model_path,
            out,
            args.precision,
            args.backend,
            buckets,
            args.workspace,
            args.force,
            command,
            conv,
            args.max_scale,
            args.calibration or "auto",
            not args.skip_int8_check,
            args.export_device,
            not args.no_static,
        )
        return build(options)
    except (OSError, ValueError, RuntimeError, ImportError) as e:  # export's BuildError is a RuntimeError
        print(f"error: {e}", file=sys.stderr)
        return 1
