"""Fused Triton kernels for IDM's implicit up-layer, for CUDA tensors (and CPU tensors under Triton's
interpreter, ``TRITON_INTERPRET=1``, which is how their correctness is tested without a GPU).

The layer's plain-torch forms live in :mod:`idm_rt.model.implicit`, which computes the query tables
and the folded weights these kernels take and decides when to call them; the release's literal form
there is the kernels' test oracle. Importing this package never requires Triton.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from functools import cache

import torch

Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # rows, rel_rows, cols, rel_cols
_form_choice: dict[tuple, str] = {}


@cache
def triton_available() -> bool:
    """Whether Triton is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    """Whether the kernels can run on tensors of ``device``: CUDA, or CPU under the interpreter."""
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    return triton_available() and (device.type == "cuda" or (interpreting and device.type == "cpu"))


def _launcher(device: torch.device):
    if not triton_runs_on(device):
        raise RuntimeError(
            f"the Triton kernels need CUDA tensors or TRITON_INTERPRET=1 (got {device}), and Triton installed"
        )
    from . import triton_implicit

    return triton_implicit


def mlp_upsample(
    x: torch.Tensor,
    shift: torch.Tensor,
    a1: torch.Tensor,
    a2: torch.Tensor,
    bias: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    tables: Tables,
    relu: bool = False,
) -> torch.Tensor:
    """The layer with the coordinate-MLP evaluated per target pixel, fused.

    Args:
        x, shift: (B, C, h, w) feature and LR shift (float32, float16 or bfloat16).
        a1, a2: (B, C) normalised scale vectors; bias: (C,) FusedLeakyReLU bias.
        w1, b1: (hidden, C+2), (hidden,) first Linear; w2, b2: (C, hidden), (C,) second Linear.
        tables: the source row of every target row and its relative coordinate, the same for columns
            (:func:`idm_rt.model.implicit.query_tables`); they set the output size (H', W').
        relu: the paper's ReLU between the Linear layers (the released weights have none).
    Returns:
        (B, C, H', W') in x's dtype; products accumulate in float32.
    """
    ti = _launcher(x.device)
    x, shift, a1, a2, bias, b1, b2 = (t.contiguous() for t in (x, shift, a1, a2, bias, b1, b2))
    w1, w2 = w1.to(x.dtype).contiguous(), w2.to(x.dtype).contiguous()  # the GEMMs run in x's dtype
    return ti.mlp_upsample(x, shift, a1, a2, bias, w1, b1, w2, b2, _contiguous(tables), relu)


def folded_upsample(
    x: torch.Tensor,
    shift: torch.Tensor,
    a1: torch.Tensor,
    a2: torch.Tensor,
    bias: torch.Tensor,
    m: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    d: torch.Tensor,
    tables: Tables,
) -> torch.Tensor:
    """The layer for linear weights, folded (:func:`idm_rt.model.implicit.fold`): ``m`` h + d at the source
    resolution with the modulation in the GEMM's prologue, then one pass that gathers the nearest source
    pixel and adds ``u`` rel_row + ``v`` rel_col. Arguments as :func:`mlp_upsample`."""
    ti = _launcher(x.device)
    x, shift, a1, a2, bias = (t.contiguous() for t in (x, shift, a1, a2, bias))
    m, u, v, d = (t.float().contiguous() for t in (m, u, v, d))
    return ti.folded_upsample(x, shift, a1, a2, bias, m, u, v, d, _contiguous(tables))


def _contiguous(tables: Tables) -> Tables:
    rows, rel_rows, cols, rel_cols = tables
    return rows.contiguous(), rel_rows.float().contiguous(), cols.contiguous(), rel_cols.float().contiguous()


def fastest(key: tuple, *runs: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """On CUDA, time each way of computing one result once per ``key`` (shapes, dtype) and keep the
    fastest (never while a graph is captured: then, and off CUDA, the first)."""
    if key not in _form_choice:
        device = key[0]
        if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return runs[0]
        from triton.testing import do_bench

        _form_choice[key] = min(range(len(runs)), key=lambda i: do_bench(runs[i]))
    return runs[_form_choice[key]]


__all__ = ["mlp_upsample", "folded_upsample", "fastest", "triton_available", "triton_runs_on", "Tables"]
