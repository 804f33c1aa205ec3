"""Conversion between user images (PIL, numpy, torch) and the network's RGB tensors in [-1, 1].

Grayscale is run as RGB and averaged back; alpha is upscaled separately (bicubic), as image
editors do, and reattached. The output has the input's kind, dtype, channel count and layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ImageLike = Any  # PIL.Image.Image | np.ndarray | torch.Tensor
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}  # files read as images


@dataclass(frozen=True)
class ImageKind:
    """How to give an image back the way it came: kind, dtype and layout."""

    kind: str  # "pil" | "numpy" | "torch"
    dtype: Any  # numpy or torch dtype (PIL: the mode)
    gray: bool
    alpha: bool
    layout: str = "HWC"  # numpy: "HW" | "HWC"; torch: "HW" | "CHW"
    device: Any = None


def to_tensor(image: ImageLike) -> tuple[torch.Tensor, torch.Tensor | None, ImageKind]:
    """(rgb (1, 3, h, w) float32 in [-1, 1], alpha (1, 1, h, w) in [0, 1] or None, kind)."""
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        arr, kind = _numpy_to_float(image)
        return (*_split(torch.from_numpy(arr)), kind)
    if isinstance(image, torch.Tensor):
        return _from_torch(image)
    raise ValueError(f"unsupported image type {type(image).__name__}: pass a PIL image, numpy array or torch tensor")


def from_tensor(rgb: torch.Tensor, alpha: torch.Tensor | None, kind: ImageKind) -> ImageLike:
    """Inverse of :func:`to_tensor` for one image (1, 3, H, W) in [-1, 1]."""
    x = ((rgb[0].float().cpu() + 1) / 2).clamp(0, 1)  # (3, H, W) in [0, 1]
    if kind.gray:
        x = x.mean(0, keepdim=True)
    if alpha is not None:
        x = torch.cat([x, alpha[0].float().cpu().clamp(0, 1)], 0)
    hwc = x.permute(1, 2, 0).numpy()
    if kind.kind == "pil":
        mode = kind.dtype
        if mode == "F":
            return Image.fromarray(np.ascontiguousarray(hwc[..., 0], dtype=np.float32), mode="F")
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            return Image.fromarray((hwc[..., 0] * 65535 + 0.5).astype(np.uint16))
        arr = (hwc * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if kind.kind == "numpy":
        out = _float_to_dtype(hwc, kind.dtype)
        return out[..., 0] if kind.layout == "HW" else out
    t = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1)
    if kind.dtype == torch.uint8:
        t = (t * 255 + 0.5).to(torch.uint8)
    else:
        t = t.to(kind.dtype)
    t = t[0] if kind.layout == "HW" else t
    return t.to(kind.device)


def _split(hwc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(H, W, C) float in [0, 1] with C in 1..4 -> rgb in [-1, 1] and alpha."""
    x = hwc.permute(2, 0, 1).float()[None]
    c = x.shape[1]
    alpha = x[:, c - 1:] if c in (2, 4) else None
    color = x[:, : c - 1] if alpha is not None else x
    if color.shape[1] == 1:
        color = color.expand(-1, 3, -1, -1)
    return color.contiguous() * 2 - 1, alpha


def _check_size(h: int, w: int) -> None:
    if h * w < 2:  # one pixel has no spatial statistics for the network's normalisations
        raise ValueError(f"image too small ({w}x{h}): it needs at least 2 pixels")


def _numpy_to_float(arr: np.ndarray) -> tuple[np.ndarray, ImageKind]:
    """HxW or HxWxC (C = 1..4) array -> float32 HxWxC in [0, 1]."""
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"image array must be HxW or HxWxC with C in 1..4, got shape {arr.shape}")
    _check_size(arr.shape[0], arr.shape[1])
    layout = "HW" if arr.ndim == 2 else "HWC"
    hwc = arr[..., None] if arr.ndim == 2 else arr
    if arr.dtype == np.uint8:
        f = hwc.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        f = hwc.astype(np.float32) / 65535.0
    elif arr.dtype in (np.float16, np.float32, np.float64):
        f = hwc.astype(np.float32)
        if not np.isfinite(f).all():
            raise ValueError("image contains NaN or infinite values")
        if f.min() < -1e-3 or f.max() > 1 + 1e-3:
            raise ValueError(f"float images must be in [0, 1], got values in [{f.min():.3g}, {f.max():.3g}]")
        f = np.clip(f, 0, 1)
    else:
        raise ValueError(f"unsupported image dtype {arr.dtype}: use uint8, uint16 or float in [0, 1]")
    c = hwc.shape[2]
    return np.ascontiguousarray(f), ImageKind("numpy", arr.dtype, gray=c <= 2, alpha=c in (2, 4), layout=layout)


def _float_to_dtype(hwc: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return (hwc * 255 + 0.5).astype(np.uint8)
    if dtype == np.uint16:
        return (hwc * 65535 + 0.5).astype(np.uint16)
    return hwc.astype(dtype)


def _from_pil(im: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None, ImageKind]:
    mode = im.mode
    if mode == "F":  # 32-bit float grayscale, expected in [0, 1] like float arrays
        f, _ = _numpy_to_float(np.asarray(im, dtype=np.float32))
        return (*_split(torch.from_numpy(f)), ImageKind("pil", mode, gray=True, alpha=False))
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.uint16) if mode != "I" else np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        f, _ = _numpy_to_float(arr)
        return (*_split(torch.from_numpy(f)), ImageKind("pil", mode, gray=True, alpha=False))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if "A" in mode else "RGB")
    f, kind = _numpy_to_float(np.asarray(im))
    return (*_split(torch.from_numpy(f)), ImageKind("pil", im.mode, gray=kind.gray, alpha=kind.alpha))


def _from_torch(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, ImageKind]:
    if t.dim() not in (2, 3) or (t.dim() == 3 and t.shape[0] not in (1, 2, 3, 4)):
        raise ValueError(f"image tensor must be HxW or CxHxW with C in 1..4, got shape {tuple(t.shape)}")
    layout = "HW" if t.dim() == 2 else "CHW"
    chw = t[None] if t.dim() == 2 else t
    _check_size(chw.shape[1], chw.shape[2])
    if t.dtype == torch.uint8:
        f = chw.float() / 255.0
    elif t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        f = chw.float()
        if not torch.isfinite(f).all():
            raise ValueError("image contains NaN or infinite values")
        if f.min() < -1e-3 or f.max() > 1 + 1e-3:
            raise ValueError(f"float images must be in [0, 1], got values in [{f.min():.3g}, {f.max():.3g}]")
        f = f.clamp(0, 1)
    else:
        raise ValueError(f"unsupported image dtype {t.dtype}: use uint8 or float in [0, 1]")
    c = chw.shape[0]
    rgb, alpha = _split(f.cpu().permute(1, 2, 0))
    return rgb, alpha, ImageKind("torch", t.dtype, gray=c <= 2, alpha=c in (2, 4), layout=layout, device=t.device)


def resize_alpha(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic upscale of an alpha channel (1, 1, h, w) in [0, 1] to (H, W)."""
    return F.interpolate(alpha, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
