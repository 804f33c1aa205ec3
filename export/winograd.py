"""Winograd convolutions for the ONNX Runtime CPU graphs: fewer multiplications per 3x3 convolution.

ONNX Runtime's CPU convolutions already run near the machine's float32 peak (see
``benchmarks.latency_onnx --profile``), so the only way to make the U-Net call much faster there
is to do less arithmetic. Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", CVPR 2016) computes an m x m output tile from an
(m+2) x (m+2) input tile with (m+2)^2 multiplications per channel pair instead of 9 m^2: 2.25x
fewer for m = 2, 4x fewer for m = 4. Written with standard ONNX operators:

* input transform ``V = B^T d B`` of every tile: a Conv with stride m over every channel as its
  own single-channel image, the (m+2)^2 basis patterns of ``B^T . B`` as its filters;
* the products: one batched MatMul per tile position pair ``(U = G g G^T) @ V`` over channels;
* output transform ``A^T M A``: one MatMul with the m^2 x (m+2)^2 matrix of ``A^T . A``, then
  DepthToSpace places the m x m tiles.

It pays off only where the channels are many for the image size (the transforms are memory
bound, small images pay per-operator overheads): :func:`tile_size` holds the rule measured on the
CPU. The float32 error grows with m (F(4x4, 3x3) is ~30x the direct convolution's, still ~1e-5
relative), so the graphs that use it are checked by ``export.parity`` like every other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (B^T, G, A^T) of F(m, 3) with interpolation points 0, -1, 1 (m = 2) and 0, +-1, +-2 (m = 4), each
# plus the point at infinity (Lavin & Gray 2016, section 4); float64 so U = G g G^T is exact to
# float32 precision.
_MATRICES = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}

# The rule of when it pays off (tile_size): Winograd where the image's smaller side is at least MIN_SIDE and the
# reduced channel count c_in * c_out / (c_in + c_out) (the products save work in proportion to c_in * c_out, the
# transforms cost in proportion to c_in + c_out) is at least max(MIN_REDUCED_CHANNELS, REDUCED_CHANNELS_TIMES_SIDE
# / side). The per-convolution measurements behind it, for each VERSION, are in benchmarks/results/winograd.md.
MIN_REDUCED_CHANNELS = 64  # and at least REDUCED_CHANNELS_TIMES_SIDE / side
REDUCED_CHANNELS_TIMES_SIDE = 2048
MIN_SIDE = 8
VERSION = 3  # bump when the rule or the graph changes: part of the ONNX reuse key


def matrices(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B^T, G, A^T) of F(m, 3) in float64."""
    if m not in _MATRICES:
        raise ValueError(f"Winograd tile {m} is not one of {sorted(_MATRICES)}")
    return tuple(torch.tensor(a, dtype=torch.float64) for a in _MATRICES[m])


def tile_size(conv: nn.Conv2d, height: int, width: int) -> int | None:
    """The Winograd output tile m for ``conv`` at an input of ``height`` x ``width``, or None to
    keep the direct convolution (other kernels, strides or groups; too few channels for the image
    size, see benchmarks/results/winograd.md)."""
    plain = (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )
    side = min(height, width)
    reduced = conv.in_channels * conv.out_channels / (conv.in_channels + conv.out_channels)
    if not plain or side < MIN_SIDE or reduced < max(MIN_REDUCED_CHANNELS, REDUCED_CHANNELS_TIMES_SIDE / side):
        return None
    return 4 if side >= 16 else 2


