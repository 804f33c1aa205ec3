"""Command line: ``python -m idm_rt upscale ...`` and ``python -m idm_rt convert ...``."""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .fileio import atomic_write

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}

UPSCALE_EXAMPLES = """examples:
  python -m idm_rt upscale photo.png -o photo_x4.png --scale 4
  python -m idm_rt upscale shots/ 'more/*.jpg' -o out/ --scale 3.3 --steps 20 --seed 0
  python -m idm_rt upscale small.png -o big.png --size 1920x1080 --tile 256 --device cuda
  python -m idm_rt upscale face.png -o face_x8.png --scale 8 --model idm_face_8x.pth
"""


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT, e.g. 1920x1080, got {text!r}")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    from .diffusion import SAMPLERS

    ap = argparse.ArgumentParser(prog="python -m idm_rt", description="IDM continuous-scale super-resolution")
    sub = ap.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale images", epilog=UPSCALE_EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Upscale image files by any real factor (or to a given size).")
    up.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders (all images inside) or globs")
    up.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="output file (one input) or folder (written as OUT/<name>.png)")
    g = up.add_mutually_exclusive_group(required=True)
    g.add_argument("--scale", type=float, help="magnification > 1, e.g. 4 or 3.3; the output is round(h*s) x round(w*s)")
    g.add_argument("--size", type=_size, metavar="WxH", help="explicit output size, e.g. 1920x1080")
    up.add_argument("--steps", type=int, help="sampling steps (default: the model's default, 20)")
    up.add_argument("--sampler", choices=SAMPLERS, help="dpmpp_2m (default, few steps), ddim, or ddpm (2000 calls)")
    up.add_argument("--seed", type=int, help="random seed; the same seed gives the same output")
    up.add_argument("--init", choices=("noise", "bicubic"),
                    help="start from pure noise (the paper) or from the bicubic upscale diffused to --init-level "
                         "(default: the model's recommendation)")
    up.add_argument("--init-level", type=float, metavar="G", help="noise level in (0, 1) of a bicubic start")
    up.add_argument("--tile", type=int, help="HR tile side for large outputs, multiple of 8 (default 512; 0: off)")
    up.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    up.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                    help="U-Net precision: fp32 (default) or fp16/bf16 autocast (GPUs)")
    up.add_argument("--model", help="checkpoint: released .pth or project folder (default: the bundled model)")
    up.add_argument("--overwrite", action="store_true", help="replace existing output files")
    up.add_argument("--max-pixels", type=int, default=64_000_000, help="largest output accepted (default 64e6)")

    cv = sub.add_parser("convert", help="convert a released .pth checkpoint to the project format",
                        description="Convert a released IDM .pth into a folder with model.safetensors and "
                                    "config.json.",
                        epilog="example:\n  python -m idm_rt convert idm_face_8x.pth models/face8x --max-scale 8",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    cv.add_argument("input", metavar="IN.pth")
    cv.add_argument("output", metavar="OUT", help="output folder")
    cv.add_argument("--max-scale", type=float, required=True,
                    help="largest training magnification M of that model (8 for faces, 4 for DIV2K)")
    cv.add_argument("--fp16", action="store_true", help="store the weights as float16")
    return ap


def expand_inputs(items: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (images inside, sorted) and globs -> (files, problems)."""
    files, problems = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            if not found:
                problems.append(f"{item}: no images in this folder")
            files += found
        elif p.exists():
            files.append(p)
        else:
            matched = sorted(Path(m) for m in glob.glob(item) if Path(m).is_file())
            if not matched:
                problems.append(f"{item}: no such file")
            files += matched
    return files, problems


def image_format(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower(),
                                                                                   path.suffix[1:].upper())


def cmd_upscale(args: argparse.Namespace) -> int:
    from PIL import Image

    from .upscaler import Upscaler

    files, problems = expand_inputs(args.inputs)
    for msg in problems:
        print(f"error: {msg}", file=sys.stderr)
    if not files:
        return 1
    out = Path(args.output)
    to_folder = len(files) > 1 or out.is_dir() or out.suffix.lower() not in IMAGE_SUFFIXES
    if not to_folder and out.suffix.lower() not in IMAGE_SUFFIXES:
        print(f"error: unknown output image type {out.suffix!r}", file=sys.stderr)
        return 1
    try:
        up = Upscaler.from_pretrained(args.model, device=args.device, max_pixels=args.max_pixels,
                                      precision=args.precision)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed = len(problems)
    bar = tqdm(files, desc="images", unit="img", disable=len(files) == 1)
    for path in bar:
        target = out / f"{path.stem}.png" if to_folder else out
        if target.exists() and not args.overwrite:
            tqdm.write(f"error: {target} exists (use --overwrite to replace it); skipped {path}", file=sys.stderr)
            failed += 1
            continue
        try:
            with Image.open(path) as im:
                im.load()
                image = im
        except Exception as e:  # PIL raises several types for unreadable files
            tqdm.write(f"error: cannot read {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        try:
            result = up.upscale(image, scale=args.scale, size=args.size, steps=args.steps, sampler=args.sampler,
                                seed=args.seed, tile=args.tile, progress=True, init=args.init,
                                init_level=args.init_level)
        except ValueError as e:
            tqdm.write(f"error: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        atomic_write(target, lambda tmp: result.save(tmp, format=image_format(target)))
        tqdm.write(f"{path} -> {target} ({result.size[0]}x{result.size[1]})")
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from .checkpoints import CheckpointMismatch, load_model, model_hash, save_model

    try:
        model = load_model(args.input, max_scale=args.max_scale)
    except (FileNotFoundError, CheckpointMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    prov = {"converted_from": Path(args.input).name, "source_hash": model_hash(model)}
    save_model(model, args.output, dtype=torch.float16 if args.fp16 else torch.float32, provenance=prov)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output} ({n / 1e6:.1f} M parameters, max scale {model.max_scale:g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"upscale": cmd_upscale, "convert": cmd_convert}[args.command](args)
