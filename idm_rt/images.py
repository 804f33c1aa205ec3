"""Conversion between user images (PIL, numpy, torch) and the network's RGB arrays in [-1, 1] (numpy, on the host;
the Upscaler moves them to the model's device).

Grayscale is run as RGB and averaged back; alpha is upscaled separately (bicubic), as image
editors do, and reattached. The output has the input's kind, dtype, channel count and layout;
PIL images come back in their own mode where Pillow converts back to it (:data:`PIL_MODES`). torch tensors are read
and given back without torch being needed for anything else (it is there when a tensor is passed).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .resize import bicubic_upscale

ImageLike = Any  # PIL.Image.Image | np.ndarray | torch.Tensor
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}  # files read as images

# Integer dtypes are read as fractions of their largest value; floats must lie in [0, 1].
_INT_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
_FLOATS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}
# The numpy dtype each supported torch dtype (by name) is converted through (numpy has no bfloat16).
_TORCH_AS_NUMPY = {
    "uint8": np.uint8,
    "uint16": np.uint16,
    "float16": np.float16,
    "bfloat16": np.float32,
    "float32": np.float32,
    "float64": np.float64,
}

# PIL modes: (the mode an image is read in, the mode its result comes back in). The result is
# converted back by Pillow; where that would lose what the upscale made, it comes back in the
# nearest mode with the same channels and alpha.
PIL_MODES: dict[str, tuple[str, str]] = {
    "1": ("L", "L"),  # one bit cannot hold the upscaled edges: 8-bit gray
    "L": ("L", "L"),
    "LA": ("LA", "LA"),
    "La": ("LA", "La"),  # premultiplied alpha: undone, then redone
    "P": ("RGB", "RGB"),  # RGBA with transparency (see _from_pil): a new palette would change the colours
    "PA": ("RGBA", "RGBA"),
    "RGB": ("RGB", "RGB"),
    "RGBA": ("RGBA", "RGBA"),
    "RGBa": ("RGBA", "RGBa"),
    "RGBX": ("RGB", "RGBX"),
    "CMYK": ("RGB", "CMYK"),  # Pillow's plain conversion both ways (K comes back 0)
    "YCbCr": ("RGB", "YCbCr"),
    "LAB": ("RGB", "LAB"),  # through sRGB (ImageCms)
    "HSV": ("RGB", "HSV"),
    # high-bit gray, read and given back as it is: I and I;16* in 0..65535, F in [0, 1]
    "I": ("I", "I"),
    "I;16": ("I;16", "I;16"),
    "I;16L": ("I;16L", "I;16L"),
    "I;16B": ("I;16B", "I;16B"),
    "I;16N": ("I;16N", "I;16N"),
    "F": ("F", "F"),
}
HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_U16_BYTES = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}  # byte order of the 16-bit modes


@dataclass(frozen=True)
class ImageKind:
    """How to give an image back the way it came: kind, dtype and layout."""

    kind: str  # "pil" | "numpy" | "torch"
    dtype: Any  # numpy or torch dtype (PIL: the mode the result comes back in)
    gray: bool
    alpha: bool
    layout: str = "HWC"  # numpy: "HW" | "HWC"; torch: "HW" | "CHW"
    device: Any = None


def is_tensor(image: Any) -> bool:
    """Whether ``image`` is a torch tensor (checked without importing torch: one exists only where torch is)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(image, torch.Tensor)


def to_array(image: ImageLike) -> tuple[np.ndarray, np.ndarray | None, ImageKind]:
    """(rgb (1, 3, h, w) float32 in [-1, 1], alpha (1, 1, h, w) in [0, 1] or None, kind), numpy arrays."""
    if isinstance(image, Image.Image):
        return _from_pil(upright(image))
    if isinstance(image, np.ndarray):
        return _from_numpy(image)
    if is_tensor(image):
        return _from_torch(image)
    raise ValueError(f"unsupported image type {type(image).__name__}: pass a PIL image, numpy array or torch tensor")


