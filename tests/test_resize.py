"""IDM's bicubic resizes (idm_rt.resize) against torch's F.interpolate, the definition they follow: the banded matrix
products that every array library runs (numpy here), and float torch tensors, which take torch's kernels themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idm_rt.resize import bicubic_upscale, downscale

# (in, out): odd ratios, 4x, near 1x, and sizes resized in several bands of rows (idm_rt.resize.bands)
SIZES = [((7, 9), (20, 13)), ((16, 16), (64, 64)), ((5, 30), (11, 31)), ((40, 50), (300, 170))]


@pytest.mark.parametrize("small, large", SIZES)
def test_the_products_compute_what_interpolate_does(small, large):
    rng = np.random.default_rng(0)
    lr, hr = (rng.uniform(-1, 1, (2, 3, *s)).astype(np.float32) for s in (small, large))
    # in float64: torch's float32 kernel works its weights out in float32, 1.3e-5 off at 40 -> 300
    up = F.interpolate(torch.from_numpy(lr).double(), size=large, mode="bicubic", align_corners=False).numpy()
    down = (
        F.interpolate(torch.from_numpy(hr).double(), size=small, mode="bicubic", align_corners=False, antialias=True)
        .clamp(-1, 1)
        .numpy()
    )
    assert np.abs(bicubic_upscale(lr, large) - up).max() < 1e-5
    assert np.abs(downscale(hr, small) - down).max() < 1e-5


@pytest.mark.parametrize("small, large", SIZES)
def test_torch_tensors_get_the_same_numbers_as_the_products(small, large):
    gen = torch.Generator().manual_seed(1)
    lr, hr = (torch.rand(1, 3, *s, generator=gen) * 2 - 1 for s in (small, large))
    # float32: torch's kernel rounds its weights (above); fp16: the products
    for dtype, tol in ((torch.float32, 3e-5), (torch.float64, 1e-5), (torch.float16, 1e-2)):
        up, down = bicubic_upscale(lr.to(dtype), large), downscale(hr.to(dtype), small)
        assert dtype == torch.float16 or up.dtype == down.dtype == dtype  # (the products give float32)
        assert np.abs(up.float().numpy() - bicubic_upscale(lr.numpy(), large)).max() < tol
        assert np.abs(down.float().numpy() - downscale(hr.numpy(), small)).max() < tol
