"""LR encoder: EDSR-baseline body, nearest resize to the output size, 3-channel tail (IDM Sec. 3.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EDSRBlock(nn.Module):
    """conv3x3, ReLU, conv3x3, plus the input."""

    def __init__(self, feats: int):
        super().__init__()
        self.conv1 = nn.Conv2d(feats, feats, 3, padding=1)
        self.conv2 = nn.Conv2d(feats, feats, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x))) + x


class EDSREncoder(nn.Module):
    """``encode(lr, (H, W))``: features at the LR size, nearest-resized to (H, W), then a 3-channel conv.

    The continuous output size enters here: the result is the condition image at the HR size.
    """

    # HR rows of the tail conv computed at once, which bounds memory for large outputs.
    ROW_CHUNK = 256

    def __init__(self, blocks: int = 16, feats: int = 64):
        super().__init__()
        self.head = nn.Conv2d(3, feats, 3, padding=1)
        self.blocks = nn.Sequential(*[EDSRBlock(feats) for _ in range(blocks)])
        self.body_conv = nn.Conv2d(feats, feats, 3, padding=1)
        self.tail = nn.Conv2d(feats, 3, 3, padding=1)

    def features(self, lr: torch.Tensor) -> torch.Tensor:
        """The LR-resolution features ``body(head(lr)) + head(lr)``."""
        x = self.head(lr)
        return self.body_conv(self.blocks(x)) + x

    def forward(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        feat = self.features(lr)
        height, width = size
        if height <= self.ROW_CHUNK:
            return self.tail(F.interpolate(feat, size=size))
        # Same numbers as the one-shot form: nearest indices from F.interpolate itself,
        # tail conv on row bands with a one-row halo.
        rows = nearest_indices(feat.shape[-2], height, feat.device)
        cols = nearest_indices(feat.shape[-1], width, feat.device)
        wide = feat[:, :, :, cols]
        out = []
        for r0 in range(0, height, self.ROW_CHUNK):
            r1 = min(r0 + self.ROW_CHUNK, height)
            lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
            band = self.tail(wide[:, :, rows[lo:hi]])
            out.append(band[:, :, r0 - lo : r0 - lo + (r1 - r0)])
        return torch.cat(out, dim=2)


def nearest_indices(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source index of each output position under ``F.interpolate(mode='nearest')``."""
    src = torch.arange(n_in, dtype=torch.float32, device=device).view(1, 1, n_in)
    return F.interpolate(src, size=n_out).view(n_out).long()
