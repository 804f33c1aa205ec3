"""The fast implicit up-layer against the literal (release) form and a float64 per-pixel loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from idm_rt.model.implicit import ImplicitUp, gather_nearest, nearest_query, query_fast, query_literal

from .helpers import rel_err


def naive_query(h: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, size: tuple[int, int], relu: bool) -> torch.Tensor:
    """Per target pixel, float64, nearest source by grid_sample's documented rule written out by hand:
    pixel ``((x + 1) * n - 1) / 2`` of the clamped centre coordinate, rounded half to even."""
    b, c, hs, ws = h.shape
    out = torch.empty(b, c, *size, dtype=torch.float64)
    w1, b1, w2, b2 = (t.detach().double() for t in (fc1.weight, fc1.bias, fc2.weight, fc2.bias))

    def pick(k: int, n_dst: int, n_src: int) -> tuple[int, float]:
        coord = -1 + (2 * k + 1) / n_dst
        clamped = min(max(coord, -1 + 1e-6), 1 - 1e-6)
        i = round(((clamped + 1) * n_src - 1) / 2)
        return i, (coord - (-1 + (2 * i + 1) / n_src)) * n_src

    for r in range(size[0]):
        i, rel_r = pick(r, size[0], hs)
        for q in range(size[1]):
            j, rel_c = pick(q, size[1], ws)
            rel = torch.tensor([[rel_r, rel_c]], dtype=torch.float64).expand(b, 2)
            inp = torch.cat([h[:, :, i, j].double(), rel], 1)
            hid = inp @ w1.T + b1
            if relu:
                hid = hid.clamp_min(0)
            out[:, :, r, q] = hid @ w2.T + b2
    return out


SHAPES = [((4, 4), (8, 8)), ((5, 7), (9, 13)), ((3, 6), (10, 7)), ((6, 6), (12, 12)), ((2, 9), (3, 17))]


@pytest.mark.parametrize("src,dst", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_fast_literal_and_naive_agree(src, dst, relu):
    torch.manual_seed(hash((src, dst, relu)) % 1000)
    c = 12
    h = torch.randn(2, c, *src)
    fc1, fc2 = nn.Linear(c + 2, 32), nn.Linear(32, c)
    ref = naive_query(h, fc1, fc2, dst, relu)
    with torch.no_grad():
        lit = query_literal(h, fc1, fc2, dst, relu)
        fast = query_fast(h, fc1, fc2, dst, relu)
    assert lit.shape == fast.shape == (2, c, *dst)
    assert rel_err(lit, ref) < 1e-5
    assert rel_err(fast, ref) < 1e-5


@pytest.mark.parametrize("n_src,n_dst", [(4, 8), (5, 9), (9, 17), (7, 20), (3, 3), (8, 5)])
def test_nearest_query_matches_grid_sample_rule(n_src, n_dst):
    idx, rel = nearest_query(n_src, n_dst)
    for k in range(n_dst):
        coord = -1 + (2 * k + 1) / n_dst
        ix = ((min(max(coord, -1 + 1e-6), 1 - 1e-6) + 1) * n_src - 1) / 2
        assert idx[k].item() == round(ix)
        assert math.isclose(rel[k].item(), (coord - (-1 + (2 * idx[k].item() + 1) / n_src)) * n_src, abs_tol=1e-5)


def test_nearest_query_at_twice_the_size_is_k_over_2():
    # what gather_nearest's Resize shortcut relies on
    for n in range(1, 200):
        assert torch.equal(nearest_query(n, 2 * n)[0], torch.arange(2 * n) // 2)


@pytest.mark.parametrize("size", [(8, 12), (8, 7), (5, 12)])
def test_gather_nearest_equals_the_table_gather(size):
    y = torch.randn(2, 3, 4, 6)
    ri, ci = nearest_query(4, size[0])[0], nearest_query(6, size[1])[0]
    assert torch.equal(gather_nearest(y, size), y[:, :, ri][:, :, :, ci])


def test_layer_forms_agree_with_modulation():
    torch.manual_seed(3)
    layer = ImplicitUp(16, hidden=24)
    with torch.no_grad():
        layer.bias.normal_()
        x, shift = torch.randn(3, 16, 5, 6), torch.randn(3, 16, 5, 6)
        a1, a2 = torch.randn(3, 16), torch.randn(3, 16)
        fast = layer(x, shift, a1, a2, (9, 11))
        layer.literal = True
        lit = layer(x, shift, a1, a2, (9, 11))
    assert rel_err(fast, lit) < 1e-5
