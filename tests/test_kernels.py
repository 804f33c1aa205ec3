"""The Triton implicit up-layer kernels, run on the CPU by Triton's interpreter, against a float64
reference; the kernels' reference against idm_rt's release form; the dispatch rules.

TRITON_INTERPRET=1 is set for this test process before the kernels are first imported (Triton
decides at decoration time whether a kernel is interpreted).
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F

os.environ["TRITON_INTERPRET"] = "1"

from idm_rt import kernels  # noqa: E402
from idm_rt.kernels import reference  # noqa: E402
from idm_rt.model.implicit import ImplicitUp, modulate, query_literal  # noqa: E402

from .conftest import TINY, perturbed  # noqa: E402

needs_triton = pytest.mark.skipif(not kernels.triton_available(), reason="triton is not installed")

# (batch, channels, source h, w, target H', W', hidden_act, form): odd and non-square sizes,
# ratios that are not 2 (below 1 too), channels not a multiple of any block, up to 512.
CASES = [
    (1, 32, 4, 4, 8, 8, None, "mlp"),
    (2, 36, 4, 2, 14, 3, None, "mlp"),  # targets exactly on source pixel borders (grid_sample's ties)
    (2, 48, 5, 7, 11, 9, None, "mlp"),
    (3, 40, 3, 6, 10, 13, "relu", "mlp"),
    (2, 33, 9, 8, 5, 3, "relu", "mlp"),
    (1, 512, 3, 4, 7, 9, None, "mlp"),
    (1, 512, 4, 3, 9, 5, "relu", "mlp"),
    (2, 96, 6, 5, 7, 17, None, "folded"),
    (3, 200, 5, 5, 16, 12, None, "folded"),
    (1, 72, 7, 4, 7, 4, None, "folded"),
    (1, 512, 3, 3, 10, 7, None, "folded"),
]


def random_cases(n: int, seed: int) -> list[tuple]:
    """More cases drawn at random: batch 1-3, channels 32-160, source 2-8 px, target 1x-3.3x per axis."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        hs, ws = rng.randint(2, 8), rng.randint(2, 8)
        act = rng.choice([None, "relu"])
        out.append((rng.randint(1, 3), rng.randint(32, 160), hs, ws, rng.randint(hs, int(3.3 * hs)),
                    rng.randint(ws, int(3.3 * ws)), act, rng.choice(["mlp", "folded"]) if act is None else "mlp"))
    return out


def layer_inputs(b: int, c: int, hs: int, ws: int, hidden: int = 256, seed: int = 0) -> list[torch.Tensor]:
    """Fresh float64 inputs in the checkpoint's layout: x, shift, a1, a2, bias, w1, b1, w2, b2."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    s1, s2 = randn(b, c), randn(b, c)
    norm = torch.sqrt(s1 * s1 + s2 * s2 + 1e-8)
    return [randn(b, c, hs, ws), randn(b, c, hs, ws), s1 / norm, s2 / norm, randn(c, scale=0.1),
            randn(hidden, c + 2, scale=(c + 2) ** -0.5), randn(hidden, scale=0.1), randn(c, hidden, scale=hidden ** -0.5),
            randn(c, scale=0.1)]


def rel_max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (NaN anywhere in out gives NaN, which fails every comparison)."""
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the Triton launchers allocate starts as NaN, so an unwritten element shows."""
    from idm_rt.kernels import triton_implicit

    def nan_empty(shape, like):
        return torch.full(shape, float("nan"), device=like.device, dtype=like.dtype)

    monkeypatch.setattr(triton_implicit, "_empty", nan_empty)


def test_centres_are_pixel_centres():
    for n in (1, 2, 3, 7, 14, 255):
        want = -1.0 + (2 * torch.arange(n, dtype=torch.float64) + 1) / n
        assert torch.allclose(reference.centres(n).double(), want, atol=1e-6)


def test_axis_table_is_grid_sample_nearest():
    """For every (source, target) size up to 40 x 80 (exact ties included, e.g. 4 -> 14), the index
    is grid_sample's nearest pick at the clamped centres and rel is (target - source centre) n_src."""
    for n_src in range(1, 41):
        img = torch.arange(n_src, dtype=torch.float32).view(1, 1, 1, n_src)
        src_centres = -1.0 + (2 * torch.arange(n_src, dtype=torch.float64) + 1) / n_src
        for n_dst in range(1, 81):
            q = reference.centres(n_dst)
            grid = torch.zeros(1, 1, n_dst, 2)
            grid[0, 0, :, 0] = q.clamp(-1 + 1e-6, 1 - 1e-6)
            want = F.grid_sample(img, grid, mode="nearest", align_corners=False).view(-1).long()
            idx, rel = reference.axis_table(n_src, n_dst)
            assert torch.equal(idx.long(), want), (n_src, n_dst)
            assert torch.allclose(rel.double(), (q.double() - src_centres[want]) * n_src, atol=1e-5), (n_src, n_dst)


