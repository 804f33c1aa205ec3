"""The fused Triton kernels of the implicit layer on the GPU: correctness against the release's literal
form, and the time of every implicit level of a model against the torch forms."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

import idm_rt
from idm_rt import kernels
from idm_rt.model.implicit import ImplicitUp, fold, modulate, query_literal, query_tables

from .common import DEVICE, TOL, check, layer_inputs, log, median_ms, rel_max_err


def kernel_cases(quick: bool) -> list[tuple]:
    """(batch, channels, h, w, H', W', hidden_act, form, dtype): odd, non-square, non-2x, ties."""
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    cases = [
        (1, 128, 64, 64, 128, 128, None, "mlp", f32), (1, 512, 8, 8, 16, 16, None, "folded", f32),
        (2, 48, 5, 7, 11, 9, None, "mlp", f32), (3, 40, 3, 6, 10, 13, "relu", "mlp", f32),
        (2, 36, 4, 2, 14, 3, None, "folded", f32), (1, 512, 13, 9, 29, 31, "relu", "mlp", f32),
        (2, 256, 17, 23, 40, 41, None, "folded", f32), (1, 200, 33, 20, 70, 45, None, "mlp", f32),
        (2, 128, 32, 32, 64, 64, None, "mlp", f16), (2, 128, 32, 32, 64, 64, None, "folded", f16),
        (1, 96, 9, 11, 25, 20, "relu", "mlp", bf16), (1, 256, 16, 16, 32, 32, None, "folded", bf16),
    ]
    return cases[::2] if quick else cases


def _layer(inputs: list[torch.Tensor], relu: bool) -> ImplicitUp:
    """An implicit layer holding ``layer_inputs``' bias and weights (float32)."""
    _, _, _, _, bias, w1, b1, w2, b2 = inputs
    layer = ImplicitUp(w2.shape[0], w1.shape[0], relu).to(DEVICE)
    with torch.no_grad():
        for p, v in ((layer.bias, bias), (layer.fc1.weight, w1), (layer.fc1.bias, b1), (layer.fc2.weight, w2),
                     (layer.fc2.bias, b2)):
            p.copy_(v.float())
    return layer


def _fused(layer: ImplicitUp, x, shift, a1, a2, size: tuple[int, int], form: str) -> torch.Tensor:
    tables = query_tables(tuple(x.shape[-2:]), size, x.device)
    if form == "mlp":
        w = (layer.fc1.weight, layer.fc1.bias, layer.fc2.weight, layer.fc2.bias)
        return kernels.mlp_upsample(x, shift, a1, a2, layer.bias, *w, tables, layer.relu)
    return kernels.folded_upsample(x, shift, a1, a2, layer.bias, *fold(layer.fc1, layer.fc2), tables)


@torch.no_grad()
def check_kernels(results: dict, quick: bool) -> None:
    """The fused layer in each dtype against the release's literal form (float32) on the device."""
    gen = torch.Generator().manual_seed(0)
    for b, c, hs, ws, hh, ww, act, form, dtype in kernel_cases(quick):
        inputs = layer_inputs(b, c, hs, ws, DEVICE, gen)
        layer = _layer(inputs, act == "relu")
        x, shift, a1, a2 = (t.float() for t in inputs[:4])
        ref = query_literal(modulate(x, shift, a1, a2, layer.bias), layer.fc1, layer.fc2, (hh, ww), layer.relu)
        out = _fused(layer.to(dtype), *(t.to(dtype) for t in (x, shift, a1, a2)), (hh, ww), form)
        name = f"kernel {form} {act or 'linear'} {str(dtype)[6:]} B{b} C{c} {hs}x{ws}->{hh}x{ww}"
        check(results, name, rel_max_err(out, ref), TOL[dtype])


@torch.no_grad()
def time_levels(results: dict, model: idm_rt.IDM, size: int, reps: int) -> None:
    """Every implicit level of the model at ``size``: torch forms against the fused kernels (fp32, B=1)."""
    cfg = model.config
    gen = torch.Generator().manual_seed(size)
    for i in range(1, cfg.levels):
        c, src, dst = cfg.channels[i], size >> i, size >> (i - 1)
        layer = ImplicitUp(c, cfg.implicit_hidden, cfg.implicit_relu).to(DEVICE)
        x, shift, a1, a2 = (t.float() for t in layer_inputs(1, c, src, src, DEVICE, gen)[:4])
        act = "relu" if cfg.implicit_relu else None

        def run_layer(literal: bool, mode: str) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                layer.literal, layer.kernels = literal, mode
                return layer(x, shift, a1, a2, (dst, dst))
            return run

        def fused(form: str) -> Callable[[], torch.Tensor]:
            return lambda: _fused(layer, x, shift, a1, a2, (dst, dst), form)

        row = {"size": size, "level": i, "channels": c, "src": src, "dst": dst,
               "literal_torch_ms": median_ms(run_layer(True, "torch"), reps),
               "refactored_torch_ms": median_ms(run_layer(False, "torch"), reps),
               "fused_mlp_ms": median_ms(fused("mlp"), reps)}
        if act is None:
            row["fused_folded_ms"] = median_ms(fused("folded"), reps)
        row["fused_auto_ms"] = median_ms(run_layer(False, "triton"), reps)  # the layer's choice, measured
        row["speedup_vs_literal"] = row["literal_torch_ms"] / row["fused_auto_ms"]
        row["speedup_vs_refactored"] = row["refactored_torch_ms"] / row["fused_auto_ms"]
        results["levels"].append(row)
        log(f"level {i} @{size}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})}")


