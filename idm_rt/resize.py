"""The bicubic resizes IDM is defined with: the antialiased downscale that makes training LRs (and that the
Consistency metric and back-projection apply to outputs), and the plain bicubic upscale.

They compute what torch's ``F.interpolate(mode="bicubic", align_corners=False)`` computes, for every array library
the sampling loop runs on (:mod:`idm_rt.arrays`): each axis is a gather of a few source pixels and a weighted sum,
the taps and weights worked out on the host once per size pair. Float torch tensors take torch's own kernels
instead, the same numbers within float rounding and 6-30x faster on a CPU than the gathers there.

* :func:`bicubic_upscale` (``antialias=False``): source coordinate ``s (i + 0.5) - 0.5`` with ``s = in / out``, the
  cubic convolution kernel with a = -0.75 over the 4 nearest source pixels, edge pixels repeated.
* :func:`downscale` (``antialias=True``): the kernel with a = -0.5 stretched by ``s`` when shrinking (support
  ``2 s``), centred on ``s (i + 0.5)``, cut at the borders and renormalised; clamped to [-1, 1].
"""

from __future__ import annotations

import functools
import math

import numpy as np
from array_api_compat import is_torch_array

from .arrays import Array, like, namespace

CHUNK = 2**24  # elements one gather may make; larger resizes go in slices of output rows


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """The cubic convolution kernel (Keys 1981) with parameter ``a``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=256)
def taps(n_in: int, n_out: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (n_out, K): the source pixels of every output pixel along one axis and their
    weights (rows summing to 1)."""
    scale = n_in / n_out
    i = np.arange(n_out, dtype=np.float64)
    if not antialias:
        real = scale * (i + 0.5) - 0.5
        first = np.floor(real)
        t = real - first
        offsets = np.arange(-1, 3)
        idx = np.clip(first[:, None] + offsets, 0, n_in - 1).astype(np.int64)
        w = _cubic(t[:, None] - offsets, -0.75)
        return idx, w.astype(np.float32)
    support = 2.0 * scale if scale >= 1 else 2.0
    invscale = 1.0 / scale if scale >= 1 else 1.0
    center = scale * (i + 0.5)
    lo = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    hi = np.minimum(np.trunc(center + support + 0.5), n_in).astype(np.int64)
    k = int((hi - lo).max())
    j = lo[:, None] + np.arange(k)
    w = np.where(j < hi[:, None], _cubic((j - center[:, None] + 0.5) * invscale, -0.5), 0.0)
    w = w / w.sum(axis=1, keepdims=True)
    return np.minimum(j, n_in - 1), w.astype(np.float32)


def _axis(x: Array, axis: int, n_out: int, antialias: bool) -> Array:
    """``x`` resized along ``axis`` (-2 or -1) to ``n_out``."""
    n_in = x.shape[axis]
    if n_in == n_out and not antialias:
        return x
    idx, w = taps(n_in, n_out, antialias)
    xp = namespace(x)
    k = idx.shape[1]
    other = math.prod(x.shape) // n_in
    rows = max(1, CHUNK // max(1, k * other))
    parts = []
    for start in range(0, n_out, rows):
        part_idx, part_w = idx[start : start + rows], w[start : start + rows]
        gathered = xp.take(x, like(part_idx.reshape(-1), x), axis=axis)  # (..., n * k, ...) along the axis
        if axis == -2:
            shape = (*x.shape[:-2], part_idx.shape[0], k, x.shape[-1])
            weights = like(part_w, x)[:, :, None]
            parts.append(xp.sum(xp.reshape(gathered, shape) * weights, axis=-2))
        else:
            shape = (*x.shape[:-1], part_idx.shape[0], k)
            parts.append(xp.sum(xp.reshape(gathered, shape) * like(part_w, x), axis=-1))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=axis)


def _torch_kernel(x: Array) -> bool:
    """Whether ``x`` is a float torch image batch that ``F.interpolate`` resizes itself."""
    return is_torch_array(x) and x.ndim == 4 and x.dtype.is_floating_point and (x.is_cuda or x.itemsize >= 4)


def bicubic_upscale(x: Array, size: tuple[int, int]) -> Array:
    """Bicubic resize of (B, C, h, w) images to ``size`` (H, W), not clamped (callers clamp images, not
    residuals)."""
    size = (int(size[0]), int(size[1]))
    if _torch_kernel(x):
        import torch.nn.functional as F

        return F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return _axis(_axis(x, -2, size[0], False), -1, size[1], False)


def downscale(x: Array, size: tuple[int, int]) -> Array:
    """Antialiased bicubic downscale of (B, C, H, W) images in [-1, 1] to ``size`` (h, w), clamped to [-1, 1]."""
    size = (int(size[0]), int(size[1]))
    if _torch_kernel(x):
        import torch.nn.functional as F

        out = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    else:
        out = _axis(_axis(x, -1, size[1], True), -2, size[0], True)
    return namespace(out).clip(out, -1.0, 1.0)
