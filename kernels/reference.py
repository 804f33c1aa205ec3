"""Plain-torch implicit up-layer (IDM Sec. 3.2): the Triton kernels' ground truth and CPU fallback.

Written from the layer's definition, independently of ``idm_rt`` (this package never imports it):
modulate, pick the nearest source pixel per target pixel centre as
``grid_sample(mode='nearest', align_corners=False)`` does, append the relative coordinate
(row first), run the two-Linear coordinate-MLP.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)
EPS_CLAMP = 1e-6  # the release clamps query coordinates to [-1 + eps, 1 - eps]


def centres(n: int) -> torch.Tensor:
    """The n pixel-centre coordinates ``-1 + (2k+1)/n`` in float32, evaluated as the release does."""
    r = 1.0 / n
    return (2.0 * r) * torch.arange(n, dtype=torch.float32) + (-1.0 + r)


@lru_cache(maxsize=512)
def _axis_table_cpu(n_src: int, n_dst: int) -> tuple[torch.Tensor, torch.Tensor]:
    q = centres(n_dst)
    # grid_sample's unnormalisation for align_corners=False, then round half to even (nearbyint)
    idx = torch.round((q.clamp(-1 + EPS_CLAMP, 1 - EPS_CLAMP) + 1.0) * (n_src / 2.0) - 0.5).to(torch.int32)
    rel = (q - centres(n_src)[idx.long()]) * n_src
    return idx, rel


_device_tables: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def axis_table(n_src: int, n_dst: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Per target index along one axis: the nearest source index (int32) and the relative
    coordinate ``(target - source centre) * n_src`` (float32).

    Computed once per (sizes, device) on the CPU, so every device and backend picks the same
    source pixel, also on exact ties where a fused multiply-add could round differently.
    """
    key = (n_src, n_dst, torch.device(device))
    if key not in _device_tables:
        _device_tables[key] = tuple(t.to(device) for t in _axis_table_cpu(n_src, n_dst))
    return _device_tables[key]


def modulate(x: torch.Tensor, shift: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor,
             bias: torch.Tensor) -> torch.Tensor:
    """``leaky_relu(x a1 + shift a2 + bias, 0.2) * sqrt 2`` with a1, a2 (B, C) and bias (C,)."""
    pre = x * a1[:, :, None, None] + shift * a2[:, :, None, None] + bias[None, :, None, None]
    return F.leaky_relu(pre, 0.2) * SQRT2


def per_target_mlp(x: torch.Tensor, shift: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, bias: torch.Tensor,
                   w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                   out_size: tuple[int, int], hidden_act: str | None = None) -> torch.Tensor:
    """The layer as defined: the MLP evaluated on [feature, rel_row, rel_col] at every target pixel."""
    b, _, hs, ws = x.shape
    ri, rr = axis_table(hs, out_size[0], x.device)
    ci, cr = axis_table(ws, out_size[1], x.device)
    feat = modulate(x, shift, a1, a2, bias)[:, :, ri.long()][:, :, :, ci.long()]
    rel_r = rr.to(x.dtype).view(1, 1, -1, 1).expand(b, 1, out_size[0], out_size[1])
    rel_c = cr.to(x.dtype).view(1, 1, 1, -1).expand(b, 1, out_size[0], out_size[1])
    query = torch.cat([feat, rel_r, rel_c], dim=1)  # (B, C+2, H', W')
    hidden = torch.einsum("bkhw,nk->bnhw", query, w1) + b1[None, :, None, None]
    if hidden_act == "relu":
        hidden = F.relu(hidden)
    return torch.einsum("bnhw,cn->bchw", hidden, w2) + b2[None, :, None, None]


def fold_linear(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold the two Linear layers (no activation) into ``(M, u, v, d)`` in float32:
    ``out = M h + rel_row u + rel_col v + d`` with M = W2 W1[:, :C], u, v = W2 W1[:, C], W2 W1[:, C+1]."""
    c = w2.shape[0]
    with torch.autocast(w1.device.type, enabled=False):
        w2f = w2.float()
        full = w2f @ w1.float()  # (C, C+2)
        d = w2f @ b1.float() + b2.float()
    return full[:, :c].contiguous(), full[:, c].contiguous(), full[:, c + 1].contiguous(), d


def folded_linear(x: torch.Tensor, shift: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, bias: torch.Tensor,
                  w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                  out_size: tuple[int, int]) -> torch.Tensor:
    """The same layer for linear weights, refactored: C x C map at the source resolution, nearest
    gather, then the per-row and per-column terms (4x to 30x fewer multiply-adds)."""
    m, u, v, d = fold_linear(w1, b1, w2, b2)
    ri, rr = axis_table(x.shape[2], out_size[0], x.device)
    ci, cr = axis_table(x.shape[3], out_size[1], x.device)
    h = modulate(x, shift, a1, a2, bias)
    y = F.conv2d(h, m.to(h.dtype)[:, :, None, None], d.to(h.dtype))[:, :, ri.long()][:, :, :, ci.long()]
    row = u.to(h.dtype)[:, None, None] * rr.to(h.dtype)[:, None]
    col = v.to(h.dtype)[:, None, None] * cr.to(h.dtype)[None, :]
    return y + row + col
