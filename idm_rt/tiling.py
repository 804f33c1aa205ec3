"""Overlapping HR tiles blended at every denoising step (not stitched at the end).

Each tile gets its own conditioning, computed once from the crop of the condition image, so
a tile is exactly the untiled network run on that window. At every step the tiles' noise
predictions are blended with weights that ramp down across the overlaps, then the sampler
updates the whole image: neighbouring tiles agree on the state they share, so no seams form.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

import numpy as np

from .arrays import Array, like, namespace
from .cancel import checkpoint
from .diffusion.samplers import EpsFn
from .model.protocol import SamplingModel
from .stage_timing import CONDITIONING, TILES, stage

# The overlap of neighbouring tiles, in HR pixels: the smallest that leaves no seam. With the tiles blended
# at every step, the mean step between pixels across tile edges is 1.04x the untiled image's at 8 px,
# 1.01x at 16 px, 1.006x at 24 px and 1.00x (at most 1.005x) from 32 px, on 3 photos x 2 seeds
# (benchmarks/results/tile_overlap.json, python -m benchmarks.tile_overlap).
OVERLAP = 32
# Tile conditionings kept between steps when no memory ceiling is given (beyond it they are recomputed per step).
CACHE_BYTES = 2**31


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering [0, length) every ``stride``, plus a last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class TilePlan:
    """Tiles ``(top, left, height, width)`` covering an HR image of ``size`` with overlaps."""

    size: tuple[int, int]
    tiles: tuple[tuple[int, int, int, int], ...]
    overlap: int

    @classmethod
    def for_image(cls, size: tuple[int, int], tile: int, multiple: int = 8, overlap: int | None = None) -> TilePlan:
        """Square tiles of side ``tile`` rounded down to a multiple of ``multiple`` (the U-Net's size
        multiple), overlapping by :data:`OVERLAP` pixels (at most half a tile) by default; strides are
        multiples of ``multiple`` so tiles share the U-Net's grid."""
        if tile < 2 * multiple:
            raise ValueError(f"tile must be at least {2 * multiple} for this model, got {tile}")
        tile -= tile % multiple
        overlap = min(OVERLAP, tile // 2) if overlap is None else overlap
        stride = max(multiple, (tile - overlap) // multiple * multiple)
        h, w = size
        th, tw = min(tile, h), min(tile, w)
        tiles = tuple((t, l, th, tw) for t in _starts(h, th, stride) for l in _starts(w, tw, stride))
        return cls(size, tiles, tile - stride)

    @classmethod
    def whole(cls, size: tuple[int, int]) -> TilePlan:
        """One tile: the whole output of ``size`` (H, W)."""
        return cls(size, ((0, 0, *size),), 0)

    def unet_cost(self, a: float, b: float, fast: Container[tuple[int, int]] = (), speedup: float = 1.0) -> float:
        """The cost of one U-Net call over every tile, a call costing ``a + b * area`` per pixel of an ``area``-pixel
        tile (the self-attention's share grows with it, :func:`idm_rt.tile_size.cost_per_pixel`); tiles whose
        (height, width) is in ``fast`` cost ``speedup`` times less."""
        return sum(h * w * (a + b * h * w) / (speedup if (h, w) in fast else 1.0) for _, _, h, w in self.tiles)

    def weight(self, tile: tuple[int, int, int, int]) -> np.ndarray:
        """(h, w) float32 blending weight: 1 inside, linear ramps over the overlap on sides facing other tiles."""
        top, left, h, w = tile
        ramp_len = max(self.overlap, 1)

        def axis(start: int, n: int, total: int) -> np.ndarray:
            i = np.arange(n, dtype=np.float32)
            wgt = np.ones(n, dtype=np.float32)
            if start > 0:
                wgt = np.minimum(wgt, (i + 1) / (ramp_len + 1))
            if start + n < total:
                wgt = np.minimum(wgt, (n - i) / (ramp_len + 1))
            return wgt

        return axis(top, h, self.size[0])[:, None] * axis(left, w, self.size[1])[None, :]


def tiled_eps(
    model: SamplingModel, cond: Array, p: Array, plan: TilePlan, denoise: Callable, cache_bytes: int = CACHE_BYTES
) -> EpsFn:
    """A noise predictor over the whole image that runs the U-Net (``denoise``: ``model.denoise`` or a replay
    of it) tile by tile.

    Tile conditionings are computed once and kept while they fit in ``cache_bytes``; the tiles
    beyond that budget recompute theirs at every step, so memory stays bounded for huge outputs.
    """
    xp = namespace(cond)
    with stage(TILES):
        host_total = np.zeros(plan.size, dtype=np.float32)
        for t, l, h, w in plan.tiles:
            host_total[t : t + h, l : l + w] += plan.weight((t, l, h, w))
        weights = [xp.astype(like(plan.weight(tile), cond), cond.dtype) for tile in plan.tiles]
        total = xp.astype(like(host_total, cond), cond.dtype)

    def tile_condition(i: int):
        t, l, h, w = plan.tiles[i]
        with stage(CONDITIONING):
            return model.condition(cond[:, :, t : t + h, l : l + w], p)

    cached, used = {}, 0
    for i in range(len(plan.tiles)):
        checkpoint()
        c = tile_condition(i)
        size = c.nbytes()
        if used + size > cache_bytes:
            break
        cached[i], used = c, used + size

    def eps_fn(x: Array, g: Array) -> Array:
        with stage(TILES):  # the crops and the weighted sums; the U-Net calls inside are their own stage
            acc = xp.zeros_like(x)
            for i, ((t, l, h, w), wgt) in enumerate(zip(plan.tiles, weights)):
                checkpoint()
                c = cached[i] if i in cached else tile_condition(i)
                acc[:, :, t : t + h, l : l + w] += denoise(x[:, :, t : t + h, l : l + w], c, g) * wgt
            return acc / total

    return eps_fn
