"""The CUDA fast path's static-buffer logic, run eagerly on the CPU (``graphs=False``): the code that
the CUDA graphs capture, against ``IDM.denoise`` and the DDIM sampler. Capture itself needs a GPU
(benchmarks/gpu_check.py)."""

from __future__ import annotations

import pytest
import torch

import idm_rt
from idm_rt.cuda_graph import StaticDDIM, StaticDenoiser
from idm_rt.diffusion import LinearSchedule, ddim

from .helpers import rel_err


def conditioning(model, seed: int, size=(16, 16)):
    gen = torch.Generator().manual_seed(seed)
    lr = torch.rand(1, 3, size[0] // 4, size[1] // 4, generator=gen) * 2 - 1
    return model.condition(model.encode(lr, size), model.scale_fraction(4.0))


@torch.no_grad()
def test_denoiser_equals_model_denoise_across_tiles_and_shapes(tiny_model):
    """Alternating conditionings (tiles) and two shapes: every call is model.denoise on its own inputs."""
    fast = StaticDenoiser(tiny_model, graphs=False)
    conds = [conditioning(tiny_model, 0), conditioning(tiny_model, 1), conditioning(tiny_model, 2, (16, 24))]
    for step, c in enumerate(conds * 2):
        x = torch.randn(c.cond.shape)
        g = torch.tensor([0.3 + 0.1 * step])
        assert torch.equal(fast(x, c, g), tiny_model.denoise(x, c, g))
    assert len(fast._entries) == 2


@torch.no_grad()
def test_denoiser_bfloat16_autocast_is_close(tiny_model):
    c = conditioning(tiny_model, 0)
    x, g = torch.randn(c.cond.shape), torch.tensor([0.5])
    out = StaticDenoiser(tiny_model, autocast=torch.bfloat16, graphs=False)(x, c, g)
    assert out.dtype == torch.float32
    assert rel_err(out, tiny_model.denoise(x, c, g)) < 5e-2


@pytest.mark.slow
@pytest.mark.parametrize("steps", [3, 10])
@torch.no_grad()
def test_table_driven_ddim_equals_ddim(tiny_model, steps):
    """One step = U-Net + update read from on-device tables; same x_0 as the ddim sampler (eta = 0)."""
    sched = LinearSchedule()
    fast = StaticDDIM(tiny_model, graphs=False, schedule=sched)
    for seed in (0, 1):  # a second image reuses the static buffers and resets the step counter
        c = conditioning(tiny_model, seed)
        x_T = torch.randn(c.cond.shape, generator=torch.Generator().manual_seed(seed))
        want = ddim(lambda x, g: tiny_model.denoise(x, c, g), sched, x_T, steps)  # noqa: B023 (called at once)
        assert rel_err(fast(c, x_T, steps), want) < 1e-5


def test_graphs_refused_off_cuda(tiny_model):
    c = conditioning(tiny_model, 0)
    with pytest.raises(ValueError, match="CUDA"):
        StaticDenoiser(tiny_model, graphs=True)(torch.randn(c.cond.shape), c, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="autocast"):
        StaticDenoiser(tiny_model, autocast=torch.float64)


def test_graph_cache_is_bounded():
    cfg = idm_rt.IDMConfig(inner_channel=8, channel_multiplier=(1, 2), res_blocks=1, attn_levels=(1,), norm_groups=4,
                           encoder_blocks=1, encoder_feats=8, implicit_hidden=8)
    model = idm_rt.IDM(cfg).eval()
    den = StaticDenoiser(model, graphs=False)
    for n in range(4, 11):
        c = model.condition(torch.randn(1, 3, n, n), torch.tensor([0.5]))
        den(torch.randn(1, 3, n, n), c, torch.tensor([0.3]))
    assert len(den._entries) == StaticDenoiser.MAX_GRAPHS
