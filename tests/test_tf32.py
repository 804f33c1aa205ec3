"""TF32 emulated on the CPU (benchmarks/gpu/tf32.py), from which gpu_check's float32 budgets are derived:
the rounding itself against an independent computation, which operations it touches, and that it moves a
tiny U-Net's two implicit forms apart by orders of magnitude more than float32 does."""

import math
import random

import torch
import torch.nn.functional as F

from benchmarks.gpu.tf32 import EmulateTF32, derive, rel_max_err, to_tf32


def reference(x: float, rounding: str) -> float:
    """x with 11 significant bits (TF32's 10 stored + the implicit one), by frexp."""
    if x == 0:
        return 0.0
    m, e = math.frexp(abs(x))  # 0.5 <= m < 1
    scaled = m * 2**11
    kept = math.floor(scaled + 0.5) if rounding == "nearest" else math.floor(scaled)
    return math.copysign(kept / 2**11 * 2**e, x)


def test_rounding_keeps_ten_mantissa_bits():
    rng = random.Random(0)
    values = [rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30) for _ in range(2000)] + [1 + 2**-11, 1 - 2**-12, 0.0]
    x = torch.tensor(values, dtype=torch.float32)
    for rounding in ("nearest", "truncate"):
        got = to_tf32(x, rounding).tolist()
        assert got == [reference(v, rounding) for v in x.tolist()]
    assert to_tf32(x.double(), "nearest").dtype == torch.float64  # other dtypes pass unchanged


def test_emulation_rounds_the_inputs_of_the_operations_its_flags_cover():
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 8, 6, 6, generator=gen), torch.randn(4, 8, 3, 3, generator=gen)
    a, b = torch.randn(5, 7, generator=gen), torch.randn(7, 3, generator=gen)
    with EmulateTF32(conv=True, matmul=False, rounding="truncate"):
        conv, mm = F.conv2d(x, w), a @ b
    assert torch.equal(conv, F.conv2d(to_tf32(x, "truncate"), to_tf32(w, "truncate")))
    assert torch.equal(mm, a @ b) and not torch.equal(conv, F.conv2d(x, w))
    with EmulateTF32(conv=False, matmul=True, rounding="nearest"):
        assert torch.equal(torch.nn.functional.linear(a, b.T), to_tf32(a, "nearest") @ to_tf32(b.T, "nearest").T)


def test_tf32_moves_the_unets_two_forms_apart_and_the_budget_covers_it(tiny_model):
    """What broke gpu_check's fixed 1e-4 on a GPU: the fast and literal implicit forms agree to float32
    rounding without TF32, and by far less with it; the derived budget bounds their emulated difference."""
    torch.manual_seed(1)
    cond = torch.rand(1, 3, 16, 16) * 2 - 1
    x, g = torch.randn(1, 3, 16, 16), torch.tensor([0.6])

    def side(literal: bool):
        def run(dtype):
            net = tiny_model.to(dtype)
            net.set_implicit_form("literal" if literal else "fast")
            with torch.no_grad():
                out = net.denoise(
                    x.to(dtype), net.condition(cond.to(dtype), torch.tensor([0.5], dtype=dtype)), g.to(dtype)
                )
            tiny_model.float()
            return out

        return run

    budget = derive(side(False), side(True), lambda: side(True)(torch.float64))
    errs = budget["errors"]
    assert errs["fp32"]["a"] < 1e-5 and errs["fp32"]["b"] < 1e-5
    assert min(errs["nearest"]["a"], errs["truncate"]["a"]) > 30 * errs["fp32"]["a"]
    with EmulateTF32(conv=True, matmul=False, rounding="truncate"):
        apart = rel_max_err(side(False)(torch.float32), side(True)(torch.float32))
    assert errs["fp32"]["a"] < apart < budget["budget"]
