"""Evaluation metrics against independent references (scikit-image)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idm_rt.resize import downscale
from idm_rt.training.metrics import lr_consistency, psnr_y, ssim_y

skimage = pytest.importorskip("skimage")
from skimage.color import rgb2ycbcr  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402


def pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = skimage.data.astronaut()[100:180, 150:250].astype(np.float64) / 255
    out = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1)
    return out, ref


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)


@pytest.mark.parametrize("border", [0, 4])
def test_psnr_y_matches_scikit_image(border):
    out, ref = pair()
    y_out, y_ref = rgb2ycbcr(out)[..., 0], rgb2ycbcr(ref)[..., 0]
    if border:
        y_out, y_ref = y_out[border:-border, border:-border], y_ref[border:-border, border:-border]
    want = peak_signal_noise_ratio(y_ref, y_out, data_range=255)
    assert psnr_y(t(out), t(ref), border) == pytest.approx(want, abs=1e-6)


def test_ssim_y_matches_scikit_image():
    out, ref = pair(1)
    y_out, y_ref = rgb2ycbcr(out)[..., 0] / 255, rgb2ycbcr(ref)[..., 0] / 255
    want = structural_similarity(y_ref, y_out, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0)
    assert ssim_y(t(out), t(ref)) == pytest.approx(want, abs=1e-4)


def test_ssim_is_nan_below_the_window_size():
    assert np.isnan(ssim_y(torch.rand(3, 10, 30), torch.rand(3, 10, 30)))


def test_consistency_is_zero_for_the_source_and_the_mse_of_a_change():
    hr = torch.rand(3, 32, 32, dtype=torch.float64)
    lr = (downscale(hr[None] * 2 - 1, (8, 8))[0] + 1) / 2
    assert lr_consistency(hr, lr) == pytest.approx(0.0, abs=1e-20)
    shifted = (hr + 0.01).clamp(0, 1)
    down = (downscale(shifted[None] * 2 - 1, (8, 8))[0] + 1) / 2
    assert lr_consistency(shifted, lr) == pytest.approx(((down - lr) ** 2).mean().item(), rel=1e-9)
