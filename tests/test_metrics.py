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
    want = structural_similarity(
        y_ref, y_out, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
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


# The detail fractions: the band 1/s <= r <= 1 of Nyquist, the Hann window, the correlated part.


def grey(y: np.ndarray) -> torch.Tensor:
    """An RGB image whose luma is an affine function of ``y`` (H, W)."""
    return torch.from_numpy(np.repeat(y[None], 3, 0))


def cosine(h: int, w: int, fy: float, fx: float, amp: float = 0.1) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return amp * np.cos(2 * np.pi * (fy * yy + fx * xx) + 0.3)


def test_the_band_is_a_radius_of_each_axis_nyquist_also_on_non_square_crops():
    from idm_rt.training.metrics import detail_band

    inside = ~detail_band((40, 64), 2).isnan()
    assert inside[0, 16] and inside[10, 0]  # fx = 16/64 and fy = 10/40 = 0.25 cycles/px: r = 0.5 = 1/s on both axes
    assert not inside[0, 15] and not inside[9, 0]  # r = 0.469 and 0.45: the LR holds them
    assert inside[0, 32] and inside[20, 0]  # Nyquist on each axis: r = 1
    assert not inside[20, 32] and not inside[0, 0]  # the corner (r = sqrt 2) and DC
    assert inside[8, 12] and not inside[6, 12]  # r = 2 hypot(8/40, 12/64) = 0.548, 2 hypot(6/40, 12/64) = 0.480


def test_a_sinusoid_counts_in_the_band_it_lies_in_and_only_there():
    from idm_rt.training.metrics import detail_fractions

    h, w = 96, 120  # non-square, and frequencies with non-integer periods: the window has to stop the leaks
    high, low = cosine(h, w, 0.0, 0.29, 0.1), cosine(h, w, 0.09, 0.0, 0.3)  # r = 0.58 and r = 0.18
    hr, out = grey(0.5 + high + low), grey(0.5 + low)
    for s in (2, 4):  # the band starts at r = 0.5, 0.25: only the high one in it
        d = detail_fractions(out, hr, s)  # without the window the low one's edges leak 0.09 and 0.28 into the band
        assert d["detail"] < 1e-3 and d["detail_corr"] < 1e-3
        half = detail_fractions(grey(0.5 + high / 2 + low), hr, s)
        assert half["detail"] == pytest.approx(0.25, abs=1e-3) and half["detail_corr"] == pytest.approx(0.25, abs=1e-3)
    # at 8x (r >= 0.125) both are in the band: the output holds the low one, 0.3^2 / (0.1^2 + 0.3^2) of the energy
    assert detail_fractions(out, hr, 8)["detail"] == pytest.approx(0.9, rel=1e-3)
    assert detail_fractions(grey(0.5 + high + low), hr, 8)["detail"] == pytest.approx(1.0, abs=1e-12)


def test_noise_adds_to_the_detail_fraction_but_not_to_the_correlated_one():
    from idm_rt.training.metrics import detail_fractions

    hr = t(skimage.data.astronaut()[100:292, 150:342].astype(np.float64) / 255)
    noise = grey(np.random.default_rng(0).normal(0, 0.05, (192, 192)))
    for s in (2, 4):
        d = detail_fractions(hr + noise, hr, s, 4)
        assert d["detail"] > 1.5 and d["detail_corr"] == pytest.approx(1.0, abs=0.05)  # +-0.03 as the noise is drawn
        alone = detail_fractions(0.5 + noise, hr, s, 4)  # about 1 / (2 n) of its energy, n frequencies per annulus
        assert alone["detail"] > 0.5 and alone["detail_corr"] < 0.005


def test_a_blurred_truth_is_detail_correlated_with_it():
    """A smooth frequency response (a Gaussian blur) is followed by the annuli: almost all of what the blurred
    image keeps of the band counts as correlated."""
    from scipy.ndimage import gaussian_filter

    from idm_rt.training.metrics import detail_fractions

    ref = skimage.data.astronaut()[100:292, 150:342].astype(np.float64) / 255
    blurred = t(np.stack([gaussian_filter(ref[..., c], 0.7) for c in range(3)], -1))
    d = detail_fractions(blurred, t(ref), 2, 2)
    assert 0.05 < d["detail"] < 0.9 and d["detail_corr"] > 0.95 * d["detail"]


def test_detail_fractions_are_nan_for_a_flat_truth():
    from idm_rt.training.metrics import detail_fractions

    flat = torch.full((3, 32, 32), 0.5, dtype=torch.float64)
    d = detail_fractions(torch.rand(3, 32, 32, dtype=torch.float64), flat, 2)
    assert np.isnan(d["detail"]) and np.isnan(d["detail_corr"])
