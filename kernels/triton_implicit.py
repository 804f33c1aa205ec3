"""Triton kernels of the implicit up-layer (IDM Sec. 3.2), both forms of the same function.

* ``mlp``: one program per (batch, block of target pixels) gathers and modulates the C source
  features, runs Linear(C+2 -> hidden), the optional ReLU and Linear(hidden -> C) with the
  hidden activations in registers only, and writes NCHW.
* ``folded`` (linear weights only): ``M h`` at the source resolution with the modulation in the
  GEMM's prologue, then one pass that gathers and adds the row and column terms.

Loads may be float32, float16 or bfloat16; products accumulate in float32.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os

import torch
import triton
import triton.language as tl

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
_SQRT2 = tl.constexpr(math.sqrt(2.0))  # FusedLeakyReLU's gain; kernels read module globals only as constexpr


_pinned: list[int | None] = [None]  # the autotune config every kernel uses, by index (pinned_config)


def _prune(configs, named_args, **kwargs):
    """A pinned run (:func:`pinned_config`) gets its one config; the interpreter, which runs every config it
    benchmarks, gets the first; a tuning run on a GPU gets the configs that fit its shared memory."""
    if _pinned[0] is not None:
        return [configs[_pinned[0] % len(configs)]]
    if INTERPRETING:
        return configs[:1]
    return [c for c in configs if not _over_shared_memory(c, named_args)]


def _over_shared_memory(config: triton.Config, named_args: dict) -> bool:
    """The fused MLP's 64 x 64 blocks in 3 stages take 208-272 KiB of shared memory in float32, over an A100's
    163 KiB and, for some shapes, an H100's 227 KiB (ahead-of-time compiled: benchmarks/results/triton_aot.json):
    never tried in float32, rather than compiled to fail (every other config fits both cards)."""
    x = named_args.get("x_ptr")
    kw = config.kwargs
    return (
        getattr(x, "dtype", None) == torch.float32
        and "BLOCK_P" in kw
        and config.num_stages >= 3
        and kw["BLOCK_P"] * kw["BLOCK_K"] >= 64 * 64
    )


@contextlib.contextmanager
def pinned_config(index: int):
    """Inside the block every kernel runs autotune config ``index`` (modulo its number of configs), with no
    tuning: one compilation per specialisation instead of one per config, and a way to check every config
    (under the interpreter too). Tuning choices made before or inside the block are forgotten at both ends."""

    def forget():
        for kernel in (_mlp_kernel, _map_kernel, _gather_kernel):
            kernel.cache.clear()

    forget()
    _pinned[0] = index
    try:
        yield
    finally:
        _pinned[0] = None
        forget()


def _autotune(configs: list[triton.Config], key: list[str]):
    """``triton.autotune`` whose first config is the one the interpreter runs; tuning results are kept in
    Triton's cache directory (per GPU architecture and shapes), so a new process does not tune again."""
    cache = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
    return triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": _prune}, **cache)


def _cfg(num_warps: int, num_stages: int, **blocks: int) -> triton.Config:
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


@triton.jit
def _plane(batch, C, chan, size):
    """Offset of the first element of plane ``chan`` of sample ``batch`` in a (B, C, size) tensor, in int64:
    B x C x size passes 2^31 (a 4096 x 4096 output of a 128-channel level does), and int32 products wrap."""
    return (batch.to(tl.int64) * C + chan) * size


@triton.jit
def _modulated(x_ptr, s_ptr, a1_ptr, a2_ptr, bias_ptr, batch, C, HS, chan, src, mask):
    """leaky_relu(x a1 + shift a2 + bias, 0.2) sqrt 2 at channels ``chan`` (K,) x source pixels ``src``,
    laid out as ``chan[:, None]`` by ``src[None, :]`` or the reverse, whichever the caller broadcast."""
    cm = chan < C
    off = _plane(batch, C, chan, HS) + src
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + off, mask=mask, other=0.0).to(tl.float32)
    a1 = tl.load(a1_ptr + batch * C + chan, mask=cm, other=0.0).to(tl.float32)
    a2 = tl.load(a2_ptr + batch * C + chan, mask=cm, other=0.0).to(tl.float32)
    b = tl.load(bias_ptr + chan, mask=cm, other=0.0).to(tl.float32)
    t = x * a1 + s * a2 + b
    return tl.where(t >= 0.0, t, 0.2 * t) * _SQRT2


