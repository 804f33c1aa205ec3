"""The fused Triton kernels of the implicit layer: correctness on the device against the release's literal
form (every autotune config in turn, no tuning), and the time of every implicit level against the torch forms."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch

from idm_rt import kernels
from idm_rt.model.implicit import (
    ImplicitUp,
    fold,
    modulate,
    nearest_query,
    pixel_centres,
    query_fast,
    query_literal,
    query_tables,
)

from .common import TOL, Run, layer_inputs, log, rel_max_err
from .tf32 import FLAGS, budget_for, derive, read_budgets

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# (batch, channels, h, w, H', W', hidden_act, form, dtype): odd, non-square, non-2x, ties, up to 512 channels
CASES = [
    (1, 128, 64, 64, 128, 128, None, "mlp", F32),
    (1, 512, 8, 8, 16, 16, None, "folded", F32),
    (2, 48, 5, 7, 11, 9, None, "mlp", F32),
    (3, 40, 3, 6, 10, 13, "relu", "mlp", F32),
    (2, 36, 4, 2, 14, 3, None, "folded", F32),
    (1, 512, 13, 9, 29, 31, "relu", "mlp", F32),
    (2, 256, 17, 23, 40, 41, None, "folded", F32),
    (1, 200, 33, 20, 70, 45, None, "mlp", F32),
    (2, 128, 32, 32, 64, 64, None, "mlp", F16),
    (2, 128, 32, 32, 64, 64, None, "folded", F16),
    (1, 96, 9, 11, 25, 20, "relu", "mlp", BF16),
    (1, 256, 16, 16, 32, 32, None, "folded", BF16),
]
# a dry run's: no bfloat16, whose tl.dot Triton 3.9's interpreter gets wrong (errors of 1e9 in any kernel)
DRY_CASES = [
    (1, 40, 3, 4, 7, 9, None, "mlp", F32),
    (1, 24, 4, 2, 9, 5, None, "folded", F16),
    (2, 20, 3, 3, 7, 6, "relu", "mlp", F32),
]
DRY_HIDDEN = 16


def kernel_cases(dry: bool, quick: bool) -> list[tuple]:
    return DRY_CASES if dry else CASES[::2] if quick else CASES


def case_id(case: tuple) -> str:
    b, c, hs, ws, hh, ww, act, form, dtype = case
    return f"kernel {form} {act or 'linear'} {str(dtype)[6:]} B{b} C{c} {hs}x{ws}->{hh}x{ww}"


def _generator(name: str) -> torch.Generator:
    """A generator seeded by the case's name, the same in every process (unlike hash())."""
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def _linear(w: torch.Tensor, b: torch.Tensor) -> torch.nn.Linear:
    fc = torch.nn.Linear(w.shape[1], w.shape[0]).to(w)
    with torch.no_grad():
        fc.weight.copy_(w)
        fc.bias.copy_(b)
    return fc


def _layer_form(
    inputs: list[torch.Tensor], size: tuple[int, int], relu: bool, form: str, dtype: torch.dtype
) -> torch.Tensor:
    """The layer in torch, in ``dtype``: the literal form (what the mlp kernel computes, per target pixel)
    or the fast form (the folded kernel's algebra)."""
    x, shift, a1, a2, bias, w1, b1, w2, b2 = (t.to(dtype) for t in inputs)
    fc1, fc2 = _linear(w1, b1), _linear(w2, b2)
    query = query_literal if form == "literal" else query_fast
    with torch.no_grad():
        return query(modulate(x, shift, a1, a2, bias), fc1, fc2, size, relu)


def _exact(inputs: list[torch.Tensor], size: tuple[int, int], relu: bool) -> torch.Tensor:
    """The layer in float64 per target pixel, each on the source pixel the release's float32 grid_sample picks
    (a target on a source border is a tie that float64 coordinates would break the other way)."""
    x, shift, a1, a2, bias, w1, b1, w2, b2 = (t.double() for t in inputs)
    h = modulate(x, shift, a1, a2, bias)
    (ri, _), (ci, _) = nearest_query(h.shape[-2], size[0]), nearest_query(h.shape[-1], size[1])
    rel_r = (pixel_centres(size[0]).double() - pixel_centres(h.shape[-2]).double()[ri]) * h.shape[-2]
    rel_c = (pixel_centres(size[1]).double() - pixel_centres(h.shape[-1]).double()[ci]) * h.shape[-1]
    q = h[:, :, ri][:, :, :, ci].permute(0, 2, 3, 1)  # (B, H', W', C)
    rel = torch.stack(torch.broadcast_tensors(rel_r[:, None], rel_c[None, :]), -1).expand(q.shape[0], -1, -1, -1)
    hidden = torch.cat([q, rel], -1) @ w1.T + b1
    out = (hidden.clamp(min=0) if relu else hidden) @ w2.T + b2
    return out.permute(0, 3, 1, 2)


def derive_case(case: tuple, hidden: int = 256) -> dict:
    """The float32 budget of one kernel case (on the CPU, the case's seeded inputs): the kernel's side by
    its torch stand-in (mlp: the literal form; folded: the fast form), against the literal form, both against
    :func:`_exact`. The kernels' products take TF32 only when torch's matmul flag allows it, and so do the
    stand-ins' here (their 1x1 convolutions included)."""
    b, c, hs, ws, hh, ww, act, form, _ = case
    inputs = layer_inputs(b, c, hs, ws, hidden, _generator(case_id(case)))
    relu, size = act == "relu", (hh, ww)
    side = "literal" if form == "mlp" else "fast"
    matmul = FLAGS["matmul_allow_tf32"]
    return derive(
        lambda d: _layer_form(inputs, size, relu, side, d),
        lambda d: _layer_form(inputs, size, relu, "literal", d),
        lambda: _exact(inputs, size, relu),
        conv=matmul,
        matmul=matmul,
    )


