"""Fused kernels for IDM's implicit up-layer, with plain-torch references beside them.

:func:`implicit_upsample` takes the fastest correct path for the device: the Triton kernels on
CUDA, Triton's interpreter on CPU tensors when ``TRITON_INTERPRET=1``, plain torch otherwise.
Importing this package never requires Triton.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache

import torch

from . import reference

BACKENDS = ("auto", "triton", "torch")
FORMS = ("auto", "mlp", "folded")
_form_choice: dict[tuple, str] = {}


@cache
def triton_available() -> bool:
    """Whether Triton is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run on tensors of ``device``: CUDA, or CPU under the interpreter."""
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    return triton_available() and (device.type == "cuda" or (interpreting and device.type == "cpu"))


def _check(hidden_act: str | None, backend: str, form: str) -> None:
    if hidden_act not in (None, "relu"):
        raise ValueError(f"hidden_act must be None or 'relu', not {hidden_act!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if form == "folded" and hidden_act is not None:
        raise ValueError("the folded form needs linear weights (hidden_act=None)")


def _measured_form(key: tuple, run_mlp, run_folded) -> str:
    """On CUDA, time both fused forms once per shape and keep the faster (never while capturing a graph)."""
    if key not in _form_choice:
        if key[0].type != "cuda" or torch.cuda.is_current_stream_capturing():
            return "folded"
        from triton.testing import do_bench

        _form_choice[key] = "mlp" if do_bench(run_mlp) < do_bench(run_folded) else "folded"
    return _form_choice[key]


def implicit_upsample(x: torch.Tensor, shift: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor,
                      bias: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                      out_size: tuple[int, int], hidden_act: str | None = None, *, backend: str = "auto",
                      form: str = "auto") -> torch.Tensor:
    """Modulate ``x`` with (shift, a1, a2, bias) and query it at every pixel centre of ``out_size``.

    Args:
        x, shift: (B, C, h, w) feature and LR shift (float32, float16 or bfloat16).
        a1, a2: (B, C) normalised scale vectors; bias: (C,) FusedLeakyReLU bias.
        w1, b1: (hidden, C+2), (hidden,) first Linear; w2, b2: (C, hidden), (C,) second Linear.
        out_size: target (H', W').
        hidden_act: None (the released weights) or ``"relu"`` (the paper's variant).
        backend: ``"auto"`` (Triton where it runs), ``"triton"`` (raise where it does not), ``"torch"``.
        form: ``"mlp"`` (per-target MLP), ``"folded"`` (linear weights only) or ``"auto"``
            (folded in torch; on CUDA the faster fused form, measured once per shape).

    Returns:
        (B, C, H', W') in x's dtype.
    """
    _check(hidden_act, backend, form)
    out_size = (int(out_size[0]), int(out_size[1]))
    use_triton = backend == "triton" or (backend == "auto" and triton_runs_on(x.device))
    if use_triton and not triton_runs_on(x.device):
        raise RuntimeError(f"the Triton kernels need CUDA tensors or TRITON_INTERPRET=1 (got {x.device}), "
                           "and Triton installed")
    if not use_triton:
        if hidden_act is None and form != "mlp":
            return reference.folded_linear(x, shift, a1, a2, bias, w1, b1, w2, b2, out_size)
        return reference.per_target_mlp(x, shift, a1, a2, bias, w1, b1, w2, b2, out_size, hidden_act)

    from . import triton_implicit as ti

    x, shift, a1, a2, bias, b1, b2 = (t.contiguous() for t in (x, shift, a1, a2, bias, b1, b2))
    w1, w2 = w1.to(x.dtype).contiguous(), w2.to(x.dtype).contiguous()  # the GEMMs run in x's dtype

    def run_mlp() -> torch.Tensor:
        return ti.mlp_upsample(x, shift, a1, a2, bias, w1, b1, w2, b2, out_size, hidden_act == "relu")

    def run_folded() -> torch.Tensor:
        return ti.folded_upsample(x, shift, a1, a2, bias, w1, b1, w2, b2, out_size)

    if hidden_act is not None or form == "mlp":
        return run_mlp()
    if form == "auto":
        key = (x.device, x.dtype, tuple(x.shape), out_size, w1.shape[0])
        form = _measured_form(key, run_mlp, run_folded)
    return run_folded() if form == "folded" else run_mlp()


__all__ = ["implicit_upsample", "triton_available", "triton_runs_on", "reference", "BACKENDS", "FORMS"]