def split_inputs(image: ImageLike | list | tuple) -> tuple[list[ImageLike], Callable[[list[ImageLike]], Any]]:
    """The images of an ``upscale`` argument, and how to give their results back: one image, a list
    or tuple of them (a list back), or an N x C x H x W tensor (an N x C x H' x W' tensor back)."""
    if isinstance(image, (list, tuple)):
        return list(image), list
    if is_tensor(image) and image.dim() == 4:
        import torch

        _check_tensor(image)
        channels_last = image.is_contiguous(memory_format=torch.channels_last) and not image.is_contiguous()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return list(image.detach().unbind(0)), lambda outs: torch.stack(outs).contiguous(memory_format=fmt)
    return [image], lambda outs: outs[0]


def from_array(rgb: np.ndarray, alpha: np.ndarray | None, kind: ImageKind) -> ImageLike:
    """Inverse of :func:`to_array` for one image (1, 3, H, W) in [-1, 1] (numpy)."""
    x = np.clip((rgb[0].astype(np.float32) + 1) / 2, 0, 1)  # (3, H, W) in [0, 1]
    if kind.gray:
        x = x.mean(0, keepdims=True)
    if alpha is not None:
        x = np.concatenate([x, np.clip(alpha[0].astype(np.float32), 0, 1)], 0)
    hwc = np.moveaxis(x, 0, -1)
    if kind.kind == "pil":
        return _to_pil(hwc, kind.dtype)
    if kind.kind == "numpy":
        out = _float_to_dtype(hwc, kind.dtype)
        return out[..., 0] if kind.layout == "HW" else out
    import torch

    t = torch.from_numpy(_float_to_dtype(hwc, np.dtype(_TORCH_AS_NUMPY[str(kind.dtype).removeprefix("torch.")])))
    t = t.permute(2, 0, 1).to(kind.dtype).contiguous()
    t = t[0] if kind.layout == "HW" else t
    return t.to(kind.device)


def upright(image: Image.Image) -> Image.Image:
    """A copy of ``image`` as viewers show it: its EXIF orientation (a phone's rotated shot) applied
    and the tag dropped. The Upscaler and the CLI both read images through it, so a file gives the
    same result either way."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:  # noqa: BLE001 (a damaged file or EXIF block: Pillow raises many types)
        raise ValueError(f"cannot read the image ({e.__class__.__name__}: {e})") from None


def _split(hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) float32 in [0, 1] with C in 1..4 -> rgb (1, 3, H, W) in [-1, 1] and alpha (1, 1, H, W)."""
    x = np.moveaxis(hwc, -1, 0)[None]
    c = x.shape[1]
    alpha = np.ascontiguousarray(x[:, c - 1 :]) if c in (2, 4) else None
    color = x[:, : c - 1] if alpha is not None else x
    if color.shape[1] == 1:
        color = np.broadcast_to(color, (1, 3, *color.shape[2:]))
    return np.ascontiguousarray(color * np.float32(2) - np.float32(1), dtype=np.float32), alpha


def _check_size(h: int, w: int) -> None:
    if h * w < 2:  # one pixel has no spatial statistics for the network's normalisations
        raise ValueError(f"image too small ({w}x{h}): it needs at least 2 pixels")


def _unsupported_dtype(dtype: Any) -> ValueError:
    return ValueError(f"unsupported image dtype {dtype}: use uint8, uint16 or float in [0, 1]")


def _to_float(hwc: np.ndarray) -> np.ndarray:
    """H x W x C array of a supported dtype (any byte order and strides) -> float32 array in [0, 1]."""
    _check_size(hwc.shape[0], hwc.shape[1])
    native = hwc.dtype.newbyteorder("=")
    if native in _INT_MAX:
        f = hwc.astype(np.float32) / _INT_MAX[native]
    elif native in _FLOATS:
        if not np.isfinite(hwc).all():
            raise ValueError("image contains NaN or infinite values")
        lo, hi = hwc.min(), hwc.max()
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        f = np.clip(hwc.astype(np.float32), 0, 1)
    else:
        raise _unsupported_dtype(hwc.dtype)
    return np.ascontiguousarray(f)


def _float_to_dtype(hwc: np.ndarray, dtype: np.dtype) -> np.ndarray:
    native = dtype.newbyteorder("=")
    if native in _INT_MAX:
        return (hwc * _INT_MAX[native] + 0.5).astype(dtype)
    return hwc.astype(dtype)


