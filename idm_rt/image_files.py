"""Image files: reading them upright, and saving in the format a suffix names, in the nearest mode that
format holds. One place for the rules the command line, the service and the batch jobs follow."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageMode
from tqdm.auto import tqdm

from .fileio import atomic_write
from .images import HIGH_BIT_MODES, upright


def image_format(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        path.suffix.lower(), path.suffix[1:].upper()
    )


# The modes each output format is saved in (all Pillow's writers hold); an image in another mode is
# saved in the nearest of them (save_mode): JPEG has no alpha and no 16-bit, WebP only 8-bit RGB(A),
# BMP no 16-bit or gray alpha, PNG no float or colour spaces other than RGB; TIFF holds most.
FORMAT_MODES = {
    "PNG": ("L", "LA", "RGB", "RGBA", "I;16", "I;16B"),
    "JPEG": ("L", "RGB", "RGBX", "CMYK", "YCbCr"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("L", "RGB"),  # Pillow writes no BMP header that holds alpha
    "TIFF": ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "I", "I;16", "I;16L", "I;16B", "F"),
}


# JPEG and WebP quality: Pillow's default of 75 blurs away much of the detail an upscale adds.
LOSSY_QUALITY = 95
ICC_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")  # the formats whose Pillow writers store an ICC profile


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


def storable(image: Image.Image, fmt: str) -> Image.Image:
    """``image`` in a mode that format ``fmt`` (e.g. "PNG", "JPEG") can hold, converted if needed
    (:func:`save_mode`)."""
    mode = save_mode(image.mode, fmt)
    return convert_mode(image, mode) if mode != image.mode else image


def encode_image(image: Image.Image, fmt: str, fp: str | BinaryIO) -> None:
    """Write ``image`` to ``fp`` (a path or a binary file) in format ``fmt``: in a mode the format holds
    (:func:`storable`), JPEG and WebP at quality :data:`LOSSY_QUALITY`, with the image's ICC profile when its
    mode is kept (a converted image's profile would describe other colours)."""
    stored = storable(image, fmt)
    options = {"quality": LOSSY_QUALITY} if fmt in ("JPEG", "WEBP") else {}
    if image.info.get("icc_profile") and stored.mode == image.mode and fmt in ICC_FORMATS:
        options["icc_profile"] = image.info["icc_profile"]
    stored.save(fp, format=fmt, **options)


def save_image(image: Image.Image, target: Path, replace: bool = True) -> None:
    """Atomic save (:func:`encode`) in the format the suffix names, converting modes that format cannot hold;
    ``replace=False`` keeps a file that exists at ``target`` (FileExistsError)."""
    fmt = image_format(target)
    mode = save_mode(image.mode, fmt)
    if mode != image.mode:
        tqdm.write(
            f"note: {fmt} cannot store mode {image.mode}; saving {target.name} as {mode}"
            + ("; its colour profile is dropped" if image.info.get("icc_profile") else ""),
            file=sys.stderr,
        )
    atomic_write(target, lambda tmp: encode_image(image, fmt, tmp), replace=replace)


def read_image(
    source: str | Path | BinaryIO, max_pixels: int | None = None, check_size: Callable[[int, int], object] | None = None
) -> Image.Image:
    """An image file (path or binary file object) decoded and turned upright as viewers show it (EXIF
    orientation); ``max_pixels`` refuses larger images, and ``check_size(height, width)`` (the stored size,
    before the EXIF turn; e.g. :meth:`~idm_rt.Upscaler.check_output_pixels`) runs, before decoding.
    Raises what PIL raises for unreadable data (several types), ValueError for too many pixels."""
    with Image.open(source) as im:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ValueError(f"image {im.width}x{im.height} has more than {max_pixels} pixels")
        if check_size is not None:
            check_size(im.height, im.width)
        if getattr(im, "n_frames", 1) > 1:
            what = source if isinstance(source, (str, Path)) else "the image"
            tqdm.write(f"note: {what} holds {im.n_frames} frames or pages; only the first is upscaled", file=sys.stderr)
        im.load()
        return upright(im)  # as viewers show it, and as the API reads it
