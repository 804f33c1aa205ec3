"""NIQE, the Natural Image Quality Evaluator: a no-reference naturalness score, lower is more natural.

Written from the paper: Mittal, Soundararajan and Bovik, "Making a 'completely blind' image quality
analyzer", IEEE Signal Processing Letters 20(3), 2013. An image's luma is normalised into MSCN
coefficients (mean subtracted, contrast normalised); each P x P patch is described at two scales by 18
features: the generalised Gaussian (GGD) fit of its MSCN coefficients and the asymmetric GGD (AGGD)
fits of the products of horizontally, vertically and diagonally adjacent coefficients. A multivariate
Gaussian (MVG) fitted to patches of pristine images (the paper: their sharpest) is the model of
naturalness; an image's score is the distance between that MVG and the MVG of its own patches' features.

Choices the paper leaves open, fixed here: luma is BT.601 Y (:func:`~.metrics.rgb_to_y`) on 0..255; the
local mean and deviation use a 7x7 Gaussian window, sigma 7/6, with reflected edges; the second scale is
the antialiased bicubic half-size image (:func:`idm_rt.resize.downscale`); patches start at the top-left
corner, the partial ones at the right and bottom left out; shape parameters are solved by bisection (60
halvings of [0.05, 20] in log scale). Everything runs in float64 on the CPU, deterministic. Where this
differs from the paper, for 192 px crops (measured in ``benchmarks/results/detail_measures.md``): a scored
image's patches overlap by half (9 patches of 96 px in a 192 px crop instead of 4, for its covariance),
and the bundled pristine model (:data:`MODEL_FILE`, fitted by :mod:`.niqe_fit`) keeps every patch, not
only the sharpest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from idm_rt.resize import downscale

from .metrics import rgb_to_y

MODEL_FILE = Path(__file__).with_name("niqe_model.json")
FEATURES = 36  # 18 per scale: GGD (shape, variance) of MSCN, AGGD (shape, mean, left and right variance) x 4
SHAPE_RANGE = (0.05, 20.0)  # GGD shapes searched: from very heavy tails to almost uniform
MIN_PATCH = 8  # the half-size patch must be wider than the 3 pixels the local window reflects at an edge


def _local_mean(x: torch.Tensor, sigma: float = 7 / 6, radius: int = 3) -> torch.Tensor:
    """``x`` (H, W) weighted by the paper's w: a circularly symmetric Gaussian sampled out to 3 standard
    deviations (K = L = 3, so 7x7), unit volume, applied as its two 1D factors; edges reflected."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.pad(x[None, None], (radius,) * 4, mode="reflect")
    return F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))[0, 0]


def mscn(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSCN coefficients, local deviation sigma) of a (H, W) luma image on 0..255: (y - mu) / (sigma + 1),
    mu and sigma the Gaussian-weighted local mean and deviation (the constant 1 keeps flat regions finite)."""
    mu = _local_mean(y)
    sigma = (_local_mean(y * y) - mu * mu).clamp(min=0).sqrt()
    return (y - mu) / (sigma + 1), sigma


def _shape_ratio(a: torch.Tensor) -> torch.Tensor:
    """rho(a) = Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) = (E|x|)^2 / E[x^2] of a GGD of shape a: increasing,
    1/2 for the Laplacian (a = 1), 2/pi for the Gaussian (a = 2), towards 3/4 (uniform) as a grows."""
    return torch.exp(2 * torch.lgamma(2 / a) - torch.lgamma(1 / a) - torch.lgamma(3 / a))


def _solve_shape(ratio: torch.Tensor) -> torch.Tensor:
    """The GGD shape a with rho(a) = ``ratio``, element-wise, by bisection on log a over :data:`SHAPE_RANGE`
    (ratios outside rho's range there give its ends)."""
    lo = torch.full_like(ratio, math.log(SHAPE_RANGE[0]))
    hi = torch.full_like(ratio, math.log(SHAPE_RANGE[1]))
    for _ in range(60):
        mid = (lo + hi) / 2
        below = _shape_ratio(mid.exp()) < ratio
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return ((lo + hi) / 2).exp()


def fit_ggd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shape, variance) of a zero-mean GGD fitted to each row of ``x`` (N, n) by moment matching:
    rho(shape) = (E|x|)^2 / E[x^2] (Sharifi and Leon-Garcia 1995)."""
    var = (x * x).mean(-1)
    return _solve_shape(x.abs().mean(-1) ** 2 / var.clamp(min=1e-300)), var


def fit_aggd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shape, mean, left variance, right variance) of an AGGD fitted to each row of ``x`` (N, n) by the
    moment matching of Lasmar, Stitou and Berthoumieu (2009): sigma_l^2 and sigma_r^2 the mean squares of
    the negative and the positive samples, gamma = sigma_l / sigma_r, the shape a solving
    rho(a) = (E|x|)^2 / E[x^2] (gamma^3 + 1)(gamma + 1) / (gamma^2 + 1)^2, and the mean
    (beta_r - beta_l) Gamma(2/a) / Gamma(1/a), beta = sigma sqrt(Gamma(1/a) / Gamma(3/a))."""
    neg, pos = (x < 0).to(x.dtype), (x > 0).to(x.dtype)
    var_l = (x * x * neg).sum(-1) / neg.sum(-1).clamp(min=1)
    var_r = (x * x * pos).sum(-1) / pos.sum(-1).clamp(min=1)
    gamma = var_l.sqrt() / var_r.sqrt().clamp(min=1e-150)
    r_hat = x.abs().mean(-1) ** 2 / (x * x).mean(-1).clamp(min=1e-300)
    shape = _solve_shape(r_hat * (gamma**3 + 1) * (gamma + 1) / (gamma**2 + 1) ** 2)
    spread = torch.exp(0.5 * (torch.lgamma(1 / shape) - torch.lgamma(3 / shape)))
    mean = (var_r.sqrt() - var_l.sqrt()) * spread * torch.exp(torch.lgamma(2 / shape) - torch.lgamma(1 / shape))
    return shape, mean, var_l, var_r


