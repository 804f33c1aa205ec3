"""Back-projection during sampling: move each step's clean-image estimate towards the images whose
downscale is the input (what IDM's Consistency metric measures).

At every step the sampler's x0 estimate is clipped to [-1, 1] and corrected by iterative
back-projection (Irani & Peleg 1991), ``x0 += upscale(lr - downscale(x0))``; each pass shrinks
the LR mismatch several-fold. It is the same low-pass data-consistency idea as ILVR
(Choi et al. 2021) and DDNM (Wang et al. 2023). The network keeps the high frequencies it
generates; the frequencies the LR determines come from the LR. The corrected x0 is handed to the
sampler as the noise it implies, so every sampler gets it unchanged. Any array library (:mod:`idm_rt.arrays`).
"""

from __future__ import annotations

from .arrays import Array, namespace
from .diffusion.samplers import EpsFn
from .resize import bicubic_upscale, downscale
from .stage_timing import BACK_PROJECTION, stage


def back_project(x0: Array, lr: Array, iterations: int) -> Array:
    """``iterations`` passes of ``x0 += upscale(lr - downscale(x0))``; images in [-1, 1]."""
    with stage(BACK_PROJECTION):
        for _ in range(iterations):
            x0 = x0 + bicubic_upscale(lr - downscale(x0, tuple(lr.shape[-2:])), tuple(x0.shape[-2:]))
        return x0


def back_projected(eps_fn: EpsFn, lr: Array, iterations: int) -> EpsFn:
    """``eps_fn`` whose implied clean image ``(x - sigma eps) / alpha`` (clipped to [-1, 1]) is
    back-projected onto ``lr``; returns the noise that the corrected estimate implies."""

    def eps_back_projected(x: Array, g: Array) -> Array:
        xp = namespace(x)
        eps = eps_fn(x, g)
        with stage(BACK_PROJECTION):  # the noise's conversion to the clean image and back
            alpha = xp.reshape(xp.astype(g, xp.float32), (-1, 1, 1, 1))  # float32 even for half inputs: sigma -> 0
            sigma = xp.sqrt(xp.clip(1.0 - alpha * alpha, 1e-12, None))
            x0 = back_project(xp.clip((x - sigma * eps) / alpha, -1.0, 1.0), lr, iterations)
            return (x - alpha * x0) / sigma

    return eps_back_projected
