"""NIQE (idm_rt.training.niqe, niqe_fit): the distribution fits against samples of known parameters, MSCN on
cases worked by hand, the bundled model's ordering of an image and its blurred and noisy copies, the fitting
command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from idm_rt.training.niqe import FEATURES, NIQEModel, fit_aggd, fit_ggd, mscn, patch_features

skimage = pytest.importorskip("skimage")


def aggd_samples(shape: float, beta_l: float, beta_r: float, n: int, seed: int = 0) -> torch.Tensor:
    """Samples of the AGGD with density prop. to exp(-(|x| / beta)^shape), beta_l left of 0, beta_r right: a
    side drawn with probability beta / (beta_l + beta_r) (each side's mass), |x| = beta G^(1 / shape) with
    G ~ Gamma(1 / shape, 1)."""
    gen = np.random.default_rng(seed)
    left = gen.random(n) < beta_l / (beta_l + beta_r)
    mag = gen.gamma(1 / shape, 1.0, n) ** (1 / shape)
    return torch.from_numpy(np.where(left, -beta_l * mag, beta_r * mag))


def ggd_variance(shape: float, beta: float) -> float:
    return beta**2 * math.gamma(3 / shape) / math.gamma(1 / shape)


@pytest.mark.parametrize("shape", [0.6, 1.0, 2.0, 3.5])
def test_the_ggd_fit_recovers_a_known_shape_and_variance(shape):
    x = aggd_samples(shape, 1.3, 1.3, 200_000, seed=int(shape * 10))
    got_shape, got_var = fit_ggd(x[None])
    assert got_shape.item() == pytest.approx(shape, rel=0.03)
    assert got_var.item() == pytest.approx(ggd_variance(shape, 1.3), rel=0.03)


@pytest.mark.parametrize(("shape", "beta_l", "beta_r"), [(0.8, 0.5, 1.5), (2.0, 1.0, 0.4), (1.2, 1.0, 1.0)])
def test_the_aggd_fit_recovers_shape_mean_and_side_variances(shape, beta_l, beta_r):
    x = aggd_samples(shape, beta_l, beta_r, 400_000)
    got_shape, mean, var_l, var_r = (v.item() for v in fit_aggd(x[None]))
    assert got_shape == pytest.approx(shape, rel=0.04)
    assert var_l == pytest.approx(ggd_variance(shape, beta_l), rel=0.03)
    assert var_r == pytest.approx(ggd_variance(shape, beta_r), rel=0.03)
    want_mean = (beta_r - beta_l) * math.gamma(2 / shape) / math.gamma(1 / shape)  # the AGGD's own mean
    assert mean == pytest.approx(want_mean, abs=0.01) and mean == pytest.approx(x.mean().item(), abs=0.01)


def test_mscn_of_a_constant_is_zero_and_of_a_step_is_the_local_contrast():
    coef, sigma = mscn(torch.full((20, 20), 117.0, dtype=torch.float64))
    assert coef.abs().max() < 1e-9 and sigma.max() < 1e-5
    step = torch.zeros(20, 20, dtype=torch.float64)
    step[:, 10:] = 100.0
    coef, sigma = mscn(step)
    assert coef[:, :7].abs().max() < 1e-9 and coef[:, 13:].abs().max() < 1e-9  # beyond the 7x7 window's reach
    # next to the step, symmetric: the window puts weight p on the far side, so mu = 100 p, sigma = 100 sqrt(p (1-p))
    assert coef[5, 9].item() == pytest.approx(-coef[5, 10].item())
    assert sigma[5, 9].item() == pytest.approx(sigma[5, 10].item())


def photo(name: str = "astronaut", side: int = 192) -> torch.Tensor:
    img = getattr(skimage.data, name)()
    h, w = img.shape[:2]
    top, left = (h - side) // 2, (w - side) // 2
    return torch.from_numpy(img[top : top + side, left : left + side].astype(np.float64) / 255).permute(2, 0, 1)


def test_patch_features_are_36_per_patch_at_two_scales_and_refuse_small_images():
    feats, sharpness = patch_features(photo(side=200), 96)
    assert feats.shape == (4, FEATURES) and sharpness.shape == (4,)  # 2 x 2 whole patches; the rest left out
    assert np.isfinite(feats).all() and (sharpness > 0).all()
    with pytest.raises(ValueError, match="at least 96x96"):
        patch_features(photo(side=95), 96)
    for bad in (95, 6):
        with pytest.raises(ValueError, match="patch side must be an even integer of at least 8"):
            patch_features(photo(), bad)
    assert patch_features(photo(side=8), 8)[0].shape == (1, FEATURES)  # the smallest: 4 px at half size


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_the_bundled_model_scores_blur_and_noise_worse_than_the_photo(name):
    from scipy.ndimage import gaussian_filter

    model = NIQEModel.load()
    img = photo(name)
    blurred = torch.from_numpy(np.stack([gaussian_filter(c, 1.5) for c in img.numpy()]))
    noisy = (img + torch.from_numpy(np.random.default_rng(0).normal(0, 0.04, img.shape))).clamp(0, 1)
    assert model.score(img) < model.score(blurred) and model.score(img) < model.score(noisy)


def test_the_bundled_model_records_how_it_was_fitted():
    from idm_rt.training.niqe import MODEL_FILE

    d = json.loads(MODEL_FILE.read_text())
    assert d["command"].startswith("python -m idm_rt.training.niqe_fit")
    assert d["data"]["held_out"] == [f"train/urban_img_{i:03d}.png" for i in range(97, 101)]
    assert d["data"]["patches_kept"] > 10 * FEATURES
    cov = NIQEModel.load().cov
    assert np.allclose(cov, cov.T) and np.linalg.eigvalsh(cov).min() > 0


def test_niqe_fit_writes_a_model_from_a_folder_and_replaces_only_its_own(tmp_path, capsys):
    from idm_rt.training import niqe_fit

    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")):
        Image.fromarray((photo(name, 128).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            data / f"{i}.png"
        )
    out = tmp_path / "m.json"
    args = ["--data", str(data), "--out", str(out), "--patch", "16", "--holdout", "1"]
    assert niqe_fit.main([*args, "--threshold", "0"]) == 0
    d = json.loads(out.read_text())
    assert d["data"]["held_out"] == ["4.png"] and d["data"]["images"] == 4
    assert d["data"]["patches_seen"] == d["data"]["patches_kept"] == 4 * 64
    model = NIQEModel.load(out)
    assert model.patch == 16 and np.isfinite(model.score(photo(side=96)))
    assert niqe_fit.main([*args, "--threshold", "0.5"]) == 0
    assert 36 < json.loads(out.read_text())["data"]["patches_kept"] < 4 * 64
    (tmp_path / "mine.json").write_text('{"mine": 1}')
    for bad, message in (
        (["--out", str(tmp_path / "mine.json")], "not a NIQE model this command wrote"),
        (["--patch", "30"], "--patch must be a multiple of 4"),
        (["--threshold", "0.99"], "too few for a 36-dimensional covariance"),
        (["--threshold", "1"], "--threshold must be in"),
        (["--out", str(tmp_path / "mine.json" / "m.json")], "lies under a file"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--patch", "256"], "no usable training image"),
    ):
        assert niqe_fit.main([*args, *bad]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "mine.json").read_text() == '{"mine": 1}'


def test_a_malformed_model_file_is_named(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"mean": [0.0] * 3, "cov": [[1.0]], "patch": 96}))
    with pytest.raises(ValueError, match="want a mean of 36"):
        NIQEModel.load(path)
    path.write_text(json.dumps({"mean": [0.0] * 36, "cov": np.eye(36).tolist(), "patch": 6}))
    with pytest.raises(ValueError, match="multiple of 4 of at least 8"):
        NIQEModel.load(path)
    path.write_text(json.dumps({"mean": [0.0] * 36}))
    with pytest.raises(ValueError, match="is not a NIQE model"):
        NIQEModel.load(path)
