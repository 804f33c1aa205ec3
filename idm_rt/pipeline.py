"""One image batch through IDM: encode once, condition once, sample with the U-Net only.

The Upscaler adds input conversion and tiling around :func:`super_resolve`; training's
validation calls it directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .backprojection import back_projected
from .cancel import checkpoint
from .diffusion import LinearSchedule, randn_like, run_sampler
from .diffusion.samplers import Generators
from .model.protocol import SamplingModel
from .resize import upscale
from .sampling import SamplingSettings
from .tiling import CACHE_BYTES, TilePlan, tiled_eps


@torch.no_grad()
def super_resolve(model: SamplingModel, lr: torch.Tensor, size: tuple[int, int], settings: SamplingSettings,
                  scale: float | None = None, generator: Generators = None, tile: int | None = None,
                  progress: bool = False, denoise: Callable | None = None, overlap: int | None = None,
                  cache_bytes: int = CACHE_BYTES) -> torch.Tensor:
    """LR batch (B, 3, h, w) in [-1, 1] -> HR batch (B, 3, H, W) in [-1, 1], sampled as ``settings`` say.

    Args:
        scale: the magnification fed to the scale MLPs; by default the geometric mean of the
            per-axis ratios of ``size`` to the LR size.
        tile: HR tile side; outputs larger than one tile are denoised in overlapping tiles
            blended at every step (a tile covering the whole output changes nothing).
        overlap: of the tiles, in HR pixels (default :data:`idm_rt.tiling.OVERLAP`).
        denoise: the U-Net call, ``model.denoise`` by default (e.g. a CUDA-graph replay of it).
        cache_bytes: tiles' conditionings kept between steps (:func:`idm_rt.tiling.tiled_eps`).
    """
    settings.check_for(model.config)
    denoise = denoise or model.denoise
    b, _, h, w = lr.shape
    if scale is None:
        scale = (size[0] / h * size[1] / w) ** 0.5
    with model.sampling():
        cond = model.encode(lr, size)
        p = model.scale_fraction(scale).expand(b).to(lr.device)
        plan = TilePlan.for_image(size, tile, model.config.size_multiple, overlap) if tile is not None else None
        if plan is not None and len(plan.tiles) > 1:
            eps_fn = tiled_eps(model, cond, p, plan, denoise, cache_bytes)
        else:
            checkpoint()
            conditioning = model.condition(cond, p)

            def eps_fn(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
                checkpoint()
                return denoise(x, conditioning, g)
        if settings.back_projection:
            eps_fn = back_projected(eps_fn, lr, settings.back_projection)
        x_T = initial_state(lr, cond, settings, generator)
        return run_sampler(eps_fn, x_T, settings.sampler, settings.steps, settings.eta, generator, progress=progress,
                           t_start=settings.start_timestep).clamp(-1.0, 1.0)


def initial_state(lr: torch.Tensor, cond: torch.Tensor, settings: SamplingSettings,
                  generator: Generators) -> torch.Tensor:
    """x_T at the start timestep: pure noise, or ``sqrt(ac) x + sqrt(1 - ac) z`` at the timestep whose
    level is nearest ``init_level``, x the bicubic upscale of ``lr`` or the condition image ``cond``
    (an HR estimate for models whose encoder was trained as one, ``IDMConfig.encoder_upsampler``)."""
    size = tuple(cond.shape[-2:])
    if settings.init == "noise":
        return randn_like(lr.new_empty((lr.shape[0], 3, *size)), generator)
    ac = LinearSchedule().ac(settings.start_timestep)
    start = (upscale(lr, size) if settings.init == "bicubic" else cond).clamp(-1.0, 1.0)
    return math.sqrt(ac) * start + math.sqrt(1.0 - ac) * randn_like(start, generator)
