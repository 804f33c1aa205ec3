"""The output size of an upscale: ``round(h * s) x round(w * s)`` for a scale, or an explicit (width, height), and
the pixel limit it must keep. One rule for the Upscaler, the service's admission and the batch jobs' checks."""

from __future__ import annotations

import math
import numbers
from typing import Any


def output_size(
    height: int, width: int, scale: float | None, size: tuple[int, int] | None, max_pixels: int
) -> tuple[int, int]:
    """(H, W) of the output of an ``height`` x ``width`` input; ValueError naming what is wrong (both or neither
    of scale and size, a scale that is not > 1 or does not change the size, a size smaller than the input, an
    output above ``max_pixels``)."""
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    if scale is not None:
        s = as_float(scale)
        if not math.isfinite(s) or s <= 1:
            raise ValueError(f"scale must be a finite number > 1, got {scale!r}")
        if not math.isfinite(height * s * width):  # round() of inf would raise OverflowError
            raise ValueError(f"scale {scale} gives an output far above the limit of {max_pixels} pixels")
        out = (round(height * s), round(width * s))
        if out == (height, width):
            raise ValueError(f"scale {scale} is too small to change the size of a {width}x{height} image")
    else:
        out = size_hw(size)
        if out[0] < height or out[1] < width or out == (height, width):
            raise ValueError(f"size {size[0]}x{size[1]} must be larger than the input {width}x{height}")
    check_pixels(out, scale, max_pixels)
    return out


def check_output_pixels(
    height: int, width: int, scale: float | None, size: tuple[int, int] | None, max_pixels: int
) -> None:
    """ValueError when the output for an input of this size would be above ``max_pixels``. The count is the same
    whichever way up the input is, so this can run on a file's stored size before it is decoded and turned by its
    EXIF orientation (:func:`output_size` checks the rest afterwards)."""
    if scale is not None and size is None:
        output_size(height, width, scale, None, max_pixels)
    elif scale is None and size is not None:
        check_pixels(size_hw(size), None, max_pixels)


def check_pixels(out: tuple[int, int], scale: float | None, max_pixels: int) -> None:
    if scale is not None and out[0] * out[1] > 1000 * max_pixels:  # not worth a hundred-digit number
        raise ValueError(f"scale {scale} gives an output far above the limit of {max_pixels} pixels")
    if out[0] * out[1] > max_pixels:
        raise ValueError(
            f"output {out[1]}x{out[0]} has {out[0] * out[1]} pixels, above the limit of "
            f"{max_pixels} (raise max_pixels to allow it)"
        )


def size_hw(size: Any) -> tuple[int, int]:
    """An output ``size`` given as (width, height) integers, as (H, W); ValueError for anything else."""
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or any(not isinstance(v, numbers.Integral) or isinstance(v, bool) for v in size)
    ):
        raise ValueError(f"size must be (width, height) integers, got {size!r}")
    return int(size[1]), int(size[0])


def as_float(value: Any) -> float:
    """A real number as a float (inf when too large for one, as ints and fractions can be); NaN for others."""
    if not isinstance(value, numbers.Real):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.inf
