"""Command line: ``python -m idm_rt upscale ...`` and ``python -m idm_rt convert ...``."""

from __future__ import annotations

import argparse
import glob
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode
from tqdm.auto import tqdm

from .fileio import atomic_write
from . import sampling
from .images import HIGH_BIT_MODES, IMAGE_SUFFIXES, upright
from .threads import add_threads_argument, configure_threads

UPSCALE_EXAMPLES = """examples:
  python -m idm_rt upscale photo.png -o photo_x4.png --scale 4
  python -m idm_rt upscale shots/ 'more/*.jpg' -o out/ --scale 3.3 --steps 20 --seed 0
  python -m idm_rt upscale small.png -o big.png --size 1920x1080 --tile 256 --device cuda
  python -m idm_rt upscale face.png -o face_x8.png --scale 8 --model idm_face_8x.pth
  python -m idm_rt upscale photo.png -o photo_x4.png --scale 4 --engines engines/default-onnxruntime-fp32
  python -m idm_rt upscale photo.png -o photo_x4.png --scale 4 --backend onnxruntime
"""


def _size(text: str) -> tuple[int, int]:
    from .buckets import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _pixels(text: str) -> int:
    """A positive pixel count, also written as 64e6."""
    try:
        n = float(text)
    except ValueError:
        n = 0
    if not (math.isfinite(n) and n >= 1 and n == int(n)):
        raise argparse.ArgumentTypeError(f"must be a positive whole number of pixels, e.g. 64e6, got {text!r}")
    return int(n)


def build_parser() -> argparse.ArgumentParser:
    from .backends import BACKENDS

    ap = argparse.ArgumentParser(prog="python -m idm_rt", description="IDM continuous-scale super-resolution")
    sub = ap.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale images", epilog=UPSCALE_EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Upscale image files by any real factor (or to a given size).")
    up.add_argument("inputs", nargs="+", metavar="IN", help="image files, folders (all images inside) or globs")
    up.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="output file (one input) or folder (written as OUT/<name>.png; several inputs need one)")
    g = up.add_mutually_exclusive_group(required=True)
    g.add_argument("--scale", type=float, help="magnification > 1, e.g. 4 or 3.3; the output is round(h*s) x round(w*s)")
    g.add_argument("--size", type=_size, metavar="WxH", help="explicit output size, e.g. 1920x1080")
    sampling.add_arguments(up)
    up.add_argument("--seed", type=int, help="random seed; the same seed gives the same output")
    up.add_argument("--tile", type=int, help="HR tile side for large outputs (default 512, engines: their bucket rule; "
                                             "0: off); rounded down to the model's size multiple (8 for the default "
                                             "model, 16 for released)")
    up.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cpu; cuda for TensorRT --engines)")
    up.add_argument("--precision", choices=("fp32", "fp16", "bf16"),
                    help="U-Net precision: fp32 (default) or fp16/bf16 autocast (GPUs only: many times slower on "
                         "a CPU, so refused there); with --backend, the precision its engines are built in (fp32 or "
                         "fp16; default fp32 for onnxruntime, fp16 for tensorrt); --engines keep their build's")
    src = up.add_mutually_exclusive_group()
    src.add_argument("--model", help="checkpoint: released .pth or project folder (default: the bundled model)")
    src.add_argument("--engines", metavar="DIR",
                     help="an engine directory built by python -m idm_rt.build, run with its backend "
                          "(ONNX Runtime or TensorRT) instead of torch")
    up.add_argument("--backend", choices=("torch", *BACKENDS),
                    help="torch (default); onnxruntime or tensorrt run engines, built for --model on first use "
                         "into ~/.cache/idm_rt ($IDM_RT_CACHE) and reused after; with --engines, default: the "
                         "directory's own")
    up.add_argument("--max-scale", type=float, metavar="M",
                    help="largest training scale of a released .pth (8 for the face model, 4 for DIV2K; default 8)")
    up.add_argument("--overwrite", action="store_true", help="replace existing output files")
    up.add_argument("--max-pixels", type=_pixels, default=64_000_000, help="largest output accepted (default 64e6)")
    add_threads_argument(up)

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
    cv.add_argument("--overwrite", action="store_true", help="replace an existing model in OUT")
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
    unique = list(dict.fromkeys(p.resolve() for p in files))  # a file named twice is done once
    return unique, problems


def image_format(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower(),
                                                                                   path.suffix[1:].upper())


# The modes each output format is saved in (all Pillow's writers hold); an image in another mode is
# saved in the nearest of them (save_mode): JPEG has no alpha and no 16-bit, WebP only 8-bit RGB(A),
# BMP no 16-bit or gray alpha, PNG no float or colour spaces other than RGB; TIFF holds most.
FORMAT_MODES = {"PNG": ("L", "LA", "RGB", "RGBA", "I;16", "I;16B"),
                "JPEG": ("L", "RGB", "RGBX", "CMYK", "YCbCr"),
                "WEBP": ("RGB", "RGBA"),
                "BMP": ("L", "RGB", "RGBA"),
                "TIFF": ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "I", "I;16", "I;16L", "I;16B", "F")}


