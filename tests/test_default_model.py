"""The bundled default model, loaded as users load it: at its recommended sampling it must stay clearly
above bicubic in PSNR(Y) and SSIM(Y) and far below it in Consistency, and the network alone (no
back-projection) above bicubic at 2x and 4x. Measured with the evaluation protocol of
``idm_rt.training.evaluate`` (8-bit LR, 8-bit output, border ceil(s)) on scikit-image photos the model
never trained on. The margins are what the model card's table shows for these crops less room for noise
(seeds, float rounding across machines); each can fail if the weights, the defaults or the sampling path
regress."""

from __future__ import annotations

import pytest
import torch

import idm_rt
from idm_rt.arrays import Noise
from idm_rt.pipeline import super_resolve
from idm_rt.training.metrics import as_saved, bicubic, detail_fractions, make_pair, measure

skdata = pytest.importorskip("skimage.data")

# scale: (PSNR(Y) dB above bicubic at the defaults; the same without back-projection). Measured for the
# bundled model (the second round, 2026-12-07) on these crops at its defaults of 1 step: +3.99 / +3.02 / +2.00,
# +3.72 / +2.97 alone; the model before it (step 8500) measured +3.47 / +2.60 / +1.62, +3.24 / +2.55 alone, which
# these margins fail.
MARGINS = {2: (3.6, 3.35), 4: (2.7, 2.65), 8: (1.7, None)}


@pytest.fixture(scope="module")
def default_upscaler():
    if not (idm_rt.DEFAULT_MODEL / "model.safetensors").exists():
        pytest.skip("no bundled default model in this build")
    return idm_rt.Upscaler.from_pretrained()


def _crops() -> list[torch.Tensor]:
    """Two 192x192 crops (a face with texture, a cup with smooth areas) as (3, H, W) uint8."""
    return [
        torch.from_numpy(skdata.astronaut()[100:292, 160:352].copy()).permute(2, 0, 1),
        torch.from_numpy(skdata.coffee()[100:292, 200:392].copy()).permute(2, 0, 1),
    ]


def _scores(up: idm_rt.Upscaler, scale: int, settings: idm_rt.SamplingSettings) -> tuple[dict, dict]:
    """Mean metrics of the model's outputs (with their detail fraction, border ``scale``) and of bicubic over the
    crops."""
    ours, bic = [], []
    for img in _crops():
        hr, lr = make_pair(img, scale)
        size = tuple(hr.shape[-2:])
        out = super_resolve(up.model, lr, size, settings, scale=scale, noise=Noise([0]))
        ours.append(
            {
                **measure(out, hr, lr, scale),
                "detail": detail_fractions(as_saved(out), as_saved(hr), scale, scale)["detail"],
            }
        )
        bic.append(measure(bicubic(lr, size), hr, lr, scale))
    mean = lambda rows: {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return mean(ours), mean(bic)


@pytest.mark.slow
@pytest.mark.parametrize("scale", sorted(MARGINS))
def test_default_model_is_clearly_above_bicubic(default_upscaler, scale):
    ours, bic = _scores(default_upscaler, scale, default_upscaler.sampling)
    assert ours["psnr"] > bic["psnr"] + MARGINS[scale][0]
    assert ours["ssim"] > bic["ssim"]
    assert ours["cons"] < 0.5 * bic["cons"]


@pytest.mark.slow
@pytest.mark.parametrize("scale", [s for s, (_, alone) in MARGINS.items() if alone is not None])
def test_the_network_alone_is_above_bicubic(default_upscaler, scale):
    ours, bic = _scores(default_upscaler, scale, default_upscaler.sampling.replace(back_projection=0))
    assert ours["psnr"] > bic["psnr"] + MARGINS[scale][1]


def test_the_readmes_low_level_calls_run_the_bundled_model(default_upscaler):
    model = idm_rt.load_model(idm_rt.DEFAULT_MODEL)
    assert model.recommended == default_upscaler.sampling
    lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # images in [-1, 1]
    with torch.no_grad():
        cond = model.encode(lr, (32, 32))
        c = model.condition(cond, model.scale_fraction(4.0))
        eps = model.denoise(torch.randn(1, 3, 32, 32), c, torch.tensor([0.5]))
        x0 = idm_rt.diffusion.sampler("ddim").run(lambda x, g: model.denoise(x, c, g), torch.randn(1, 3, 32, 32), 2)
    assert cond.shape == eps.shape == x0.shape == (1, 3, 32, 32)
    assert torch.isfinite(x0).all() and float((cond - torch.nn.functional.interpolate(lr, 32)).abs().mean()) < 0.5


@pytest.mark.slow
def test_the_bundled_presets_trade_psnr_for_detail_in_order(default_upscaler):
    """4x on the two crops: fast (the estimate, no U-Net call) < defaults < detailed in fine detail (the
    fraction of the HR's energy beyond the LR's band, training.metrics.detail_fractions), each still above
    bicubic by the issue's bound for a detail-giving preset (+0.3 dB) and at most a tenth of its Consistency."""
    presets = default_upscaler.presets
    settings = {"fast": presets["fast"], "defaults": default_upscaler.sampling, "detailed": presets["detailed"]}
    scores = {name: _scores(default_upscaler, 4, s) for name, s in settings.items()}
    detail = {name: ours["detail"] for name, (ours, _) in scores.items()}
    assert detail["fast"] < detail["defaults"] < detail["detailed"], detail
    for ours, bic in scores.values():
        assert ours["psnr"] > bic["psnr"] + 0.3 and ours["cons"] < 0.1 * bic["cons"]
