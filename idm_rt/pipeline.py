"""One image batch through IDM: encode once, condition once, sample with the U-Net only.

The Upscaler adds input conversion and tiling around :func:`super_resolve`; training's
validation calls it directly.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable

import torch

from .consistency import check_consistency, consistent
from .diffusion import SAMPLERS, LinearSchedule, randn_like, run_sampler, start_timestep
from .diffusion.samplers import Generators, ddim_timesteps
from .model import IDM
from .resize import upscale
from .tiling import TilePlan, tiled_eps


@torch.no_grad()
def super_resolve(model: IDM, lr: torch.Tensor, size: tuple[int, int], scale: float | None = None,
                  sampler: str = "dpmpp_2m", steps: int = 20, eta: float = 0.0,
                  generator: Generators = None, tile: int | None = None,
                  progress: bool = False, init: str = "noise", init_level: float = 0.5,
                  denoise: Callable | None = None, consistency: int = 0) -> torch.Tensor:
    """LR batch (B, 3, h, w) in [-1, 1] -> HR batch (B, 3, H, W) in [-1, 1].

    Args:
        scale: the magnification fed to the scale MLPs; by default the geometric mean of the
            per-axis ratios of ``size`` to the LR size.
        tile: HR tile side; outputs larger than one tile are denoised in overlapping tiles
            blended at every step (a tile covering the whole output changes nothing).
        init: ``"noise"`` starts from pure noise (the paper); ``"bicubic"`` starts from the bicubic
            upscale diffused to noise level ``init_level`` and samples only from there
            (Come-Closer-Diffuse-Faster, Chung et al. 2022): fewer, easier steps; ``"estimate"``
            does the same from the encoder's condition image, for models trained to make it an HR
            estimate (``encoder_upsampler="implicit"``).
        denoise: the U-Net call, ``model.denoise`` by default (e.g. a CUDA-graph replay of it).
        consistency: back-projection passes per step that bring the output's downscale close to
            the input (:mod:`idm_rt.consistency`); 0 samples as the paper does.
    """
    check_consistency(consistency)
    denoise = denoise or model.denoise
    b, _, h, w = lr.shape
    if scale is None:
        scale = (size[0] / h * size[1] / w) ** 0.5
    with getattr(model, "sampling", contextlib.nullcontext)():  # an engine runner's setup (backends.base)
        cond = model.encode(lr, size)
        p = model.scale_fraction(scale).expand(b).to(lr.device)
        plan = TilePlan.for_image(size, tile, model.config.size_multiple) if tile is not None else None
        if plan is not None and len(plan.tiles) > 1:
            eps_fn = tiled_eps(model, cond, p, plan, denoise)
        else:
            conditioning = model.condition(cond, p)
            eps_fn = lambda x, g: denoise(x, conditioning, g)  # noqa: E731
        if consistency:
            eps_fn = consistent(eps_fn, lr, consistency)
        x_T, t_start = initial_state(lr, cond, init, init_level, generator)
        return run_sampler(eps_fn, x_T, sampler, steps, eta, generator, progress=progress,
                           t_start=t_start).clamp(-1.0, 1.0)


INITS = ("noise", "bicubic", "estimate")


def check_init(init: str, init_level: float) -> None:
    """ValueError naming the problem for an unknown start or a bicubic start level outside (0, 1)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init != "noise" and (not isinstance(init_level, numbers.Real) or not 0 < init_level < 1):
        raise ValueError(f"init_level must be a number in (0, 1), got {init_level!r}")


def check_sampling(sampler: str, steps: int, init: str, init_level: float, consistency: int) -> None:
    """ValueError naming the first bad sampling setting."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    check_init(init, init_level)
    check_consistency(consistency)
    if sampler == "ddim":  # its grid needs 2..n steps, n the start timestep + 1
        ddim_timesteps(LinearSchedule(), steps, start_timestep(init_level) if init != "noise" else None)


def initial_state(lr: torch.Tensor, cond: torch.Tensor, init: str, init_level: float,
                  generator: Generators) -> tuple[torch.Tensor, int | None]:
    """(x_T, its timestep): pure noise at T-1, or ``sqrt(ac) x + sqrt(1 - ac) z`` at the timestep whose
    level is nearest ``init_level``, x the bicubic upscale of ``lr`` or the condition image ``cond``
    (an HR estimate for models whose encoder was trained as one, ``IDMConfig.encoder_upsampler``)."""
    check_init(init, init_level)
    size = tuple(cond.shape[-2:])
    if init == "noise":
        return randn_like(lr.new_empty((lr.shape[0], 3, *size)), generator), None
    t = start_timestep(init_level)
    ac = LinearSchedule().ac(t)
    start = (upscale(lr, size) if init == "bicubic" else cond).clamp(-1.0, 1.0)
    return math.sqrt(ac) * start + math.sqrt(1.0 - ac) * randn_like(start, generator), t
