"""Small building blocks shared by the IDM parts (StyleGAN2-style equalized layers, SR3 blocks)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """StyleGAN2's FusedLeakyReLU: ``leaky_relu(x + b, 0.2) * sqrt(2)``, b per channel (dim 1)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return F.leaky_relu(x + bias.view(shape), 0.2) * SQRT2


class EqualConv2d(nn.Module):
    """Conv2d whose weight is scaled by ``1/sqrt(in_ch * k * k)`` at run time (equalized lr)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer whose weight is scaled by ``1/sqrt(in_features)`` at run time."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = 1.0 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class Blur(nn.Module):
    """Depthwise 3x3 blur with kernel ``outer([1,3,1],[1,3,1]) / 25``, zero padding 1 (same size)."""

    def __init__(self) -> None:
        super().__init__()
        k = torch.tensor([1.0, 3.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 25.0).view(1, 1, 3, 3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = int(x.shape[1])  # a constant in exported graphs, whose spatial sizes may be dynamic
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, 1, 3, 3), padding=1, groups=c)


class NormActConv(nn.Module):
    """SR3 ``Block``: GroupNorm, Swish, optional dropout, 3x3 conv."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.GroupNorm(groups, in_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(F.silu(self.norm(x))))


class ResBlock(nn.Module):
    """SR3 residual block: block1, per-channel noise embedding added, block2 (with dropout), skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.block1 = NormActConv(in_ch, out_ch, groups)
        self.noise_proj = nn.Linear(emb_dim, out_ch)
        self.block2 = NormActConv(out_ch, out_ch, groups, dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.noise_proj(emb)[:, :, None, None]
        return self.block2(h) + self.skip(x)


class SelfAttention(nn.Module):
    """One-head self-attention over all positions, with GroupNorm and a residual connection."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1, bias=False)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (b, hw, hw)
        out = (v @ attn.transpose(1, 2)).reshape(b, c, h, w)
        return self.out(out) + x


class ResAttnBlock(nn.Module):
    """A U-Net stage: residual block, then self-attention on attention levels."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float, attn: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, groups, dropout)
        self.attn = SelfAttention(out_ch, groups) if attn else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x