def _patches(x: torch.Tensor, p: int, stride: int) -> torch.Tensor:
    """The whole p x p patches of a (H, W) map ``stride`` apart, row by row from the top-left, as (N, p, p)."""
    return x.unfold(0, p, stride).unfold(1, p, stride).reshape(-1, p, p)


def _scale_features(y: torch.Tensor, p: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 18), sharpness (N,)) of the p x p patches of a luma image at one scale: the GGD fit of
    the MSCN coefficients and the AGGD fits of the products of each coefficient with its right, lower,
    lower-right and lower-left neighbour (pairs within the patch); sharpness the sum of sigma over the patch."""
    coef, sigma = mscn(y)
    c = _patches(coef, p, stride)
    products = (
        c[:, :, :-1] * c[:, :, 1:],
        c[:, :-1, :] * c[:, 1:, :],
        c[:, :-1, :-1] * c[:, 1:, 1:],
        c[:, :-1, 1:] * c[:, 1:, :-1],
    )
    feats = list(fit_ggd(c.flatten(1)))
    for prod in products:
        feats += fit_aggd(prod.flatten(1))
    return torch.stack(feats, -1), _patches(sigma, p, stride).sum((-2, -1))


def patch_features(img: torch.Tensor, patch: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, 36), sharpness (N,)) of the ``patch`` x ``patch`` patches, ``stride`` apart (default: side
    by side), of an RGB image (3, H, W) in [0, 1]: 18 features at full size, 18 at half size (the same regions,
    half the side). ValueError when the image holds no whole patch, ``patch`` is not an even integer of at
    least :data:`MIN_PATCH` or ``stride`` not a positive even integer."""
    stride = stride or patch
    for name, v, least in (("patch side", patch, MIN_PATCH), ("stride", stride, 2)):
        if not isinstance(v, int) or v < least or v % 2:
            raise ValueError(f"NIQE's {name} must be an even integer of at least {least}, got {v!r}")
    h, w = img.shape[-2:]
    if min(h, w) < patch:
        raise ValueError(f"NIQE needs an image of at least {patch}x{patch} (one patch), got {w}x{h}")
    img = img[..., : h // 2 * 2, : w // 2 * 2].double().cpu()
    half = (downscale(img[None] * 2 - 1, (img.shape[-2] // 2, img.shape[-1] // 2))[0] + 1) / 2
    full, sharpness = _scale_features(rgb_to_y(img) * 255, patch, stride)
    low, _ = _scale_features(rgb_to_y(half) * 255, patch // 2, stride // 2)
    return torch.cat([full, low], -1).numpy(), sharpness.numpy()


def mvg_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """sqrt((nu1 - nu2)^T ((S1 + S2) / 2)^-1 (nu1 - nu2)), the paper's distance between two MVGs (the
    pseudo-inverse where the mean covariance is singular)."""
    d = mean1 - mean2
    return float(np.sqrt(max(d @ np.linalg.pinv((cov1 + cov2) / 2) @ d, 0.0)))


@dataclass(frozen=True)
class NIQEModel:
    """The pristine MVG (mean (36,), covariance (36, 36)) and the patch side it was fitted with (a multiple
    of 4: images are scored with patches ``patch / 2`` apart)."""

    mean: np.ndarray
    cov: np.ndarray
    patch: int

    def score(self, img: torch.Tensor) -> float:
        """NIQE of an RGB image (3, H, W) in [0, 1]: the distance between this MVG and the MVG of the image's
        patches, overlapping by half (all of them: a sharpness selection is for pristine images only; the
        covariance is 0 for a single patch). ValueError for an image smaller than one patch."""
        feats, _ = patch_features(img, self.patch, self.patch // 2)
        cov = np.cov(feats, rowvar=False) if len(feats) > 1 else np.zeros_like(self.cov)
        return mvg_distance(self.mean, self.cov, feats.mean(0), cov)

    @classmethod
    def load(cls, path: str | Path = MODEL_FILE) -> NIQEModel:
        """A model saved by :mod:`.niqe_fit`; ValueError naming what is missing or malformed."""
        d = json.loads(Path(path).read_text())
        try:
            mean, cov, patch = np.asarray(d["mean"], np.float64), np.asarray(d["cov"], np.float64), d["patch"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a NIQE model: {e!r}") from None
        if (
            mean.shape != (FEATURES,)
            or cov.shape != (FEATURES, FEATURES)
            or not isinstance(patch, int)
            or patch < MIN_PATCH
            or patch % 4
        ):
            raise ValueError(
                f"{path}: want a mean of {FEATURES}, a {FEATURES}x{FEATURES} covariance and a patch "
                f"side that is a multiple of 4 of at least {MIN_PATCH}, got {mean.shape}, {cov.shape}, "
                f"{patch!r}"
            )
        return cls(mean, cov, patch)