@pytest.mark.parametrize("case", CASES[:5] + CASES[7:9])
def test_reference_equals_idm_rt_release_form(case):
    """The kernels' plain-torch reference and idm_rt's query_literal (grid_sample, the release's way)
    are independent implementations of one function."""
    b, c, hs, ws, hh, ww, act, _ = case
    torch.manual_seed(hs * 100 + ww)
    layer = ImplicitUp(c, 256, relu=act == "relu")
    x, shift, a1, a2, bias = (t.float() for t in layer_inputs(b, c, hs, ws, seed=c)[:5])
    with torch.no_grad():
        layer.bias.copy_(bias)
        want = query_literal(modulate(x, shift, a1, a2, layer.bias), layer.fc1, layer.fc2, (hh, ww), act == "relu")
        got = reference.per_target_mlp(x, shift, a1, a2, layer.bias, layer.fc1.weight, layer.fc1.bias,
                                       layer.fc2.weight, layer.fc2.bias, (hh, ww), act)
    assert rel_max_err(got, want.double()) < 1e-5


@pytest.mark.parametrize("form", ["mlp", "folded"])
def test_torch_backend_matches_float64_reference(form):
    for i, (b, c, hs, ws, hh, ww, act, _) in enumerate(CASES[:7]):
        if form == "folded" and act is not None:
            continue
        inputs = layer_inputs(b, c, hs, ws, seed=i)
        ref = reference.per_target_mlp(*inputs, (hh, ww), act)
        out = kernels.implicit_upsample(*(t.float() for t in inputs), (hh, ww), act, backend="torch", form=form)
        assert out.dtype == torch.float32 and out.shape == (b, c, hh, ww)
        assert rel_max_err(out, ref) < 1e-5, (form, i)


@needs_triton
@pytest.mark.parametrize("case", CASES + random_cases(6, seed=5), ids=str)
def test_triton_float32_matches_reference(case, poisoned):
    b, c, hs, ws, hh, ww, act, form = case
    inputs = layer_inputs(b, c, hs, ws, seed=hash(case) % 2**31)
    ref = reference.per_target_mlp(*inputs, (hh, ww), act)
    out = kernels.implicit_upsample(*(t.float() for t in inputs), (hh, ww), act, backend="triton", form=form)
    assert out.dtype == torch.float32 and out.shape == (b, c, hh, ww)
    assert rel_max_err(out, ref) < 1e-5


@needs_triton
@pytest.mark.parametrize("form,act", [("mlp", None), ("mlp", "relu"), ("folded", None)])
def test_triton_float16_accumulates_in_float32(form, act, poisoned):
    b, c, hs, ws, hh, ww = 2, 64, 5, 6, 9, 13
    inputs = layer_inputs(b, c, hs, ws, seed=7)
    ref = reference.per_target_mlp(*inputs, (hh, ww), act)
    half = [t.half() for t in inputs]
    out = kernels.implicit_upsample(*half, (hh, ww), act, backend="triton", form=form)
    assert out.dtype == torch.float16
    assert rel_max_err(out, ref) < 1e-2


@pytest.mark.skip(reason="Triton's interpreter multiplies bfloat16 tl.dot operands as raw uint16; "
                         "bfloat16 is checked on the GPU by benchmarks/gpu_check.py")
def test_triton_bfloat16():
    """Placeholder naming the gap, kept so the skip shows in every run."""


@needs_triton
def test_auto_dispatch_runs_triton_under_interpreter(poisoned, monkeypatch):
    """backend="auto" on CPU tensors takes the interpreted kernels (NaN buffers would show otherwise
    only if the torch path were taken: so check the launcher was called)."""
    from idm_rt.kernels import triton_implicit

    calls = []
    monkeypatch.setattr(triton_implicit, "folded_upsample",
                        lambda *a, **k: calls.append(1) or reference.folded_linear(*a, **k))
    inputs = [t.float() for t in layer_inputs(1, 32, 3, 3, seed=3)]
    kernels.implicit_upsample(*inputs, (6, 6))
    assert calls == [1]


def test_triton_refused_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inputs = [t.float() for t in layer_inputs(1, 32, 3, 3)]
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.implicit_upsample(*inputs, (6, 6), backend="triton")


@pytest.mark.parametrize("kwargs", [dict(hidden_act="gelu"), dict(backend="cuda"), dict(form="fast"),
                                    dict(hidden_act="relu", form="folded")])
def test_bad_arguments_are_refused(kwargs):
    inputs = [t.float() for t in layer_inputs(1, 32, 3, 3)]
    with pytest.raises(ValueError):
        kernels.implicit_upsample(*inputs, (6, 6), **kwargs)


@needs_triton
@pytest.mark.parametrize("relu", [False, True])
def test_model_with_triton_kernels_matches_torch(relu):
    """A whole U-Net call with ``set_kernels("triton")`` (interpreted) against ``"torch"``; ``"auto"``
    stays on the torch forms on the CPU, to the bit."""
    import idm_rt
    from dataclasses import replace

    torch.manual_seed(0)
    model = perturbed(idm_rt.IDM(replace(TINY, implicit_relu=relu)))
    lr = torch.rand(1, 3, 4, 6) * 2 - 1
    with torch.no_grad():
        cond = model.condition(model.encode(lr, (16, 24)), model.scale_fraction(4.0))
        x, g = torch.randn(1, 3, 16, 24), torch.tensor([0.7])
        model.set_kernels("torch")
        want = model.denoise(x, cond, g)
        model.set_kernels("auto")
        assert torch.equal(model.denoise(x, cond, g), want)
        model.set_kernels("triton")
        got = model.denoise(x, cond, g)
    assert rel_max_err(got, want.double()) < 1e-5
    with pytest.raises(ValueError):
        model.set_kernels("cuda")
