"""TF32 on a CPU, and the error budget of every float32 check of ``gpu_check`` derived from it.

On Ampere and later GPUs torch lets cuDNN convolutions use TF32 by default
(``torch.backends.cudnn.allow_tf32``; float32 matmuls not, ``torch.backends.cuda.matmul.allow_tf32``):
their inputs and weights keep 10 of float32's 23 mantissa bits, products accumulate in float32. So two
float32 computations of one function that agree to 1e-6 on a CPU are about 1e-3 apart on a GPU.

:class:`EmulateTF32` reproduces that on a CPU: the inputs of the operations a TF32 flag covers are
rounded to 10 mantissa bits (to nearest, or truncated as tensor cores may) before the float32
operation. A check compares two sides ``a`` and ``b``; on a GPU each differs from the exact result by
about what it does here under emulation, whatever the order of its sums, so

    budget = MARGIN x max over roundings (|a - exact| + |b - exact|)     (relative max errors)

with ``exact`` the reference side in float64. MARGIN (4) covers the GPU's other summation orders and
cuDNN's choice of algorithms; the emulated errors and the budget are recorded beside each check.
``python -m benchmarks.gpu.tf32`` writes the budgets of the default run to
``benchmarks/results/tf32_budget.json``; other presets and sizes are derived when gpu_check runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MARGIN = 4.0
ROUNDINGS = ("nearest", "truncate")
BUDGET_FILE = Path(__file__).resolve().parent.parent / "results" / "tf32_budget.json"
# torch's defaults on a GPU, which gpu_check sets explicitly and the budgets emulate
FLAGS = {"cudnn_allow_tf32": True, "matmul_allow_tf32": False}

_CONV = {F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d}
_MATMUL = {
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.Tensor.mm,
    torch.bmm,
    torch.Tensor.bmm,
    F.linear,
}
_MATMUL_ADD = {torch.addmm, torch.baddbmm}  # (bias, a, b): a and b are the products' inputs


def to_tf32(t: torch.Tensor, rounding: str) -> torch.Tensor:
    """A float32 tensor with 10 mantissa bits kept, rounded to nearest (ties away from zero) or truncated;
    other dtypes unchanged."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
        return t
    bits = t.contiguous().view(torch.int32)
    if rounding == "nearest":
        bits = bits + (1 << 12)  # half of the lowest kept bit; a carry into the exponent is correct rounding
    return (bits & ~((1 << 13) - 1)).view(torch.float32).view(t.shape)


class EmulateTF32(TorchFunctionMode):
    """Inside this mode, convolutions (``conv``) and matmuls (``matmul``) see their float32 inputs rounded
    to TF32 (:func:`to_tf32`), as cuDNN and cuBLAS do with the matching torch flag on."""

    def __init__(self, conv: bool, matmul: bool, rounding: str):
        super().__init__()
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, not {rounding!r}")
        self.conv, self.matmul, self.rounding = conv, matmul, rounding

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (self.conv and func in _CONV) or (self.matmul and func in _MATMUL):
            args = tuple(to_tf32(a, self.rounding) for a in args[:2]) + tuple(args[2:])
        elif self.matmul and func in _MATMUL_ADD:
            args = (args[0],) + tuple(to_tf32(a, self.rounding) for a in args[1:3]) + tuple(args[3:])
        return func(*args, **kwargs)


def rel_max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| in float64 (NaN if out has a NaN)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).abs().max() / ref.abs().max()).item()


def derive(
    a: Callable[[torch.dtype], torch.Tensor],
    b: Callable[[torch.dtype], torch.Tensor],
    exact: Callable[[], torch.Tensor],
    conv: bool | None = None,
    matmul: bool | None = None,
) -> dict:
    """The budget of a check of side ``a`` against side ``b``, each a function of its float dtype (built on
    the CPU), ``exact`` the reference in float64: the errors under each rounding and without TF32, and
    MARGIN x their worst sum. ``conv`` and ``matmul``: whether the sides' convolutions and matmuls take TF32
    on the GPU (default: torch's flags, :data:`FLAGS`; a stand-in for a Triton kernel follows the kernel)."""
    conv = FLAGS["cudnn_allow_tf32"] if conv is None else conv
    matmul = FLAGS["matmul_allow_tf32"] if matmul is None else matmul
    ref = exact()
    row = {"fp32": {"a": rel_max_err(a(torch.float32), ref), "b": rel_max_err(b(torch.float32), ref)}}
    for rounding in ROUNDINGS:
        with EmulateTF32(conv, matmul, rounding):
            row[rounding] = {"a": rel_max_err(a(torch.float32), ref), "b": rel_max_err(b(torch.float32), ref)}
    worst = max(r["a"] + r["b"] for r in row.values())
    return {
        "errors": row,
        "margin": MARGIN,
        "budget": MARGIN * worst,
        "flags": dict(FLAGS),
        "emulated": {"conv": conv, "matmul": matmul},
    }


def read_budgets(path: Path = BUDGET_FILE) -> dict[str, dict]:
    """The committed budgets by check id (empty when there is no file)."""
    try:
        return json.loads(path.read_text())["budgets"]
    except FileNotFoundError:
        return {}


def budget_for(check_id: str, derive_now: Callable[[], dict], budgets: dict[str, dict]) -> dict:
    """The budget of ``check_id``: from ``budgets`` (the committed file) when it holds one for the same
    flags, else derived now (on the CPU)."""
    found = budgets.get(check_id)
    if found is not None and found.get("flags") == FLAGS:
        return found | {"source": "benchmarks/results/tf32_budget.json"}
    return derive_now() | {"source": "derived in this run"}


@contextlib.contextmanager
def torch_flags(cudnn: bool, matmul: bool):
    """torch's TF32 flags set inside the block, restored after it."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def main(argv: list[str] | None = None) -> int:
    """Derive the budgets of gpu_check's default float32 checks on this CPU and write them."""
    from benchmarks.common import write

    from .kernels import kernel_budgets
    from .unet import unet_budgets

    ap = argparse.ArgumentParser(description="Derive the TF32 error budgets of gpu_check's float32 checks on a CPU")
    ap.add_argument("--preset", default="official")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps of the graphed-loop check")
    args = ap.parse_args(argv)
    budgets = kernel_budgets(quick=False) | unet_budgets(args.preset, args.size, args.steps)
    for name, b in budgets.items():
        print(f"{name}: budget {b['budget']:.2e}", flush=True)
    write("tf32_budget", {"margin": MARGIN, "flags": FLAGS, "budgets": budgets}, "gpu.tf32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
