"""LR encoder: EDSR-baseline body, then up to the output size (IDM Sec. 3.2).

Two ways to reach the output size (``IDMConfig.encoder_upsampler``):

* ``"nearest"``, the release's: features nearest-resized to (H, W) (``F.interpolate``'s default
  mode), then a 3x3 tail conv to 3 channels. The result only conditions the U-Net.
* ``"implicit"``: every HR pixel queries its nearest LR feature together with its relative
  coordinate to that feature's centre and the cell size (LR pixels per HR pixel), as LIIF does
  (Chen et al., CVPR 2021): a 1x1 layer and a ReLU, then the 3x3 tail, plus the bicubic upscale
  of the LR. Trained with a regression loss, the condition image is then an HR estimate that
  sampling can start from (``init="estimate"``). The ReLU makes the output depend on where a
  pixel sits inside its LR pixel, which a linear map of nearest features cannot (stair-steps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..cancel import checkpoint
from ..resize import upscale
from .implicit import nearest_query


class EDSRBlock(nn.Module):
    """conv3x3, ReLU, conv3x3, plus the input."""

    def __init__(self, feats: int):
        super().__init__()
        self.conv1 = nn.Conv2d(feats, feats, 3, padding=1)
        self.conv2 = nn.Conv2d(feats, feats, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x))) + x


class EDSREncoder(nn.Module):
    """``encode(lr, (H, W))``: features at the LR size, brought to (H, W), then a 3-channel conv.

    The continuous output size enters here: the result is the condition image at the HR size.
    """

    def __init__(self, blocks: int = 16, feats: int = 64, upsampler: str = "nearest"):
        super().__init__()
        self.upsampler = upsampler
        self.head = nn.Conv2d(3, feats, 3, padding=1)
        self.blocks = nn.Sequential(*[EDSRBlock(feats) for _ in range(blocks)])
        self.body_conv = nn.Conv2d(feats, feats, 3, padding=1)
        # implicit: [nearest feature, relative row and column, cell height and width] -> feats
        self.query = nn.Conv2d(feats + 4, feats, 1) if upsampler == "implicit" else None
        self.tail = nn.Conv2d(feats, 3, 3, padding=1)

    def features(self, lr: torch.Tensor) -> torch.Tensor:
        """The LR-resolution features ``body(head(lr)) + head(lr)``."""
        x = self.head(lr)
        return self.body_conv(self.blocks(x)) + x

    def forward(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        feat = features_in_tiles(self.features, lr, receptive_radius(len(self.blocks)))
        out = self.upsample(feat, *resize_tables(self.upsampler, tuple(lr.shape[-2:]), size, lr.device))
        return out + upscale(lr, size) if self.query is not None else out

    def upsample(self, feat: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 rel_rows: torch.Tensor | None = None, rel_cols: torch.Tensor | None = None) -> torch.Tensor:
        """Features (B, C, h, w) -> (B, 3, H, W) at the source pixels ``rows`` (H,) and ``cols`` (W,)
        (and, implicit, the relative coordinates to them), without the bicubic term; in blocks
        (:func:`in_blocks`), the same numbers as one pass."""
        return in_blocks(self.block, feat, rows, cols, rel_rows, rel_cols)

    def block(self, feat: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, rel_rows: torch.Tensor | None = None,
              rel_cols: torch.Tensor | None = None, cell: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`upsample` of one block, all at once, the tail's borders zero-padded: ``rows`` and ``cols``
        index ``feat`` (a crop of the features); implicit: ``cell`` (2,) is the whole image's LR pixels per
        HR pixel, (h / H, w / W)."""
        h = feat.index_select(2, rows).index_select(3, cols)
        if self.query is not None:
            b, height, width = h.shape[0], rows.shape[0], cols.shape[0]
            grid_r, grid_c = rel_rows.view(-1, 1).expand(height, width), rel_cols.view(1, -1).expand(height, width)
            cells = cell.to(grid_r.dtype).view(2, 1, 1).expand(2, height, width)
            extra = torch.cat([torch.stack([grid_r, grid_c]), cells]).to(h.dtype)[None].expand(b, -1, -1, -1)
            h = F.relu(self.query(torch.cat([h, extra], dim=1)))
        return self.tail(h)


