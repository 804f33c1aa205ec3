"""LR conditioning pyramid modulated by the scale (IDM Sec. 3.3, scale-aware modulation).

Depends only on the condition image and the scale fraction ``p``, so it is computed once
per image and reused at every denoising step.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import IDMConfig
from .layers import Blur, EqualConv2d, EqualLinear, fused_leaky_relu
from .pieces import Conditioning


class ConvAct(nn.Module):
    """Equalized conv without bias, then FusedLeakyReLU with its own bias (optionally blurred first)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, blur: bool = False):
        super().__init__()
        self.blur = Blur() if blur else nn.Identity()
        self.conv = EqualConv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(self.conv(self.blur(x)), self.bias)


class LRConditioner(nn.Module):
    """Pyramid of LR features (stride-2 steps like the U-Net's own), a shift per level, and two
    scale MLPs per level whose outputs are normalised to ``(a1, a2)`` with ``a1^2 + a2^2 ~= 1``."""

    def __init__(self, config: IDMConfig):
        super().__init__()
        ch = config.channels
        self.abs_scale = config.implicit_abs_scale
        self.first = ConvAct(3, config.inner_channel)
        prev = (config.inner_channel,) + ch
        # down[j] makes f_{j+1} from f_j; only the levels that feed a shift are built.
        self.down = nn.ModuleList(ConvAct(prev[j], ch[j], stride=2, blur=True) for j in range(config.levels - 1))
        levels = range(1, config.levels)
        self.shift = nn.ModuleDict({str(j): EqualConv2d(ch[j - 1], ch[j], 3, padding=1) for j in levels})
        self.scale1 = nn.ModuleDict({str(j): EqualLinear(1, ch[j]) for j in levels})
        self.scale2 = nn.ModuleDict({str(j): EqualLinear(1, ch[j]) for j in levels})

    def forward(self, cond: torch.Tensor, p: torch.Tensor) -> Conditioning:
        p = p.to(cond.dtype).view(-1, 1)
        shifts: list[torch.Tensor | None] = [None]
        a1s: list[torch.Tensor | None] = [None]
        a2s: list[torch.Tensor | None] = [None]
        f = self.first(cond)
        for j in range(1, len(self.down) + 1):
            f = self.down[j - 1](f)
            shifts.append(self.shift[str(j)](f))
            s1, s2 = self.scale1[str(j)](p), self.scale2[str(j)](p)
            if self.abs_scale:
                s1, s2 = s1.abs(), s2.abs()
            norm = torch.sqrt(s1 * s1 + s2 * s2 + 1e-8)
            a1s.append(s1 / norm)
            a2s.append(s2 / norm)
        return Conditioning(cond, shifts, a1s, a2s)
