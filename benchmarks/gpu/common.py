"""What every GPU section shares: the device, logging, CUDA-event timing, error measures, random inputs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

import idm_rt

DEVICE = "cuda"
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}
START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    """Median of ``reps`` CUDA-event intervals around ``fn`` (one synchronisation at the end)."""
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def rel_max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, NaN if out has any NaN."""
    out, ref = out.double(), ref.double()
    return ((out - ref).abs().max() / ref.abs().max()).item()


def layer_inputs(b: int, c: int, hs: int, ws: int, device: str, gen: torch.Generator) -> list[torch.Tensor]:
    """Random float64 layer inputs in the checkpoint layout: x, shift, a1, a2, bias, w1, b1, w2, b2."""
    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device)

    s1, s2 = randn(b, c), randn(b, c)
    norm = torch.sqrt(s1 * s1 + s2 * s2 + 1e-8)
    return [randn(b, c, hs, ws), randn(b, c, hs, ws), s1 / norm, s2 / norm, randn(c, scale=0.1),
            randn(256, c + 2, scale=(c + 2) ** -0.5), randn(256, scale=0.1), randn(c, 256, scale=1 / 16),
            randn(c, scale=0.1)]


def check(results: dict, name: str, err: float, tol: float) -> None:
    ok = err < tol  # False for NaN
    results["checks"].append({"name": name, "rel_err": err, "tol": tol, "ok": ok})
    log(f"{'ok  ' if ok else 'FAIL'} {name}: {err:.2e} (< {tol:g})")


def make_model(preset: str) -> idm_rt.IDM:
    torch.manual_seed(0)
    return idm_rt.IDM(idm_rt.preset(preset)).to(DEVICE).eval()


def conditioning(model: idm_rt.IDM, size: int) -> idm_rt.Conditioning:
    gen = torch.Generator().manual_seed(size)
    lr = (torch.rand(1, 3, size // 4, size // 4, generator=gen) * 2 - 1).to(DEVICE)
    with torch.no_grad():
        return model.condition(model.encode(lr, (size, size)), model.scale_fraction(4.0))


def release_style(model: idm_rt.IDM, on: bool) -> None:
    """The release's eager form (literal implicit MLP, no kernels) or ours (fast form, kernels auto)."""
    model.set_implicit_form("literal" if on else "fast")
    model.set_kernels("torch" if on else "auto")