@_autotune(
    [
        _cfg(4, 2, BLOCK_P=32, BLOCK_K=32, BLOCK_O=64),
        _cfg(4, 2, BLOCK_P=16, BLOCK_K=64, BLOCK_O=64),
        _cfg(8, 2, BLOCK_P=64, BLOCK_K=32, BLOCK_O=64),
        _cfg(8, 3, BLOCK_P=64, BLOCK_K=64, BLOCK_O=64),
    ],
    key=["C", "HW", "HIDDEN"],
)
@triton.jit
def _mlp_kernel(
    x_ptr,
    s_ptr,
    a1_ptr,
    a2_ptr,
    bias_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    ri_ptr,
    rr_ptr,
    ci_ptr,
    cr_ptr,
    out_ptr,
    C,
    HS,
    WS,
    W,
    HW,
    HIDDEN,
    RELU: tl.constexpr,
    HIDDEN_P: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_O: tl.constexpr,
):
    batch = tl.program_id(1)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # flat target pixels
    pm = p < HW
    row, col = p // W, p % W
    src = tl.load(ri_ptr + row, mask=pm, other=0) * WS + tl.load(ci_ptr + col, mask=pm, other=0)
    rel_r = tl.load(rr_ptr + row, mask=pm, other=0.0)
    rel_c = tl.load(cr_ptr + col, mask=pm, other=0.0)
    n = tl.arange(0, HIDDEN_P)
    nm = n < HIDDEN
    wdt = w1_ptr.dtype.element_ty
    # hidden = W1[:, :C] h + rel_r W1[:, C] + rel_c W1[:, C+1] + b1, (BLOCK_P, HIDDEN_P) in registers
    hidden = tl.zeros((BLOCK_P, HIDDEN_P), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < C
        h = _modulated(
            x_ptr, s_ptr, a1_ptr, a2_ptr, bias_ptr, batch, C, HS, k[None, :], src[:, None], pm[:, None] & km[None, :]
        )
        w1t = tl.load(w1_ptr + n[None, :] * (C + 2) + k[:, None], mask=km[:, None] & nm[None, :], other=0.0)
        hidden = tl.dot(h.to(wdt), w1t, hidden, input_precision=PRECISION)
    w_r = tl.load(w1_ptr + n * (C + 2) + C, mask=nm, other=0.0).to(tl.float32)
    w_c = tl.load(w1_ptr + n * (C + 2) + C + 1, mask=nm, other=0.0).to(tl.float32)
    b1 = tl.load(b1_ptr + n, mask=nm, other=0.0).to(tl.float32)
    hidden += rel_r[:, None] * w_r[None, :] + rel_c[:, None] * w_c[None, :] + b1[None, :]
    if RELU:
        hidden = tl.maximum(hidden, 0.0)
    hidden_w = hidden.to(wdt)
    for o0 in range(0, C, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        om = o < C
        w2t = tl.load(w2_ptr + o[None, :] * HIDDEN + n[:, None], mask=nm[:, None] & om[None, :], other=0.0)
        b2 = tl.load(b2_ptr + o, mask=om, other=0.0).to(tl.float32)
        y = tl.dot(hidden_w, w2t, input_precision=PRECISION) + b2[None, :]
        tl.store(
            out_ptr + _plane(batch, C, o[None, :], HW) + p[:, None],
            y.to(out_ptr.dtype.element_ty),
            mask=pm[:, None] & om[None, :],
        )


@_autotune(
    [
        _cfg(4, 2, BLOCK_O=64, BLOCK_S=64, BLOCK_K=32),
        _cfg(4, 3, BLOCK_O=32, BLOCK_S=64, BLOCK_K=32),
        _cfg(8, 3, BLOCK_O=128, BLOCK_S=64, BLOCK_K=32),
        _cfg(8, 3, BLOCK_O=64, BLOCK_S=128, BLOCK_K=32),
    ],
    key=["C", "HS"],
)
@triton.jit
def _map_kernel(
    x_ptr,
    s_ptr,
    a1_ptr,
    a2_ptr,
    bias_ptr,
    m_ptr,
    d_ptr,
    y_ptr,
    C,
    HS,
    PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y[b, :, s] = M modulate(x, shift)[b, :, s] + d at the source resolution."""
    batch = tl.program_id(2)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    om, sm = o < C, s < HS
    mdt = m_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_O, BLOCK_S), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < C
        m = tl.load(m_ptr + o[:, None] * C + k[None, :], mask=om[:, None] & km[None, :], other=0.0)
        h = _modulated(
            x_ptr, s_ptr, a1_ptr, a2_ptr, bias_ptr, batch, C, HS, k[:, None], s[None, :], km[:, None] & sm[None, :]
        )
        acc = tl.dot(m, h.to(mdt), acc, input_precision=PRECISION)
    acc += tl.load(d_ptr + o, mask=om, other=0.0)[:, None]
    tl.store(
        y_ptr + _plane(batch, C, o[:, None], HS) + s[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=om[:, None] & sm[None, :],
    )


@_autotune(
    [
        _cfg(4, 1, BLOCK=512),
        _cfg(4, 1, BLOCK=256),
        _cfg(8, 1, BLOCK=1024),
    ],
    key=["HW"],
)
@triton.jit
def _gather_kernel(y_ptr, u_ptr, v_ptr, ri_ptr, rr_ptr, ci_ptr, cr_ptr, out_ptr, C, HS, WS, W, HW, BLOCK: tl.constexpr):
    """out[b, o, i, j] = y[b, o, ri[i], ci[j]] + rr[i] u[o] + cr[j] v[o]."""
    o, batch = tl.program_id(1), tl.program_id(2)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = p < HW
    row, col = p // W, p % W
    src = tl.load(ri_ptr + row, mask=pm, other=0) * WS + tl.load(ci_ptr + col, mask=pm, other=0)
    y = tl.load(y_ptr + _plane(batch, C, o, HS) + src, mask=pm, other=0.0).to(tl.float32)
    val = (
        y
        + tl.load(rr_ptr + row, mask=pm, other=0.0) * tl.load(u_ptr + o)
        + tl.load(cr_ptr + col, mask=pm, other=0.0) * tl.load(v_ptr + o)
    )
    tl.store(out_ptr + _plane(batch, C, o, HW) + p, val.to(out_ptr.dtype.element_ty), mask=pm)


def _precision(dtype: torch.dtype) -> str:
    """float32 products in IEEE precision, unless torch itself allows TF32 matmuls."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Every buffer the launchers write (tests poison it to prove the kernels cover it)."""
    return torch.empty(shape, device=like.device, dtype=like.dtype)


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
    tables: tuple[torch.Tensor, ...],
    relu: bool,
) -> torch.Tensor:
    """Fused per-target MLP; all tensors contiguous, x/shift/w1/w2 of one dtype (the caller's job)."""
    b, c, hs, ws = x.shape
    hidden = w1.shape[0]
    out_size = (tables[0].shape[0], tables[2].shape[0])
    out = _empty((b, c, *out_size), x)
    hw = out_size[0] * out_size[1]
    grid = lambda meta: (triton.cdiv(hw, meta["BLOCK_P"]), b)
    _mlp_kernel[grid](
        x,
        shift,
        a1,
        a2,
        bias,
        w1,
        b1,
        w2,
        b2,
        *tables,
        out,
        c,
        hs * ws,
        ws,
        out_size[1],
        hw,
        hidden,
        RELU=relu,
        HIDDEN_P=max(16, triton.next_power_of_2(hidden)),
        PRECISION=_precision(x.dtype),
    )
    return out


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
    tables: tuple[torch.Tensor, ...],
) -> torch.Tensor:
    """Fused refactored form for linear weights: modulate + C x C map, then gather + coordinate terms."""
    b, c, hs, ws = x.shape
    out_size = (tables[0].shape[0], tables[2].shape[0])
    y = _empty(tuple(x.shape), x)
    grid = lambda meta: (triton.cdiv(hs * ws, meta["BLOCK_S"]), triton.cdiv(c, meta["BLOCK_O"]), b)
    _map_kernel[grid](x, shift, a1, a2, bias, m.to(x.dtype), d, y, c, hs * ws, PRECISION=_precision(x.dtype))
    out = _empty((b, c, *out_size), x)
    hw = out_size[0] * out_size[1]
    grid = lambda meta: (triton.cdiv(hw, meta["BLOCK"]), c, b)
    _gather_kernel[grid](y, u, v, *tables, out, c, hs * ws, ws, out_size[1], hw)
    return out