def kernel_budgets(quick: bool) -> dict[str, dict]:
    """Budgets of the float32 kernel cases of a GPU run (for benchmarks/results/tf32_budget.json)."""
    return {case_id(c): derive_case(c) for c in kernel_cases(False, quick) if c[-1] == F32}


def _fused(layer: ImplicitUp, x, shift, a1, a2, size: tuple[int, int], form: str) -> torch.Tensor:
    tables = query_tables(tuple(x.shape[-2:]), size, x.device)
    if form == "mlp":
        w = (layer.fc1.weight, layer.fc1.bias, layer.fc2.weight, layer.fc2.bias)
        return kernels.mlp_upsample(x, shift, a1, a2, layer.bias, *w, tables, layer.relu)
    return kernels.folded_upsample(x, shift, a1, a2, layer.bias, *fold(layer.fc1, layer.fc2), tables)


def _layer(inputs: list[torch.Tensor], relu: bool, device: torch.device) -> ImplicitUp:
    """An implicit layer holding ``layer_inputs``' bias and weights (float32)."""
    _, _, _, _, bias, w1, b1, w2, b2 = inputs
    layer = ImplicitUp(w2.shape[0], w1.shape[0], relu).to(device)
    with torch.no_grad():
        for p, v in (
            (layer.bias, bias),
            (layer.fc1.weight, w1),
            (layer.fc1.bias, b1),
            (layer.fc2.weight, w2),
            (layer.fc2.bias, b2),
        ):
            p.copy_(v.float())
    return layer


def pinned(index: int):
    """Autotune config ``index`` for every kernel (no tuning; see triton_implicit.pinned_config)."""
    from idm_rt.kernels.triton_implicit import pinned_config

    return pinned_config(index)


@torch.no_grad()
def check_case(run: Run, index: int, case: tuple, budgets: dict) -> None:
    """One case on the device, the kernels on autotune config ``index``, against the literal form in float32
    there; a float32 case within its derived budget, float16 and bfloat16 within their rounding."""
    b, c, hs, ws, hh, ww, act, form, dtype = case
    hidden = DRY_HIDDEN if run.dry else 256
    name = case_id(case)
    inputs = layer_inputs(b, c, hs, ws, hidden, _generator(name), run.device)
    layer = _layer(inputs, act == "relu", run.device)
    x, shift, a1, a2 = (t.float() for t in inputs[:4])
    ref = query_literal(modulate(x, shift, a1, a2, layer.bias), layer.fc1, layer.fc2, (hh, ww), layer.relu)
    with pinned(index):
        out = _fused(layer.to(dtype), *(t.to(dtype) for t in (x, shift, a1, a2)), (hh, ww), form)
    if dtype == F32:
        budget = budget_for(name, lambda: derive_case(case, hidden), budgets)
        run.check(f"{name} (config {index})", rel_max_err(out, ref), budget["budget"], budget=budget)
    else:
        run.check(f"{name} (config {index})", rel_max_err(out, ref), TOL[dtype])


def check_kernels(run: Run) -> None:
    """Every case, case i on autotune config i (so every config is checked across the cases)."""
    budgets = {} if run.dry else read_budgets()
    for i, case in enumerate(kernel_cases(run.dry, run.quick)):
        run.variant(case_id(case), lambda: check_case(run, i, case, budgets), expected_s=3.0)


@torch.no_grad()
def time_level(run: Run, model, i: int, size: int) -> None:
    """Implicit level ``i`` of the model at ``size``: torch forms against the fused kernels (fp32, B=1)."""
    cfg = model.config
    gen = torch.Generator().manual_seed(size)
    c, src, dst = cfg.channels[i], -(-size // 2**i), -(-size // 2 ** (i - 1))
    layer = ImplicitUp(c, cfg.implicit_hidden, cfg.implicit_relu).to(run.device)
    x, shift, a1, a2 = (t.float() for t in layer_inputs(1, c, src, src, cfg.implicit_hidden, gen, run.device)[:4])
    fused_mode = "triton" if run.dry else "auto"

    def run_layer(literal: bool, mode: str) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            layer.literal, layer.kernels = literal, mode
            return layer(x, shift, a1, a2, (dst, dst))

        return call

    row = {
        "size": size,
        "level": i,
        "channels": c,
        "src": src,
        "dst": dst,
        "literal_torch_ms": run.median_ms(run_layer(True, "torch")),
        "refactored_torch_ms": run.median_ms(run_layer(False, "torch")),
        "fused_mlp_ms": run.median_ms(lambda: _fused(layer, x, shift, a1, a2, (dst, dst), "mlp")),
    }
    if not cfg.implicit_relu:
        row["fused_folded_ms"] = run.median_ms(lambda: _fused(layer, x, shift, a1, a2, (dst, dst), "folded"))
    row["fused_auto_ms"] = run.median_ms(run_layer(False, fused_mode))  # the layer's own choice, measured
    row["speedup_vs_literal"] = row["literal_torch_ms"] / row["fused_auto_ms"]
    row["speedup_vs_refactored"] = row["refactored_torch_ms"] / row["fused_auto_ms"]
    run.add("levels", row)
    log(f"level {i} @{size}: fused {row['fused_auto_ms']:.3f} ms, {row['speedup_vs_literal']:.2f}x the literal form")


def time_levels(run: Run) -> None:
    model = run.model()
    sizes = (run.size,) if run.dry or run.quick else (run.size, 2 * run.size)
    for size in sizes:
        for i in range(1, model.config.levels):
            run.variant(f"level {i} at {size}", lambda: time_level(run, model, i, size), expected_s=2.0)
