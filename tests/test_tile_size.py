"""The torch backend's automatic tile (idm_rt.tile_size): its cost model against FLOPs counted by torch, its
memory estimate against the bytes a call really holds, and the choice it makes from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import idm_rt
from idm_rt.tile_size import _LiveBytes, choose_tile, cost_per_pixel, peak_bytes, plan_cost

from .helpers import TINY, perturbed


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturbed(idm_rt.IDM(TINY, max_scale=4.0))


def _call(model, side: int, mode) -> None:
    x = torch.zeros(1, 3, side, side)
    with torch.no_grad():
        c = model.condition(x, torch.zeros(1))
        with mode:
            model.denoise(x, c, torch.full((1,), 0.5))


def test_the_cost_model_matches_the_counted_flops_at_other_sizes(model):
    """a + b * area FLOPs per pixel, with b from the attention's shapes and a from one 64x64 call, predicts
    what torch's FLOP counter counts for 32x32 and 128x128 calls (the attention's share grows with area) to
    0.1 %: the model leaves out the few FLOPs a call spends once whatever its size (the noise-level MLP)."""
    a, b = cost_per_pixel(model)
    assert b > 0
    for side in (32, 128):
        counter = FlopCounterMode(display=False)
        _call(model, side, counter)
        assert counter.get_total_flops() / side**2 == pytest.approx(a + b * side**2, rel=1e-3)


def test_the_memory_estimate_bounds_a_real_call(model):
    """The estimate holds what the call's tensors held at their peak, with its margin, and is not far above."""
    for side in (64, 160):
        live = _LiveBytes()
        _call(model, side, live)
        assert live.peak <= peak_bytes(model, side * side) <= 4 * live.peak


def test_the_choice_is_the_cheaper_plan_and_its_tiles_fit_the_budget(model):
    assert choose_tile(model, (120, 100), 2**40) is None  # smaller than the smallest tile worth a call
    size = (400, 300)
    free = choose_tile(model, size, 2**40)
    assert plan_cost(model, size, free) <= plan_cost(model, size, None)  # tiles only where they cost less
    budget = peak_bytes(model, 136 * 136)
    tile = choose_tile(model, size, budget)
    assert tile is not None and tile <= 136 and peak_bytes(model, tile * tile) <= budget
    assert choose_tile(model, size, budget) == tile  # size and budget decide it, nothing else


@pytest.mark.slow
def test_max_memory_bounds_the_tile_and_the_kept_conditionings(model, monkeypatch):
    """Half of max_memory for one tile's call, half for tile conditionings kept between steps: with a ceiling
    too small to keep any, every step computes them again."""
    calls = []
    condition = model.condition
    monkeypatch.setattr(model, "condition", lambda *a: calls.append(1) or condition(*a))
    image = np.zeros((40, 40, 3), np.uint8)
    kw = dict(scale=4, steps=3, seed=0, progress=False)
    budget = 2 * peak_bytes(model, 136 * 136)
    up = idm_rt.Upscaler(model, max_memory=budget, sampler="ddim", init="bicubic", init_level=0.9)
    tile = up.choose_tile((160, 160))
    assert tile is not None and peak_bytes(model, tile * tile) <= budget // 2
    tiles = len(idm_rt.tiling.TilePlan.for_image((160, 160), tile, model.config.size_multiple).tiles)
    up.upscale(image, **kw)
    kept = len(calls)
    assert kept == tiles  # each tile's conditioning computed once: they fit in half the budget
    calls.clear()
    tight = 2**21  # 2 MiB: the smallest tiles, nothing kept
    idm_rt.Upscaler(model, max_memory=tight, sampler="ddim", init="bicubic", init_level=0.9).upscale(image, **kw)
    assert len(calls) > 2 * kept
