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

import torch
import torch.nn.functional as F
from torch import nn

from ..resize import bicubic_upscale
from .pieces import features_in_tiles, in_blocks, receptive_radius
from .tables import resize_tables


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
        """LR (B, 3, h, w) -> (B, 3, H, W): the features in LR tiles, the HR part in blocks
        (:mod:`idm_rt.model.pieces`; the same numbers as one pass), plus the bicubic upscale when implicit."""
        size = (int(size[0]), int(size[1]))
        feat = features_in_tiles(self.features, lr, receptive_radius(len(self.blocks)))
        out = in_blocks(self.block, feat, *resize_tables(self.upsampler, tuple(lr.shape[-2:]), size))
        return out + bicubic_upscale(lr, size) if self.query is not None else out

    def block(
        self,
        feat: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        rel_rows: torch.Tensor | None = None,
        rel_cols: torch.Tensor | None = None,
        cell: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The HR part of one block (:func:`~idm_rt.model.pieces.in_blocks`), the tail's borders zero-padded:
        ``rows`` and ``cols`` index ``feat`` (a crop of the features); implicit: ``cell`` (2,) is the whole image's
        LR pixels per HR pixel, (h / H, w / W)."""
        h = feat.index_select(2, rows).index_select(3, cols)
        if self.query is not None:
            b, height, width = h.shape[0], rows.shape[0], cols.shape[0]
            grid_r, grid_c = rel_rows.view(-1, 1).expand(height, width), rel_cols.view(1, -1).expand(height, width)
            cells = cell.to(grid_r.dtype).view(2, 1, 1).expand(2, height, width)
            extra = torch.cat([torch.stack([grid_r, grid_c]), cells]).to(h.dtype)[None].expand(b, -1, -1, -1)
            h = F.relu(self.query(torch.cat([h, extra], dim=1)))
        return self.tail(h)