# HR rows and columns of the tail computed at once, which bounds the memory of the HR part of the
# encoder by the block, whatever the image's size (torch and the engines' block graph alike).
BLOCK = 256
# LR rows and columns of the features computed at once (plus their receptive field on each side).
FEATURE_TILE = 512


def receptive_radius(blocks: int) -> int:
    """How far (in LR pixels) a feature of :meth:`EDSREncoder.features` sees: one pixel per 3x3
    convolution, the head, two per block and the body's last."""
    return 2 * blocks + 2


def stitched(compute: Callable[[slice, slice], torch.Tensor], height: int, width: int, size: int,
             halo: int) -> torch.Tensor:
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
                out = y.new_empty(y.shape[0], y.shape[1], height, width)
            out[:, :, r0:r1, c0:c1] = y[:, :, r0 - lo:r1 - lo, c0 - clo:c1 - clo]
    return out


def features_in_tiles(features: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor, radius: int,
                      size: int | None = None) -> torch.Tensor:
    """``features(lr)`` (the torch method, or an engine graph of it) over LR tiles of ``size`` x ``size``,
    each computed with ``radius`` more pixels around it (the features' receptive field, so that the
    convolutions' zero padding never reaches what is kept): the same numbers as one pass, memory
    bounded by the tile."""
    h, w = lr.shape[-2:]
    size = size or FEATURE_TILE
    if (h <= size and w <= size) or not (h and w):  # one tile (or an empty image): one call
        return features(lr)
    return stitched(lambda r, c: features(lr[:, :, r, c]), h, w, size, radius)


def in_blocks(block: Callable[..., torch.Tensor], feat: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
              rel_rows: torch.Tensor | None = None, rel_cols: torch.Tensor | None = None,
              size: int = BLOCK) -> torch.Tensor:
    """:meth:`EDSREncoder.upsample` computed by ``block`` (the torch method, or an engine graph of the
    same inputs) over blocks of ``size`` x ``size`` HR pixels with a one-pixel halo for the 3x3 tail,
    each given only the features it reads; the same numbers as one pass over the whole image."""
    height, width = rows.shape[0], cols.shape[0]
    if not (height and width):
        raise ValueError(f"the output size must be at least 1x1, got {width}x{height}")
    implicit = rel_rows is not None
    cell = torch.tensor([feat.shape[-2] / height, feat.shape[-1] / width], dtype=torch.float32, device=feat.device)
    if height <= size and width <= size:  # one block: the whole features, no crop (and no host sync on a GPU)
        return block(feat, rows, cols, *((rel_rows, rel_cols, cell) if implicit else ()))

    def one(r: slice, c: slice) -> torch.Tensor:
        rr, cc = rows[r], cols[c]
        r_min, c_min = int(rr.min()), int(cc.min())
        part = feat[:, :, r_min:int(rr.max()) + 1, c_min:int(cc.max()) + 1]
        return block(part, rr - r_min, cc - c_min, *((rel_rows[r], rel_cols[c], cell) if implicit else ()))

    return stitched(one, height, width, size, 1)


def resize_tables(upsampler: str, lr_size: tuple[int, int], size: tuple[int, int],
                  device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """What :meth:`EDSREncoder.upsample` takes to go from ``lr_size`` to ``size`` (H, W): the source rows
    and columns as ``F.interpolate`` picks them (``"nearest"``), or as the implicit query picks them
    followed by the relative coordinates (``"implicit"``). Engine runners pass them to the graph."""
    if upsampler == "nearest":
        return nearest_indices(int(lr_size[0]), size[0], device), nearest_indices(int(lr_size[1]), size[1], device)
    rows, rel_rows = nearest_query(int(lr_size[0]), size[0])
    cols, rel_cols = nearest_query(int(lr_size[1]), size[1])
    return rows.to(device), cols.to(device), rel_rows.to(device), rel_cols.to(device)


def nearest_indices(n_in: int, n_out: int, device: torch.device | None = None) -> torch.Tensor:
    """Source index of each output position under ``F.interpolate(mode='nearest')``."""
    src = torch.arange(n_in, dtype=torch.float32, device=device).view(1, 1, n_in)
    return F.interpolate(src, size=n_out).view(n_out).long()
