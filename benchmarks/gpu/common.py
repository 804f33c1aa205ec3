"""What every gpu_check section shares: the run's settings and results (:class:`Run`), each variant isolated
and saved, timing (CUDA events on a GPU, wall time in a dry run), error measures, random inputs."""

from __future__ import annotations

import json
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import idm_rt
from benchmarks.common import TINY_CONFIG

from .tf32 import rel_max_err

START = time.perf_counter()
# Tolerances of the float16 and bfloat16 checks: rounding of those types (2^-11, 2^-8) over a few
# accumulations; the float32 checks use the derived TF32 budgets (:mod:`.tf32`) instead.
TOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2}
AUTOCAST_TOL = 5e-2  # a whole U-Net under fp16/bf16 autocast against float32: what it measures is recorded


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


@dataclass
class Run:
    """One section's view of the run: settings, the results dict (saved to ``path`` after every variant),
    and the deadline past which no variant starts."""

    path: Path
    results: dict
    section: str
    device: torch.device
    dry: bool
    preset: str
    size: int
    reps: int
    deadline: float  # time.monotonic() value
    quick: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def kernels(self) -> str:
        """The U-Net's kernel mode: the Triton kernels on a GPU; in a dry run the torch forms (the kernels'
        plumbing is the kernel sections', under the interpreter, whose bfloat16 tl.dot is wrong in Triton 3.9)."""
        return "torch" if self.dry else "auto"

    def config(self, preset: str | None = None) -> idm_rt.IDMConfig:
        return TINY_CONFIG if self.dry else idm_rt.preset(preset or self.preset)

    def model(self, preset: str | None = None) -> idm_rt.IDM:
        """The preset's network with seeded random weights, on the device, eval mode."""
        torch.manual_seed(0)
        return idm_rt.IDM(self.config(preset), max_scale=4.0).to(self.device).eval()

    def save(self) -> None:
        """The results, atomically (a reader or a killed run never leaves half a file)."""
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        tmp.replace(self.path)

    def variant(self, name: str, fn: Callable[[], Any], expected_s: float = 0.0) -> Any:
        """``fn()`` as one variant: an exception is recorded with its traceback and the section goes on; a
        variant expected to end past the deadline is recorded as skipped; the results are saved after it."""
        row = {"section": self.section, "variant": name}
        self.results.setdefault("variants", []).append(row)
        left = self.deadline - time.monotonic()
        if expected_s > left:
            row |= {"status": "skipped", "reason": f"expected {expected_s:.0f} s, {max(left, 0):.0f} s left"}
            log(f"skip {name}: {row['reason']}")
            self.save()
            return None
        start = time.perf_counter()
        try:
            out = fn()
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001 (any failure of one variant is its recorded result)
            out = None
            row |= {
                "status": "failed",
                "error": f"{type(e).__name__}: {e}"[:1000],
                "traceback": traceback.format_exc()[-6000:],
            }
            log(f"FAILED {name}: {type(e).__name__}: {e}")
        row["wall_s"] = round(time.perf_counter() - start, 2)
        self.save()
        return out

    def check(self, name: str, err: float, tol: float, **extra: Any) -> bool:
        ok = err < tol  # False for NaN
        self.results.setdefault("checks", []).append(
            {"section": self.section, "name": name, "rel_err": err, "tol": tol, "ok": ok, **extra}
        )
        log(f"{'ok  ' if ok else 'FAIL'} {name}: {err:.2e} (< {tol:.2e})")
        return ok

    def add(self, table: str, row: dict) -> None:
        self.results.setdefault(table, []).append(row)

    def median_ms(self, fn: Callable[[], object], reps: int | None = None, warmup: int = 2) -> float:
        """Median of ``reps`` CUDA-event intervals around ``fn`` (wall time off CUDA; a dry run calls it once)."""
        reps, warmup = (1, 0) if self.dry else (reps or self.reps, warmup)
        for _ in range(warmup):
            fn()
        if self.device.type != "cuda":
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(1e3 * (time.perf_counter() - t0))
            return statistics.median(times)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)


def layer_inputs(
    b: int, c: int, hs: int, ws: int, hidden: int, gen: torch.Generator, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Random float64 layer inputs in the checkpoint layout: x, shift, a1, a2, bias, w1, b1, w2, b2."""

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device)

    s1, s2 = randn(b, c), randn(b, c)
    norm = torch.sqrt(s1 * s1 + s2 * s2 + 1e-8)
    return [
        randn(b, c, hs, ws),
        randn(b, c, hs, ws),
        s1 / norm,
        s2 / norm,
        randn(c, scale=0.1),
        randn(hidden, c + 2, scale=(c + 2) ** -0.5),
        randn(hidden, scale=0.1),
        randn(c, hidden, scale=hidden**-0.5),
        randn(c, scale=0.1),
    ]


def conditioning(model: idm_rt.IDM, size: int) -> idm_rt.Conditioning:
    """The conditioning of a seeded random LR image at 4x, to ``size`` x ``size``."""
    gen = torch.Generator().manual_seed(size)
    lr = (torch.rand(1, 3, size // 4, size // 4, generator=gen) * 2 - 1).to(next(model.parameters()))
    with torch.no_grad():
        return model.condition(model.encode(lr, (size, size)), model.scale_fraction(4.0))


def release_style(model: idm_rt.IDM, on: bool, kernels: str = "auto") -> None:
    """The release's eager form (literal implicit MLP, no kernels) or ours (fast form, the kernels as
    ``kernels`` says, :attr:`Run.kernels`)."""
    model.set_implicit_form("literal" if on else "fast")
    model.set_kernels("torch" if on else kernels)


__all__ = ["Run", "log", "layer_inputs", "conditioning", "release_style", "rel_max_err", "TOL", "AUTOCAST_TOL"]
