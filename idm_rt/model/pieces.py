"""How the network's work is cut into pieces of bounded size, and the conditioning it carries between calls: the
same code for the torch network and for the engines (any array library, :mod:`idm_rt.arrays`).

The encoder computes its LR features in tiles of :data:`FEATURE_TILE` LR pixels, each with its receptive field
around it, and its HR part in blocks of :data:`BLOCK` output pixels with a one-pixel halo for the 3x3 tail: the same
numbers as one pass, memory (and a TensorRT profile) bounded by the piece. Every piece is a point where a cancelled
request stops (:mod:`idm_rt.cancel`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from array_api_compat import device

from ..arrays import Array, like, namespace
from ..cancel import checkpoint
from ..stage_timing import ENCODER_FEATURES, ENCODER_HR, timed

# HR rows and columns of the encoder's tail computed at once: memory bounded by the block, whatever the image.
BLOCK = 256
# LR rows and columns of the features computed at once (plus their receptive field on each side).
FEATURE_TILE = 512


def receptive_radius(blocks: int) -> int:
    """How far (in LR pixels) an encoder feature sees: one pixel per 3x3 convolution, the head, two per EDSR
    block and the body's last."""
    return 2 * blocks + 2


def stitched(compute: Callable[[slice, slice], Array], height: int, width: int, size: int, halo: int) -> Array:
    """A (B, C, height, width) result assembled from parts of at most ``size`` x ``size``: ``compute(rows,
    cols)`` returns the part over those slices, which reach up to ``halo`` beyond it on each side, and
    only the part itself is kept."""

    def spans(n: int) -> list[tuple[int, int, int, int]]:  # (start, end, lo, hi): the part and what it reads
        return [(a, min(a + size, n), max(a - halo, 0), min(a + size + halo, n)) for a in range(0, n, size)]

    out = None
    for r0, r1, lo, hi in spans(height):
        for c0, c1, clo, chi in spans(width):
            checkpoint()  # a part is the unit of work a cancelled request still finishes
            y = compute(slice(lo, hi), slice(clo, chi))
            if out is None:
                out = namespace(y).empty((y.shape[0], y.shape[1], height, width), dtype=y.dtype, device=device(y))
            out[:, :, r0:r1, c0:c1] = y[:, :, r0 - lo : r1 - lo, c0 - clo : c1 - clo]
    return out


def features_in_tiles(features: Callable[[Array], Array], lr: Array, radius: int, size: int | None = None) -> Array:
    """``features(lr)`` (the torch method, or an engine graph of it) over LR tiles of ``size`` x ``size``, each
    computed with ``radius`` more pixels around it (the features' receptive field, so that the convolutions' zero
    padding never reaches what is kept): the same numbers as one pass, memory bounded by the tile."""
    h, w = lr.shape[-2:]
    size = size or FEATURE_TILE
    features = timed(ENCODER_FEATURES, features)
    if (h <= size and w <= size) or not (h and w):  # one tile (or an empty image): one call
        return features(lr)
    return stitched(lambda r, c: features(lr[:, :, r, c]), h, w, size, radius)


def in_blocks(
    block: Callable[..., Array],
    feat: Array,
    rows: np.ndarray,
    cols: np.ndarray,
    rel_rows: np.ndarray | None = None,
    rel_cols: np.ndarray | None = None,
    size: int = BLOCK,
) -> Array:
    """The encoder's HR part computed by ``block`` (the torch method, or an engine graph of the same inputs) over
    blocks of ``size`` x ``size`` HR pixels with a one-pixel halo for the 3x3 tail, each given only the features it
    reads (as arrays of ``feat``'s library) and, implicit, the whole image's cell size; the same numbers as one
    pass. ``rows``, ``cols`` (and the relative coordinates) are the host tables of
    :func:`~idm_rt.model.tables.resize_tables`."""
    height, width = rows.shape[0], cols.shape[0]
    if not (height and width):
        raise ValueError(f"the output size must be at least 1x1, got {width}x{height}")
    implicit = rel_rows is not None
    block = timed(ENCODER_HR, block)
    cell = like(np.array([feat.shape[-2] / height, feat.shape[-1] / width], dtype=np.float32), feat)

    def one(r: slice, c: slice) -> Array:
        rr, cc = rows[r], cols[c]
        r_min, c_min = int(rr.min()), int(cc.min())
        part = feat[:, :, r_min : int(rr.max()) + 1, c_min : int(cc.max()) + 1]
        tables = (like(rr - r_min, feat), like(cc - c_min, feat))
        extra = (like(rel_rows[r], feat), like(rel_cols[c], feat), cell) if implicit else ()
        return block(part, *tables, *extra)

    if height <= size and width <= size:  # one block: the whole features, no crop
        return one(slice(0, height), slice(0, width))
    return stitched(one, height, width, size, 1)


@dataclass
class Conditioning:
    """Everything the U-Net needs besides x_t and the noise level (arrays of the model's library).

    Attributes:
        cond: the encoder output at the HR size, (B, 3, H, W).
        shifts: ``shifts[i]`` for U-Net level i = 1..L-1 (index 0 is None), (B, C_i, H_i, W_i).
        a1, a2: normalised scale vectors per level (index 0 is None), (B, C_i).
    """

    cond: Array
    shifts: list[Array | None]
    a1: list[Array | None]
    a2: list[Array | None]

    def tensors(self) -> list[Array]:
        """Every array: the condition image, then :meth:`flat`."""
        return [self.cond, *self.flat()]

    def flat(self) -> list[Array]:
        """The per-level arrays (levels 1..L-1): all shifts, then all a1, then all a2."""
        return [*self.shifts[1:], *self.a1[1:], *self.a2[1:]]

    @classmethod
    def from_flat(cls, cond: Array, tensors: Sequence[Array]) -> Conditioning:
        """Inverse of :meth:`flat`, with the condition image ``cond``."""
        n = len(tensors) // 3
        return cls(cond, [None, *tensors[:n]], [None, *tensors[n : 2 * n]], [None, *tensors[2 * n :]])

    def nbytes(self) -> int:
        """Memory the arrays take (the condition image included)."""
        return sum(int(np.prod(t.shape)) * t.itemsize for t in self.tensors())


def scale_fraction(scale: Sequence[float] | float, max_scale: float) -> np.ndarray:
    """``p = (s - 1) / (M - 1)`` per sample (float32, on the host), the scale input of the conditioning; p > 1
    extrapolates beyond the largest training magnification M."""
    s = np.asarray(scale, dtype=np.float32).reshape(-1)
    return ((s - np.float32(1.0)) / np.float32(max_scale - 1.0)).astype(np.float32)
