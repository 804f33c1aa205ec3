"""Implicit up-layer (IDM Sec. 3.2, Eq. 4-5): scale modulation, then a coordinate-MLP queried
at every target pixel on the nearest source feature and the relative coordinate.

Two forms compute the same function:
* ``literal``: the release's way, a (C+2 -> hidden -> C) MLP evaluated per target pixel;
* ``fast``: for the released (linear) MLP, ``W2 W1`` folded into a C x C map applied at the
  source resolution, nearest gather, plus a per-row and a per-column term (exact algebra).
  With the ReLU variant the first layer still runs at the source resolution and only the
  nonlinearity and second layer run per target pixel.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from . import tables
from .layers import fused_leaky_relu

Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # rows, rel_rows, cols, rel_cols


def pixel_centres(n: int) -> torch.Tensor:
    """:func:`idm_rt.model.tables.pixel_centres` as a float32 tensor."""
    return torch.from_numpy(tables.pixel_centres(n))


def nearest_query(n_src: int, n_dst: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`idm_rt.model.tables.nearest_query` as tensors (int64 indices, float32 relative coordinates)."""
    idx, rel = tables.nearest_query(n_src, n_dst)
    return torch.from_numpy(idx.copy()), torch.from_numpy(rel.copy())


def query_tables(src: tuple[int, int], dst: tuple[int, int], device: torch.device | None = None) -> Tables:
    """:func:`idm_rt.model.tables.query_tables` as tensors kept on ``device`` (so that a CUDA graph's capture finds
    them there, computed by its warm-up)."""
    return _tables((int(src[0]), int(src[1])), (int(dst[0]), int(dst[1])), torch.device(device or "cpu"))


@lru_cache(maxsize=256)
def _tables(src: tuple[int, int], dst: tuple[int, int], device: torch.device) -> Tables:
    return tuple(torch.from_numpy(t.copy()).to(device) for t in tables.query_tables(src, dst))


def gather_nearest(y: torch.Tensor, size: tuple[int, int], tables: Tables | None = None) -> torch.Tensor:
    """``y`` (B, C, hs, ws) sampled at the :func:`nearest_query` source pixel of each target pixel.
    At exactly twice the size that pixel is ``k // 2``, a nearest 2x upsampling: ONNX Runtime's
    Resize does it ~15x faster than its Gather along the last axis (the same values). Given
    ``tables`` (graph inputs of a graph with dynamic sizes), their indices are used."""
    if tables is not None:
        return y.index_select(2, tables[0]).index_select(3, tables[2])
    hs, ws = int(y.shape[-2]), int(y.shape[-1])
    if (int(size[0]), int(size[1])) == (2 * hs, 2 * ws):
        return F.interpolate(y, size=(2 * hs, 2 * ws), mode="nearest")
    ri, _, ci, _ = query_tables((hs, ws), size, y.device)
    return y[:, :, ri][:, :, :, ci]


