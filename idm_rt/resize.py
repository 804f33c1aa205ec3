"""The bicubic resizes IDM is defined with: the antialiased downscale that makes training LRs (and
that the Consistency metric applies to outputs) and the plain bicubic upscale baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def downscale(hr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic downscale of images in [-1, 1] to ``size`` (H, W), clamped to [-1, 1]."""
    return F.interpolate(hr, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def upscale(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic upscale to ``size`` (H, W), not clamped (callers clamp images, not residuals)."""
    return F.interpolate(lr, size=size, mode="bicubic", align_corners=False)