class DepthToSpaceDCR(torch.autograd.Function):
    """ONNX DepthToSpace in DCR mode, input channel ``(i * m + j) * C + c`` to output channel c at
    offset (i, j) of each m x m block. torch's pixel_shuffle is the CRD mode, so this has its own
    ONNX symbolic: one DepthToSpace node instead of a 6-D Transpose, which ONNX Runtime runs slower."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: int) -> torch.Tensor:
        b, cm2, h, w = x.shape
        return x.reshape(b, m, m, cm2 // (m * m), h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, -1, h * m, w * m)

    @staticmethod
    def symbolic(g, x, m: int):
        return g.op("DepthToSpace", x, blocksize_i=m, mode_s="DCR")


class WinogradConv2d(nn.Module):
    """A 3x3, stride 1, padding 1 convolution computed as F(m x m, 3 x 3) (see the module doc)."""

    def __init__(self, conv: nn.Conv2d, m: int):
        super().__init__()
        bt, g, at = matrices(m)
        n = m + 2
        weight = conv.weight.detach().double()
        c_out, c_in = weight.shape[:2]
        u = torch.einsum("au,oiuv,bv->aboi", g, weight, g).reshape(n * n, 1, c_out, c_in)
        basis_in = torch.einsum("ak,bl->abkl", bt, bt).reshape(n * n, 1, n, n)
        dtype = conv.weight.dtype
        self.register_buffer("u", u.to(dtype))
        self.register_buffer("transform_in", basis_in.to(dtype))
        self.register_buffer("transform_out", torch.einsum("pa,qb->pqab", at, at).reshape(m * m, n * n).to(dtype))
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)
        self.m, self.n, self.c_out = m, n, c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Python ints, so that an ONNX trace holds the sizes as constants (the batch stays dynamic
        # through the -1 reshapes) instead of shape arithmetic around every convolution.
        c, height, width = (int(d) for d in x.shape[1:])
        m, n = self.m, self.n
        h, w = (height + m - 1) // m, (width + m - 1) // m  # tiles per column and row; the last may overhang
        fits = (h * m, w * m) == (height, width)
        if not fits:
            x = F.pad(x, (0, w * m - width, 0, h * m - height))
        # Every channel as its own single-channel image: one plain Conv over B * C images, which
        # parallelises better than a Conv with C groups.
        v = F.conv2d(x.reshape(-1, 1, h * m, w * m), self.transform_in, stride=m, padding=1)  # (B * C, n^2, h, w)
        v = v.reshape(-1, c, n * n, h * w).permute(2, 0, 1, 3)  # (n^2, B, C, tiles)
        prod = torch.matmul(self.u, v)  # (n^2, B, C_out, tiles)
        y = torch.matmul(self.transform_out, prod.reshape(n * n, -1))  # (m^2, B * C_out * tiles)
        y = y.reshape(m * m, -1, self.c_out * h * w).transpose(0, 1)  # (B, m^2, C_out * tiles)
        y = DepthToSpaceDCR.apply(y.reshape(-1, m * m * self.c_out, h, w), m)  # places the m x m tiles
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y if fits else y[..., :height, :width]


def use_winograd(module: nn.Module, args: tuple) -> list[str]:
    """Replace, in place, every convolution of ``module`` that :func:`tile_size` selects at the
    input sizes one call ``module(*args)`` gives it (the smallest, for one called more than once);
    returns the names replaced, every name of a shared convolution included."""
    convs = {id(c): c for c in module.modules() if isinstance(c, nn.Conv2d)}
    sizes: dict[int, tuple[int, int]] = {}

    def record(conv: nn.Conv2d, inputs: tuple, _output) -> None:
        height, width = inputs[0].shape[-2:]
        old = sizes.get(id(conv), (height, width))
        sizes[id(conv)] = (min(old[0], height), min(old[1], width))

    hooks = [c.register_forward_hook(record) for c in convs.values()]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for hook in hooks:
            hook.remove()
    replacements = {}
    for key, conv in convs.items():
        m = tile_size(conv, *sizes[key]) if key in sizes else None
        if m is not None:
            replacements[key] = WinogradConv2d(conv, m)
    replaced = []
    for name, conv in list(module.named_modules(remove_duplicate=False)):
        if id(conv) in replacements:
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent), attr, replacements[id(conv)])
            replaced.append(name)
    return replaced
