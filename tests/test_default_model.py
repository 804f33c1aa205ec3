"""The bundled default model, loaded as users load it, at its own recommended sampling: sharper
detail must not cost fidelity. Checked on a scikit-image photo it was never trained on, against
bicubic (PSNR on Y) and against the LR input (Consistency); both can fail if the weights, the
defaults or the sampling path regress."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import idm_rt
from idm_rt.resize import downscale, upscale
from idm_rt.training.metrics import lr_consistency, psnr_y

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def default_upscaler():
    if not (idm_rt.upscaler.DEFAULT_MODEL / "model.safetensors").exists():
        pytest.skip("no bundled default model in this build")
    return idm_rt.Upscaler.from_pretrained()


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 4])
def test_default_model_beats_bicubic_on_a_held_out_photo(default_upscaler, scale):
    hr = torch.from_numpy(np.ascontiguousarray(skdata.astronaut()[100:292, 160:352])).permute(2, 0, 1).double() / 255
    lr = (downscale(hr[None] * 2 - 1, (192 // scale, 192 // scale))[0] + 1) / 2
    lr8 = (lr * 255).round() / 255  # what a user's 8-bit file holds
    out = default_upscaler.upscale(lr8.float(), scale=scale, seed=0, progress=False).double()
    bic = ((upscale(lr8[None] * 2 - 1, (192, 192))[0].clamp(-1, 1) + 1) / 2 * 255).round() / 255
    out8 = (out * 255).round() / 255
    assert psnr_y(out8, hr, scale) > psnr_y(bic, hr, scale)
    assert lr_consistency(out8, lr8) < 0.5 * lr_consistency(bic, lr8)
