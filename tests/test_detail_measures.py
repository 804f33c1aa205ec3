"""The fine-detail and naturalness measures validated as issue 29 asks, on scikit-image's photos (192 px crops,
2x and 4x) with the bundled model: bicubic below the model's HR estimate below the HR, and the estimate plus
noise of the band's energy neither real detail nor more natural (benchmarks.detail_measures computes them)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("skimage")


@pytest.mark.slow
def test_the_measures_rank_bicubic_the_estimate_and_the_hr_and_see_through_noise():
    import idm_rt
    from benchmarks.detail_measures import checks, measure_all
    from idm_rt.training.evaluate import load_images
    from idm_rt.training.niqe import NIQEModel

    model = idm_rt.Upscaler.from_pretrained().model
    result = measure_all(load_images("skimage", 192), model, [2.0, 4.0], NIQEModel.load(), seed=0)
    failed = [k for k, ok in checks(result["medians"])["required"].items() if not ok]
    assert not failed, failed
    for m in result["medians"].values():  # the noise does count as detail in the plain fraction: why both exist
        assert m["estimate+band_full"]["detail"] > m["hr"]["detail"] > m["estimate"]["detail"]


def test_band_noise_has_the_asked_energy_in_the_band_and_none_outside():
    from benchmarks.detail_measures import band_noise
    from idm_rt.training.metrics import detail_fractions

    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3, 64, 80, generator=gen) * 2 - 1
    for kind in ("white", "band"):
        noise = band_noise(hr, 4.0, 0.3, kind, gen)
        assert torch.equal(noise[0, 0], noise[0, 1])  # grey
        got = detail_fractions(0.5 + noise[0].double() / 2, (hr[0].double() + 1) / 2, 4.0, 4)["detail"]
        assert got == pytest.approx(0.3, rel=1e-6)
    low = torch.fft.fft2(band_noise(hr, 4.0, 0.3, "band", gen)[0, 0].double())[:4, :4]
    assert low.abs().max() < 1e-3  # r < 1/4: nothing
