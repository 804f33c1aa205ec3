"""Tiling (idm_rt.tiling): tiles cover the image with positive blending weights, and the blended tiled
prediction equals the untiled one for a network that looks at one pixel at a time."""

from __future__ import annotations

import pytest
import torch

from idm_rt.model import Conditioning
from idm_rt.tiling import TilePlan, tiled_eps


def test_tiles_cover_the_image_with_positive_weights():
    plan = TilePlan.for_image((70, 100), 32, multiple=8)
    cover = torch.zeros(70, 100)
    for t, l, h, w in plan.tiles:
        assert 0 <= t and t + h <= 70 and 0 <= l and l + w <= 100 and (h, w) == (32, 32)
        cover[t : t + h, l : l + w] += torch.from_numpy(plan.weight((t, l, h, w)))
    assert cover.min() > 0
    assert TilePlan.for_image((70, 100), 30, multiple=8) == TilePlan.for_image((70, 100), 24, multiple=8)
    with pytest.raises(ValueError, match="at least 16"):
        TilePlan.for_image((70, 100), 12, multiple=8)


class Pointwise(torch.nn.Module):
    """A stand-in network whose prediction at a pixel depends only on that pixel: tiling must then
    reproduce the untiled prediction exactly (checks the blending bookkeeping)."""

    def condition(self, cond, p):
        return Conditioning(cond * p.view(-1, 1, 1, 1), [None], [None], [None])

    def denoise(self, x, c, g):
        return torch.tanh(x * 3 + c.cond) * g.view(-1, 1, 1, 1)


def test_tiled_prediction_equals_untiled_for_a_local_network():
    torch.manual_seed(0)
    cond, x = torch.randn(2, 3, 50, 70), torch.randn(2, 3, 50, 70)
    p, g = torch.tensor([0.3, 0.8]), torch.tensor([0.5, 0.9])
    net = Pointwise()
    plan = TilePlan.for_image((50, 70), 24, multiple=8)
    assert len(plan.tiles) > 4
    want = net.denoise(x, net.condition(cond, p), g)
    assert torch.allclose(tiled_eps(net, cond, p, plan, net.denoise)(x, g), want, atol=1e-6)
    assert torch.allclose(tiled_eps(net, cond, p, plan, net.denoise, cache_bytes=0)(x, g), want, atol=1e-6)
