"""The Triton implicit up-layer kernels, run on the CPU by Triton's interpreter, against the release's
literal form (idm_rt's query_literal, grid_sample and a per-pixel MLP) in float64; the dispatch rules.

TRITON_INTERPRET=1 is set for this test process before the kernels are first imported (Triton
decides at decoration time whether a kernel is interpreted).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"

from benchmarks.gpu.common import layer_inputs as gpu_layer_inputs
from idm_rt import kernels
from idm_rt.model.implicit import ImplicitUp, fold, modulate, query_literal, query_tables

from .helpers import TINY, perturbed

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
        out.append(
            (
                rng.randint(1, 3),
                rng.randint(32, 160),
                hs,
                ws,
                rng.randint(hs, int(3.3 * hs)),
                rng.randint(ws, int(3.3 * ws)),
                act,
                rng.choice(["mlp", "folded"]) if act is None else "mlp",
            )
        )
    return out


def layer_inputs(b: int, c: int, hs: int, ws: int, hidden: int = 256, seed: int = 0) -> list[torch.Tensor]:
    """Fresh float64 inputs in the checkpoint's layout (x, shift, a1, a2, bias, w1, b1, w2, b2), drawn as the GPU
    check draws them."""
    return gpu_layer_inputs(b, c, hs, ws, hidden, torch.Generator().manual_seed(seed))


def literal(inputs: list[torch.Tensor], size: tuple[int, int], act: str | None) -> torch.Tensor:
    """The oracle: the release's form of the layer (query_literal) on ``layer_inputs``, in float32 as the
    release computes it (its grid_sample ties at exact pixel borders are float32's), returned as float64."""
    x, shift, a1, a2, bias, w1, b1, w2, b2 = (t.float() for t in inputs)
    fc1, fc2 = (torch.nn.Linear(w.shape[1], w.shape[0]) for w in (w1, w2))
    with torch.no_grad():
        for fc, w, b in ((fc1, w1, b1), (fc2, w2, b2)):
            fc.weight.copy_(w)
            fc.bias.copy_(b)
        return query_literal(modulate(x, shift, a1, a2, bias), fc1, fc2, size, act == "relu").double()


def fused(form: str, inputs: list[torch.Tensor], size: tuple[int, int], act: str | None) -> torch.Tensor:
    """The kernels' ``form`` on ``layer_inputs``; the folded weights from idm_rt's :func:`fold`."""
    x, shift, a1, a2, bias, w1, b1, w2, b2 = inputs
    tables = query_tables(tuple(x.shape[-2:]), size)
    if form == "mlp":
        return kernels.mlp_upsample(x, shift, a1, a2, bias, w1, b1, w2, b2, tables, act == "relu")
    fc1, fc2 = (torch.nn.Linear(w.shape[1], w.shape[0]) for w in (w1, w2))
    with torch.no_grad():
        for fc, w, b in ((fc1, w1, b1), (fc2, w2, b2)):
            fc.weight.copy_(w.float())
            fc.bias.copy_(b.float())
    return kernels.folded_upsample(x, shift, a1, a2, bias, *fold(fc1, fc2), tables)


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


@needs_triton
@pytest.mark.parametrize("case", CASES + random_cases(6, seed=5), ids=str)
def test_triton_float32_matches_the_release_form(case, poisoned):
    b, c, hs, ws, hh, ww, act, form = case
    inputs = layer_inputs(b, c, hs, ws, seed=hash(case) % 2**31)
    ref = literal(inputs, (hh, ww), act)
    out = fused(form, [t.float() for t in inputs], (hh, ww), act)
    assert out.dtype == torch.float32 and out.shape == (b, c, hh, ww)
    assert rel_max_err(out, ref) < 1e-5


@needs_triton
@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("form,act", [("mlp", None), ("mlp", "relu"), ("folded", None)])
def test_every_autotune_config_is_correct(form, act, index, poisoned):
    """Each of the autotune configs a GPU may choose (block sizes, so masking at the edges differ), pinned in
    turn; the channels and pixels are no multiple of any block. The interpreter otherwise runs the first."""
    from idm_rt.kernels.triton_implicit import pinned_config

    b, c, hs, ws, hh, ww = 1, 40, 3, 4, 7, 9
    inputs = layer_inputs(b, c, hs, ws, hidden=48, seed=11)
    with pinned_config(index):
        out = fused(form, [t.float() for t in inputs], (hh, ww), act)
    assert rel_max_err(out, literal(inputs, (hh, ww), act)) < 1e-5


@needs_triton
@pytest.mark.parametrize("form,act", [("mlp", None), ("mlp", "relu"), ("folded", None)])
def test_triton_float16_accumulates_in_float32(form, act, poisoned):
    b, c, hs, ws, hh, ww = 2, 64, 5, 6, 9, 13
    inputs = layer_inputs(b, c, hs, ws, seed=7)
    ref = literal(inputs, (hh, ww), act)
    out = fused(form, [t.half() for t in inputs], (hh, ww), act)
    assert out.dtype == torch.float16
    assert rel_max_err(out, ref) < 1e-2


@needs_triton
@pytest.mark.parametrize("relu", [False, True])
def test_the_layer_sends_linear_weights_to_the_folded_kernel_and_relu_to_the_mlp(relu, monkeypatch):
    """Off CUDA the first form is taken without timing: folded for linear weights, which the per-pixel
    MLP computes too; with the paper's ReLU only the MLP can."""
    calls = []
    for name in ("mlp_upsample", "folded_upsample"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    torch.manual_seed(1)
    layer = ImplicitUp(32, 64, relu=relu)
    x, shift, a1, a2 = (t.float() for t in layer_inputs(1, 32, 3, 4, seed=2)[:4])
    with torch.no_grad():
        layer.kernels = "torch"
        want = layer(x, shift, a1, a2, (7, 9))
        layer.kernels = "triton"
        got = layer(x, shift, a1, a2, (7, 9))
    assert calls == ["mlp_upsample" if relu else "folded_upsample"]
    assert rel_max_err(got, want.double()) < 1e-5


def test_triton_refused_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inputs = [t.float() for t in layer_inputs(1, 32, 3, 3)]
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        fused("mlp", inputs, (6, 6), None)


@needs_triton
@pytest.mark.parametrize("relu", [False, True])
def test_model_with_triton_kernels_matches_torch(relu):
    """A whole U-Net call with ``set_kernels("triton")`` (interpreted) against ``"torch"``; ``"auto"``
    stays on the torch forms on the CPU, to the bit."""
    from dataclasses import replace

    import idm_rt

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


if kernels.triton_available():
    import triton
    import triton.language as tl

    from idm_rt.kernels.triton_implicit import _plane

    @triton.jit
    def _plane_probe(out_ptr, C, HW, N: tl.constexpr):
        """The last N planes of sample 2, as the kernels compute their offsets."""
        o = tl.arange(0, N)
        tl.store(out_ptr + o, _plane(tl.program_id(0) + 2, C, C - N + o, HW))


@needs_triton
def test_plane_offsets_do_not_wrap_past_int32():
    """The kernels' plane offsets ((batch x C + channel) x plane size) in int64: 3 samples of a 128-channel
    4096 x 4096 output put element offsets past 2^31, where int32 arithmetic wraps (it does under the
    interpreter as on a GPU). A probe kernel runs the kernels' own helper; the tensors themselves would
    take 24 GiB."""
    out = torch.zeros(4, dtype=torch.int64)
    c, hw = 128, 4096 * 4096
    _plane_probe[(1,)](out, c, hw, N=4)
    assert out.tolist() == [(2 * c + ch) * hw for ch in range(c - 4, c)]
    assert max(out.tolist()) > 2**32
