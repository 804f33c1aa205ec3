"""Back-projection during sampling: move each step's clean-image estimate towards the images whose
downscale is the input (what IDM's Consistency metric measures).

At every step the sampler's x0 estimate is clipped to [-1, 1] and corrected by iterative
back-projection (Irani & Peleg 1991), ``x0 += upscale(lr - downscale(x0))``; each pass shrinks
the LR mismatch several-fold. It is the same low-pass data-consistency idea as ILVR
(Choi et al. 2021) and DDNM (Wang et al. 2023). The network keeps the high frequencies it
generates; the frequencies the LR determines come from the LR. The corrected x0 is handed to the
sampler as the noise it implies, so every sampler gets it unchanged.
"""

from __future__ import annotations

import torch

from .diffusion.samplers import EpsFn
from .resize import downscale, upscale


def back_project(x0: torch.Tensor, lr: torch.Tensor, iterations: int) -> torch.Tensor:
    """``iterations`` passes of ``x0 += upscale(lr - downscale(x0))``; images in [-1, 1]."""
    for _ in range(iterations):
        x0 = x0 + upscale(lr - downscale(x0, tuple(lr.shape[-2:])), tuple(x0.shape[-2:]))
    return x0


def back_projected(eps_fn: EpsFn, lr: torch.Tensor, iterations: int) -> EpsFn:
    """``eps_fn`` whose implied clean image ``(x - sigma eps) / alpha`` (clipped to [-1, 1]) is
    back-projected onto ``lr``; returns the noise that the corrected estimate implies."""

    def eps_back_projected(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        eps = eps_fn(x, g)
        alpha = g.to(torch.float32).view(-1, 1, 1, 1)  # float32 even for half inputs: sigma -> 0 near g = 1
        sigma = (1.0 - alpha * alpha).clamp_min(1e-12).sqrt()
        x0 = back_project(((x - sigma * eps) / alpha).clamp(-1.0, 1.0), lr, iterations)
        return (x - alpha * x0) / sigma

    return eps_back_projected