def save_mode(mode: str, fmt: str) -> str:
    """``mode`` when ``fmt`` holds it, else the nearest mode it does: high-bit gray as 16-bit, else
    8-bit gray, else RGB; gray stays gray and alpha stays where the format allows."""
    allowed = FORMAT_MODES[fmt]
    if mode in allowed:
        return mode
    bands = ImageMode.getmode(mode).bands
    alpha = len(bands) in (2, 4) and bands[-1] in ("A", "a")
    if mode in HIGH_BIT_MODES:
        nearest = ("I;16", "L", "RGB")
    elif bands[0] == "L" and len(bands) <= 2:
        nearest = ("LA", "RGBA", "L", "RGB") if alpha else ("L", "RGB")
    else:
        nearest = ("RGBA", "RGB") if alpha else ("RGB",)
    return next(m for m in nearest if m in allowed)


def output_targets(files: list[Path], out: Path, to_folder: bool) -> list[Path]:
    """Where each input goes: ``OUT/<stem>.png`` in folder mode (``<name>.png`` for inputs sharing a
    stem, then ``-2``, ``-3``... for same-named files from different folders), so none overwrites another."""
    if not to_folder:
        return [out]
    stems = [p.stem for p in files]
    targets: list[Path] = []
    for p in files:
        name = p.name if stems.count(p.stem) > 1 else p.stem
        target, n = out / f"{name}.png", 1
        while target in targets:
            n += 1
            target = out / f"{name}-{n}.png"
        targets.append(target)
    return targets


def convert_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode``, scaling 16-bit and float ([0, 1]) gray to the target's bit depth."""
    if image.mode == "La":  # Pillow converts premultiplied gray only to LA
        image = image.convert("LA")
    if image.mode in HIGH_BIT_MODES:
        arr = np.asarray(image, dtype=np.float64) * (65535.0 if image.mode == "F" else 1.0)  # 16-bit range
        if mode == "I;16":
            return Image.fromarray(np.clip(arr + 0.5, 0, 65535).astype(np.uint16))
        image = Image.fromarray(np.clip(arr / 257 + 0.5, 0, 255).astype(np.uint8))
    return image if image.mode == mode else image.convert(mode)


def save_image(image: Image.Image, target: Path) -> None:
    """Atomic save in the format the suffix names, converting modes that format cannot hold."""
    fmt = image_format(target)
    mode = save_mode(image.mode, fmt)
    if mode != image.mode:
        tqdm.write(f"note: {fmt} cannot store mode {image.mode}; saving {target.name} as {mode}")
        image = convert_mode(image, mode)
    atomic_write(target, lambda tmp: image.save(tmp, format=fmt))


def cmd_upscale(args: argparse.Namespace) -> int:
    from .upscaler import Upscaler

    configure_threads(args.threads)
    files, problems = expand_inputs(args.inputs)
    for msg in problems:
        print(f"error: {msg}", file=sys.stderr)
    if not files:
        return 1
    out = Path(args.output)
    named_image = out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir()
    if len(files) > 1 and named_image:
        print(f"error: {len(files)} input images need an output folder, not the file name {out} (-o FOLDER writes "
              "FOLDER/<name>.png)", file=sys.stderr)
        return 1
    to_folder = len(files) > 1 or out.is_dir() or not out.suffix
    if not to_folder and not named_image:
        print(f"error: unknown output image type {out.suffix!r} (use one of {sorted(IMAGE_SUFFIXES)})",
              file=sys.stderr)
        return 1
    try:
        if args.engines:
            if args.precision or args.max_scale:
                raise ValueError("--precision and --max-scale are fixed when engines are built; drop them with "
                                 "--engines")
            if args.backend == "torch":
                raise ValueError("--engines runs engines; --backend torch is for --model")
            up = Upscaler.from_engines(args.engines, device=args.device, backend=args.backend,
                                       max_pixels=args.max_pixels)
        elif args.backend not in (None, "torch"):
            up = Upscaler.from_pretrained(args.model, device=args.device, backend=args.backend,
                                          max_pixels=args.max_pixels, precision=args.precision,
                                          max_scale=args.max_scale)
        else:
            up = Upscaler.from_pretrained(args.model, device=args.device or "cpu", max_pixels=args.max_pixels,
                                          precision=args.precision or "fp32", max_scale=args.max_scale)
        up.sampling = sampling.from_arguments(args, up.sampling)  # checked once, before any file
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed = len(problems)
    for path, target in zip(tqdm(files, desc="images", unit="img", disable=len(files) == 1),
                            output_targets(files, out, to_folder)):
        if target.exists() and not args.overwrite:
            tqdm.write(f"error: {target} exists (use --overwrite to replace it); skipped {path}", file=sys.stderr)
            failed += 1
            continue
        try:
            with Image.open(path) as im:
                im.load()
                image = upright(im)  # as viewers show it, and as the API reads it
        except Exception as e:  # PIL raises several types for unreadable files
            tqdm.write(f"error: cannot read {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        try:
            result = up.upscale(image, scale=args.scale, size=args.size, seed=args.seed, tile=args.tile, progress=True)
            save_image(result, target)
        except Exception as e:  # one bad file (or a full disk) must not stop the others
            tqdm.write(f"error: {path}: {e.__class__.__name__ + ': ' if not isinstance(e, ValueError) else ''}{e}",
                       file=sys.stderr)
            failed += 1
            continue
        tqdm.write(f"{path} -> {target} ({result.size[0]}x{result.size[1]})")
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
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
        return {"upscale": cmd_upscale, "convert": cmd_convert}[args.command](args)
    except KeyboardInterrupt:  # outputs are written atomically: nothing half-written is left
        print("interrupted", file=sys.stderr)
        return 130
