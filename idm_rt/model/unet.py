"""The diffusion U-Net of IDM (SR3-style, Sec. 3.1) whose decoder upsamples with implicit layers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IDMConfig
from .implicit import ImplicitUp, Tables, query_tables
from .layers import NormActConv, ResAttnBlock
from .pieces import Conditioning
from .tables import level_sizes


def noise_level_encoding(g: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of the continuous noise level g = sqrt(gamma), (B,) -> (B, dim)."""
    count = dim // 2
    step = torch.arange(count, dtype=g.dtype, device=g.device) / count
    e = g.view(-1, 1) * torch.exp(-math.log(1e4) * step.view(1, -1))
    return torch.cat([torch.sin(e), torch.cos(e)], dim=-1)


def query_tables_for(size: tuple[int, int], levels: int, device: torch.device | None = None) -> list[Tables]:
    """The implicit layers' :func:`~idm_rt.model.implicit.query_tables` for an image of ``size``,
    deepest layer first (the order the U-Net runs them): level i to level i - 1 for i = L-1 .. 1."""
    sizes = level_sizes(size, levels)
    return [query_tables(sizes[i], sizes[i - 1], device) for i in range(levels - 1, 0, -1)]


class NoiseMLP(nn.Module):
    """Encoding of the noise level, Linear(inner, 4 inner), Swish, Linear(4 inner, inner)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(noise_level_encoding(g, self.dim))))


class DownLevel(nn.Module):
    """Residual(-attention) blocks of one level, then a stride-2 conv except at the last level."""

    def __init__(self, blocks: list[ResAttnBlock], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class UpLevel(nn.Module):
    """res_blocks + 1 blocks on [x, skip], then an implicit up-layer except at level 0."""

    def __init__(self, blocks: list[ResAttnBlock], upsample: ImplicitUp | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.upsample = upsample


class UNet(nn.Module):
    """``forward(x_t, conditioning, g) -> eps``; the conditioning comes precomputed."""

    def __init__(self, config: IDMConfig):
        super().__init__()
        inner, ch, groups, drop = config.inner_channel, config.channels, config.norm_groups, config.dropout
        self.noise_mlp = NoiseMLP(inner)
        self.input_conv = nn.Conv2d(6, inner, 3, padding=1)

        def block(cin: int, cout: int, level: int) -> ResAttnBlock:
            return ResAttnBlock(cin, cout, inner, groups, drop, level in config.attn_levels)

        skips, prev = [inner], inner
        self.down = nn.ModuleList()
        for i in range(config.levels):
            blocks = []
            for _ in range(config.res_blocks):
                blocks.append(block(prev, ch[i], i))
                prev = ch[i]
                skips.append(prev)
            last = i == config.levels - 1
            self.down.append(DownLevel(blocks, None if last else nn.Conv2d(prev, prev, 3, stride=2, padding=1)))
            if not last:
                skips.append(prev)
        self.mid = nn.ModuleList(
            [
                ResAttnBlock(prev, prev, inner, groups, drop, attn=True),
                ResAttnBlock(prev, prev, inner, groups, drop, attn=False),
            ]
        )
        self.up = nn.ModuleList()
        for i in reversed(range(config.levels)):
            blocks = []
            for _ in range(config.res_blocks + 1):
                blocks.append(block(prev + skips.pop(), ch[i], i))
                prev = ch[i]
            up = ImplicitUp(prev, config.implicit_hidden, config.implicit_relu) if i > 0 else None
            self.up.append(UpLevel(blocks, up))
        self.final = NormActConv(prev, 3, groups)

    def forward(
        self, x_t: torch.Tensor, c: Conditioning, g: torch.Tensor, tables: list[Tables] | None = None
    ) -> torch.Tensor:
        """``tables``: the implicit layers' :func:`~idm_rt.model.implicit.query_tables`, deepest first,
        for a graph exported with dynamic sizes (computed in the layers otherwise)."""
        emb = self.noise_mlp(g.to(x_t.dtype).view(-1))
        x = self.input_conv(torch.cat([c.cond, x_t], dim=1))
        skips = [x]
        for level in self.down:
            for blk in level.blocks:
                x = blk(x, emb)
                skips.append(x)
            if level.downsample is not None:
                x = level.downsample(x)
                skips.append(x)
        for blk in self.mid:
            x = blk(x, emb)
        n = len(self.up)
        for k, level in enumerate(self.up):
            for blk in level.blocks:
                x = blk(torch.cat([x, skips.pop()], dim=1), emb)
            if level.upsample is not None:
                i = n - 1 - k  # U-Net level of x
                x = level.upsample(
                    x,
                    c.shifts[i],
                    c.a1[i],
                    c.a2[i],
                    tuple(skips[-1].shape[-2:]),
                    tables[k] if tables is not None else None,
                )
        return self.final(x)