def _from_numpy(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, ImageKind]:
    """HxW or HxWxC (C = 1..4) array."""
    if isinstance(arr, np.ma.MaskedArray):
        raise TypeError("masked arrays are not supported: fill the masked pixels first (arr.filled(...))")
    arr = np.asarray(arr)  # subclasses (np.matrix, ...) as plain arrays
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"image array must be HxW or HxWxC with C in 1..4, got shape {arr.shape}")
    hwc = arr[..., None] if arr.ndim == 2 else arr
    c = hwc.shape[2]
    kind = ImageKind("numpy", arr.dtype, gray=c <= 2, alpha=c in (2, 4), layout="HW" if arr.ndim == 2 else "HWC")
    return (*_split(_to_float(hwc)), kind)


def _from_pil(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, ImageKind]:
    if im.mode not in PIL_MODES:
        raise ValueError(f"unsupported PIL image mode {im.mode!r}; supported: {', '.join(PIL_MODES)}")
    read, back = PIL_MODES[im.mode]
    if im.mode == "P" and im.has_transparency_data:
        read = back = "RGBA"
    arr = np.asarray(im if im.mode == read else im.convert(read))
    if im.mode == "I":  # 32-bit signed: read in the 16-bit range that 16-bit files decode to
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(
                f"mode I images must hold values in 0..65535 (16-bit), got values in [{arr.min()}, {arr.max()}]"
            )
        arr = arr.astype(np.uint16)
    hwc = arr[..., None] if arr.ndim == 2 else arr
    c = hwc.shape[2]
    return (*_split(_to_float(hwc)), ImageKind("pil", back, gray=c <= 2, alpha=c in (2, 4)))


def _to_pil(hwc: np.ndarray, mode: str) -> Image.Image:
    """H x W x C floats in [0, 1] -> a PIL image in ``mode`` (see :data:`PIL_MODES`)."""
    if mode == "F":
        return Image.fromarray(np.ascontiguousarray(hwc[..., 0], dtype=np.float32))
    if mode in HIGH_BIT_MODES:
        u16 = _float_to_dtype(hwc[..., 0], np.dtype(np.uint16))
        if mode == "I":
            return Image.fromarray(u16.astype(np.int32))
        return Image.frombytes(mode, (u16.shape[1], u16.shape[0]), u16.astype(_U16_BYTES[mode]).tobytes())
    arr = _float_to_dtype(hwc, np.dtype(np.uint8))
    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)  # L, LA, RGB or RGBA
    return im if im.mode == mode else im.convert(mode)


def _check_tensor(t: Any) -> None:
    """ValueError for tensors that hold no plain pixel values (sparse, nested, meta, quantized)."""
    import torch

    if t.is_nested or t.layout != torch.strided:
        raise ValueError(
            f"image tensors must be dense, got a {'nested' if t.is_nested else t.layout} tensor "
            "(convert it with .to_dense())"
        )
    if t.is_meta:
        raise ValueError("a meta tensor has no values to upscale")
    if t.is_quantized:
        raise ValueError(f"quantized image tensors ({t.dtype}) are not supported: pass t.dequantize()")


def _from_torch(t: Any) -> tuple[np.ndarray, np.ndarray | None, ImageKind]:
    """HxW or CxHxW (C = 1..4) tensor, channels first."""
    import torch

    _check_tensor(t)
    if t.dim() not in (2, 3) or (t.dim() == 3 and t.shape[0] not in (1, 2, 3, 4)):
        raise ValueError(
            f"image tensor must be HxW or CxHxW with C in 1..4 (channels first; a batch is one "
            f"N x C x H x W tensor), got shape {tuple(t.shape)}"
        )
    if str(t.dtype).removeprefix("torch.") not in _TORCH_AS_NUMPY:
        raise _unsupported_dtype(t.dtype)
    src = t.detach().cpu().resolve_neg()  # a negated view (x.conj().imag) has no numpy form until resolved
    arr = (src.float() if t.dtype == torch.bfloat16 else src).numpy()
    hwc = arr[..., None] if t.dim() == 2 else np.moveaxis(arr, 0, -1)
    c = hwc.shape[2]
    kind = ImageKind(
        "torch", t.dtype, gray=c <= 2, alpha=c in (2, 4), layout="HW" if t.dim() == 2 else "CHW", device=t.device
    )
    return (*_split(_to_float(hwc)), kind)


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic upscale of an alpha channel (1, 1, h, w) in [0, 1] to (H, W)."""
    return np.clip(bicubic_upscale(alpha, size), 0, 1)
