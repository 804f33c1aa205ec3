"""LR back-projection during sampling (idm_rt.backprojection): it moves estimates towards images whose
downscale is the input, leaves estimates that already have it alone, and reaches the Upscaler's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import idm_rt
from idm_rt.backprojection import back_project, back_projected
from idm_rt.resize import downscale
from idm_rt.sampling import SamplingSettings


def lr_error(x0: torch.Tensor, lr: torch.Tensor) -> float:
    return (downscale(x0, tuple(lr.shape[-2:])) - lr).pow(2).mean().item()


def test_back_projection_shrinks_the_lr_error_pass_by_pass():
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(2, 3, 9, 11, generator=g) * 1.6 - 0.8
    x0 = torch.rand(2, 3, 27, 33, generator=g) * 1.6 - 0.8  # unrelated to lr
    errors = [lr_error(back_project(x0, lr, n), lr) for n in range(4)]
    assert all(b < 0.5 * a for a, b in zip(errors, errors[1:])), errors
    assert errors[3] < 0.02 * errors[0]


def test_an_already_consistent_estimate_is_left_alone():
    """If the network's x0 already downscales to the LR, the wrapper returns the network's noise;
    a batch of two at different noise levels checks the per-image levels."""
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, 24, 20, generator=g) * 1.6 - 0.8
    lr = downscale(hr, (8, 5))  # non-square, non-integer width ratio
    level = torch.tensor([0.8, 0.3])
    noise = torch.randn(hr.shape, generator=g)
    a = level.view(-1, 1, 1, 1)
    x_t = a * hr + (1 - a * a).sqrt() * noise
    oracle = lambda x, lv: noise  # implies x0 = hr exactly
    assert torch.allclose(back_projected(oracle, lr, 3)(x_t, level), noise, atol=1e-4)


def test_the_corrected_noise_implies_a_consistent_estimate():
    g = torch.Generator().manual_seed(2)
    lr = torch.rand(1, 3, 6, 6, generator=g) * 1.6 - 0.8
    x_t = torch.randn(1, 3, 18, 18, generator=g)
    level = torch.tensor([0.6])
    blind = lambda x, lv: x  # implies x0 = x_t / 3, clipped: ignores the LR
    x0_of = lambda eps: (x_t - 0.8 * eps) / 0.6
    before, after = x0_of(blind(x_t, level)).clamp(-1, 1), x0_of(back_projected(blind, lr, 2)(x_t, level))
    assert lr_error(after, lr) < 0.05 * lr_error(before, lr)


@pytest.mark.parametrize("bad", [-1, 101, 1.5, True, "2", None])
def test_bad_pass_counts_are_named(bad):
    with pytest.raises(ValueError, match=r"back_projection must be an integer in \[0, 100\]"):
        SamplingSettings(back_projection=bad)


def test_upscaler_outputs_downscale_to_their_input(tiny_model):
    """A random network ignores the LR; with back-projection the output still matches it."""
    up = idm_rt.Upscaler(tiny_model, steps=3, init="bicubic", init_level=0.8)
    image = np.random.default_rng(0).random((10, 12, 3)).astype(np.float32) * 0.8 + 0.1
    lr = torch.from_numpy(image).permute(2, 0, 1)[None] * 2 - 1
    errors = {}
    for n in (0, 2):
        out = up.upscale(image, scale=3, seed=0, progress=False, back_projection=n)
        errors[n] = lr_error(torch.from_numpy(out).permute(2, 0, 1)[None] * 2 - 1, lr)
    assert errors[2] < 0.1 * errors[0], errors
    with pytest.raises(ValueError, match="back_projection must be an integer"):
        up.upscale(image, scale=3, back_projection=-2, progress=False)


def test_model_defaults_carry_the_pass_count_and_an_explicit_zero_wins(tiny_model, tmp_path):
    tiny_model.recommended = idm_rt.SamplingSettings(
        sampler="ddim", steps=4, init="bicubic", init_level=0.9, back_projection=2
    )
    idm_rt.save_model(tiny_model, tmp_path / "m")
    up = idm_rt.Upscaler.from_pretrained(tmp_path / "m")
    image = np.random.default_rng(1).random((8, 8, 3)).astype(np.float32)
    run = lambda **kw: up.upscale(image, scale=2, seed=0, progress=False, **kw)
    assert np.array_equal(run(), run(back_projection=2))
    assert not np.allclose(run(), run(back_projection=0))
    plain = idm_rt.Upscaler.from_pretrained(tmp_path / "m", back_projection=0)
    assert np.array_equal(plain.upscale(image, scale=2, seed=0, progress=False), run(back_projection=0))


def test_tiled_sampling_is_projected_on_the_whole_image(tiny_model):
    """Tiles are blended into one noise estimate first, so the projection sees the whole image."""
    up = idm_rt.Upscaler(tiny_model, steps=3, init="bicubic", init_level=0.8)
    image = np.random.default_rng(2).random((12, 14, 3)).astype(np.float32) * 0.8 + 0.1
    lr = torch.from_numpy(image).permute(2, 0, 1)[None] * 2 - 1
    tiled = up.upscale(image, scale=2, seed=0, progress=False, tile=16, back_projection=2)
    plain = up.upscale(image, scale=2, seed=0, progress=False, tile=16, back_projection=0)
    err = lambda out: lr_error(torch.from_numpy(out).permute(2, 0, 1)[None] * 2 - 1, lr)
    assert err(tiled) < 0.1 * err(plain)


def test_cli_flag_rejects_negative_counts(capsys):
    from idm_rt.cli import build_parser

    args = build_parser().parse_args(["upscale", "a.png", "-o", "b.png", "--scale", "2", "--back-projection", "3"])
    assert args.back_projection == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["upscale", "a.png", "-o", "b.png", "--scale", "2", "--back-projection", "-1"])
    assert "must be an integer in [0, 100]" in capsys.readouterr().err


def test_the_count_s_old_name_in_a_stored_recommendation_is_read():
    """Model folders written before the rename store "consistency" for the pass count."""
    assert idm_rt.SamplingSettings.from_dict({"consistency": 2}).back_projection == 2
