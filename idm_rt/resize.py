"""The bicubic resizes IDM is defined with: the antialiased downscale that makes training LRs (and that the
Consistency metric and back-projection apply to outputs), and the plain bicubic upscale.

They compute what torch's ``F.interpolate(mode="bicubic", align_corners=False)`` computes, for every array library
the sampling loop runs on (:mod:`idm_rt.arrays`): each axis is a product with banded matrices of the taps' weights
(:func:`bands`), worked out on the host once per size pair. Float torch tensors take torch's own kernels instead,
the same numbers within float rounding.

* :func:`bicubic_upscale` (``antialias=False``): source coordinate ``s (i + 0.5) - 0.5`` with ``s = in / out``, the
  cubic convolution kernel with a = -0.75 over the 4 nearest source pixels, edge pixels repeated.
* :func:`downscale` (``antialias=True``): the kernel with a = -0.5 stretched by ``s`` when shrinking (support
  ``2 s``), centred on ``s (i + 0.5)``, cut at the borders and renormalised; clamped to [-1, 1].
"""

from __future__ import annotations

import functools

import numpy as np
from array_api_compat import is_torch_array

from .arrays import Array, like, namespace

BAND = 64  # rows one matrix product of a resize reads (shrinking) or writes (enlarging), roughly


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


@functools.lru_cache(maxsize=32)  # up to 2 MB each (8192 -> 8192)
def bands(n_in: int, n_out: int, antialias: bool) -> tuple[tuple[int, int, np.ndarray], ...]:
    """The resize along one axis as dense matrices over bands of output rows, in order: ``(lo, hi, m)`` maps source
    rows ``lo:hi`` to the band's rows (``m``: (rows, hi - lo), the taps' weights). Each band reads about :data:`BAND`
    source rows and writes at most as many: the matrices are mostly zeros (4-16x the taps' multiply-adds), but as
    matrix products they run 10-20x faster on a CPU than gathering the taps (1024x1024 <-> 256x256 in numpy, 2
    threads: 2-5 ms against 40-75 ms gathered; torch's own kernels 5-12 ms)."""
    idx, w = taps(n_in, n_out, antialias)
    rows = min(BAND, max(8, round(BAND * n_out / n_in)))
    out = []
    for start in range(0, n_out, rows):
        stop = min(start + rows, n_out)
        lo, hi = int(idx[start:stop].min()), int(idx[start:stop].max()) + 1
        m = np.zeros((stop - start, hi - lo), dtype=np.float32)
        row = np.repeat(np.arange(stop - start), idx.shape[1])
        np.add.at(m, (row, (idx[start:stop] - lo).ravel()), w[start:stop].ravel())  # repeated edge taps add up
        out.append((lo, hi, m))
    return tuple(out)


def _axis(x: Array, axis: int, n_out: int, antialias: bool) -> Array:
    """``x`` resized along ``axis`` (-2 or -1) to ``n_out``, in float32 at least."""
    xp = namespace(x)
    x = xp.astype(x, xp.result_type(x.dtype, xp.float32), copy=False)
    n_in = x.shape[axis]
    if n_in == n_out:  # both kernels are the identity at 1x
        return x
    parts = []
    for lo, hi, m in bands(n_in, n_out, antialias):
        band = xp.astype(like(m, x), x.dtype, copy=False)
        parts.append(x[..., lo:hi] @ xp.matrix_transpose(band) if axis == -1 else band @ x[..., lo:hi, :])
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