def modulate(
    x: torch.Tensor, shift: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``FusedLeakyReLU(x * a1 + shift * a2, bias)`` with a1, a2 of shape (B, C)."""
    return fused_leaky_relu(x * a1[:, :, None, None] + shift * a2[:, :, None, None], bias)


def query_literal(h: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, size: tuple[int, int], relu: bool) -> torch.Tensor:
    """Reference form, the release's computation: ``grid_sample`` the feature and the source
    centres at every target centre, concatenate the relative coordinate, run the MLP per pixel."""
    b, c, hs, ws = h.shape
    rows, cols = pixel_centres(size[0]).to(h), pixel_centres(size[1]).to(h)
    coord = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).view(1, -1, 2)  # row first
    grid = coord.clamp(-1 + 1e-6, 1 - 1e-6).flip(-1).unsqueeze(1).expand(b, -1, -1, -1)
    q_feat = F.grid_sample(h, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
    src_rows, src_cols = pixel_centres(hs).to(h), pixel_centres(ws).to(h)
    src_coord = torch.stack(torch.meshgrid(src_rows, src_cols, indexing="ij"), dim=0)
    src_coord = src_coord.unsqueeze(0).expand(b, -1, -1, -1)
    q_coord = F.grid_sample(src_coord, grid, mode="nearest", align_corners=False)[:, :, 0, :].permute(0, 2, 1)
    rel = (coord - q_coord) * torch.tensor([hs, ws], dtype=h.dtype, device=h.device)
    hidden = fc1(torch.cat([q_feat, rel], dim=-1))
    if relu:
        hidden = F.relu(hidden)
    return fc2(hidden).permute(0, 2, 1).reshape(b, c, size[0], size[1])


def fold(fc1: nn.Linear, fc2: nn.Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two Linear layers with no activation between them folded into ``(M, u, v, d)`` (float32, autocast
    off): ``out = M h + rel_row u + rel_col v + d`` with M = W2 W1[:, :C] (C x C), u = W2 W1[:, C],
    v = W2 W1[:, C+1] and d = W2 b1 + b2, so that the C x C map runs at the source resolution."""
    c = fc2.weight.shape[0]
    device = fc1.weight.device.type
    with torch.autocast(device, enabled=False) if device in ("cpu", "cuda") else contextlib.nullcontext():
        w2 = fc2.weight.float()
        full = w2 @ fc1.weight.float()
        d = w2 @ fc1.bias.float() + fc2.bias.float()
    return full[:, :c], full[:, c], full[:, c + 1], d


def query_fast(
    h: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, size: tuple[int, int], relu: bool, tables: Tables | None = None
) -> torch.Tensor:
    """Same function as :func:`query_literal`; the linear algebra is moved to the source resolution.
    ``tables`` (:func:`query_tables`) are computed here unless given: a graph exported with static
    sizes holds them as constants, one with dynamic sizes takes them as inputs."""
    b, c, hs, ws = h.shape
    if tables is None:
        # int(): under ONNX export sizes arrive as traced tensors; the index tables must be constants.
        tables = query_tables((int(hs), int(ws)), (int(size[0]), int(size[1])), h.device)
        gather = lambda y: gather_nearest(y, size)
    else:
        gather = lambda y: gather_nearest(y, size, tables)
    rr, cr = tables[1].to(h.dtype), tables[3].to(h.dtype)
    if not relu:
        m, u, v, d = (t.to(h.dtype) for t in fold(fc1, fc2))
        y = gather(F.conv2d(h, m[:, :, None, None], d))
        return y + u[:, None, None] * rr[:, None] + v[:, None, None] * cr[None, :]
    # hidden = relu(W1f h_src + rel_r w_r + rel_c w_c + b1), out = W2 hidden + b2
    w1, w_row, w_col = fc1.weight[:, :c], fc1.weight[:, c], fc1.weight[:, c + 1]
    pre = gather(F.conv2d(h, w1[:, :, None, None], fc1.bias))
    hidden = F.relu(pre + w_row[:, None, None] * rr[:, None] + w_col[:, None, None] * cr[None, :])
    return F.conv2d(hidden, fc2.weight[:, :, None, None], fc2.bias)


KERNEL_MODES = ("auto", "triton", "torch")


def fused_kernels(mode: str, device: torch.device):
    """The Triton kernels (:mod:`idm_rt.kernels`) when ``mode`` sends this device to them, else None:
    ``"auto"`` uses them on CUDA when Triton is installed, ``"triton"`` always (RuntimeError from the
    kernels where they cannot run), ``"torch"`` never."""
    from .. import kernels

    if mode == "torch" or (mode == "auto" and not (device.type == "cuda" and kernels.triton_available())):
        return None
    return kernels


class ImplicitUp(nn.Module):
    """Modulate a U-Net feature with the level's LR shift and scale vectors, then query it at the
    target size with the coordinate-MLP (``fc1``: C+2 -> hidden, ``fc2``: hidden -> C).

    ``kernels`` (one of :data:`KERNEL_MODES`) picks the fused Triton kernels or the torch forms;
    ``literal`` forces the release's torch form.
    """

    def __init__(self, ch: int, hidden: int = 256, relu: bool = False):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(ch))
        self.fc1 = nn.Linear(ch + 2, hidden)
        self.fc2 = nn.Linear(hidden, ch)
        self.relu = relu
        self.literal = False
        self.kernels = "auto"

    def forward(self, x, shift, a1, a2, size: tuple[int, int], tables: Tables | None = None) -> torch.Tensor:
        """``tables``: the :func:`query_tables` of this step, given by a graph with dynamic sizes."""
        if tables is not None:
            return query_fast(modulate(x, shift, a1, a2, self.bias), self.fc1, self.fc2, size, self.relu, tables)
        # The Triton kernels have no backward: training (grad enabled) stays on the torch forms.
        fused = None if self.literal or torch.is_grad_enabled() else fused_kernels(self.kernels, x.device)
        if fused is not None:
            tables = query_tables(tuple(x.shape[-2:]), size, x.device)
            w = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
            run_mlp = lambda: fused.mlp_upsample(x, shift, a1, a2, self.bias, *w, tables, self.relu)
            if self.relu:
                return run_mlp()
            run_folded = lambda: fused.folded_upsample(x, shift, a1, a2, self.bias, *fold(self.fc1, self.fc2), tables)
            return fused.fastest((x.device, x.dtype, tuple(x.shape), tuple(size)), run_folded, run_mlp)()
        h = modulate(x, shift, a1, a2, self.bias)
        query = query_literal if self.literal else query_fast
        return query(h, self.fc1, self.fc2, size, self.relu)
