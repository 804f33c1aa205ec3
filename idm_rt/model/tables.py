"""Index tables the network's resampling steps read, computed on the host with numpy: the same numbers for the torch
network (which moves them to its device once per size) and for the engines, which take them as graph inputs.

* :func:`nearest_query`: for each target pixel centre along an axis, the nearest source pixel exactly as
  ``grid_sample(mode="nearest", align_corners=False)`` picks it on coordinates clamped to [-1+1e-6, 1-1e-6], and the
  relative coordinate to that source centre; float32 arithmetic with the fused multiply-add of torch's kernels, so the
  picks are torch's own (checked on every size pair up to 300 x 4096 in tests/test_implicit.py).
* :func:`query_tables_for`: the implicit up-layers' tables for an image, deepest first.
* :func:`resize_tables`: the encoder's way to the output size (nearest indices, or the implicit query's tables).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

Tables = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # rows, rel_rows, cols, rel_cols


def pixel_centres(n: int) -> np.ndarray:
    """Coordinates of n pixel centres in [-1, 1], ``-1 + (2k+1)/n``, computed like the release (float32)."""
    r = 1.0 / n
    return (np.float32(-1.0 + r) + np.float32(2.0 * r) * np.arange(n, dtype=np.float32)).astype(np.float32)


@lru_cache(maxsize=512)
def nearest_query(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray]:
    """(source index (int64), relative coordinate ``(target - source centre) * n_src`` (float32)) of each of n_dst
    target centres."""
    coord = pixel_centres(n_dst)
    x = np.clip(coord, np.float32(-1 + 1e-6), np.float32(1 - 1e-6))
    fused = ((x + np.float32(1)).astype(np.float64) * n_src - 1.0).astype(np.float32)  # one rounding, as an FMA
    idx = np.clip(np.rint(fused / np.float32(2)), 0, n_src - 1).astype(np.int64)
    rel = ((coord - pixel_centres(n_src)[idx]) * np.float32(n_src)).astype(np.float32)
    idx.flags.writeable = rel.flags.writeable = False  # shared by every caller (cached)
    return idx, rel


def query_tables(src: tuple[int, int], dst: tuple[int, int]) -> Tables:
    """:func:`nearest_query` along both axes from a ``src`` (h, w) grid to ``dst`` (H, W)."""
    (ri, rr), (ci, cr) = nearest_query(int(src[0]), int(dst[0])), nearest_query(int(src[1]), int(dst[1]))
    return ri, rr, ci, cr


def level_sizes(size: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """(H, W) of each U-Net level: every stride-2 step gives ceil(n / 2)."""
    sizes = [(int(size[0]), int(size[1]))]
    for _ in range(levels - 1):
        sizes.append(tuple(-(-n // 2) for n in sizes[-1]))
    return sizes


def query_tables_for(size: tuple[int, int], levels: int) -> list[Tables]:
    """The implicit layers' :func:`query_tables` for an image of ``size``, deepest layer first (the order the U-Net
    runs them): level i to level i - 1 for i = L-1 .. 1."""
    sizes = level_sizes(size, levels)
    return [query_tables(sizes[i], sizes[i - 1]) for i in range(levels - 1, 0, -1)]


@lru_cache(maxsize=512)
def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output position under ``F.interpolate(mode="nearest")``: ``floor(i * n_in / n_out)``
    in float32, as torch computes it."""
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)
    idx.flags.writeable = False
    return idx


def resize_tables(upsampler: str, lr_size: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """What the encoder's HR part takes to go from ``lr_size`` to ``size`` (H, W): the source rows and columns as
    ``F.interpolate`` picks them (``"nearest"``), or as the implicit query picks them followed by the relative
    coordinates (``"implicit"``). Engine runners pass them to the graph."""
    if upsampler == "nearest":
        return nearest_indices(int(lr_size[0]), int(size[0])), nearest_indices(int(lr_size[1]), int(size[1]))
    rows, rel_rows = nearest_query(int(lr_size[0]), int(size[0]))
    cols, rel_cols = nearest_query(int(lr_size[1]), int(size[1]))
    return rows, cols, rel_rows, rel_cols
