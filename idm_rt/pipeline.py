"""One image batch through IDM: encode once, condition once, sample with the U-Net only.

The Upscaler adds input conversion and the tile choice around :func:`super_resolve`; training's validation calls it
directly. It runs on the arrays of whatever model it is given (:mod:`idm_rt.arrays`): torch tensors for the torch
model, numpy (or CuPy) arrays for engine runners without torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from array_api_compat import device

from .arrays import Array, Noise, namespace
from .backprojection import back_project, back_projected
from .cancel import checkpoint
from .diffusion import LinearSchedule, sampler
from .model.protocol import SamplingModel
from .resize import bicubic_upscale
from .sampling import SamplingSettings
from .stage_timing import CONDITIONING, ENCODER, SAMPLER, UNET, stage, timed
from .tiling import CACHE_BYTES, TilePlan, tiled_eps


def super_resolve(
    model: SamplingModel,
    lr: Array,
    size: tuple[int, int],
    settings: SamplingSettings,
    scale: float | None = None,
    noise: Noise | None = None,
    plan: TilePlan | None = None,
    progress: bool = False,
    denoise: Callable | None = None,
    cache_bytes: int = CACHE_BYTES,
) -> Array:
    """LR batch (B, 3, h, w) in [-1, 1] -> HR batch (B, 3, H, W) in [-1, 1], sampled as ``settings`` say.

    Args:
        scale: the magnification fed to the scale MLPs; by default the geometric mean of the
            per-axis ratios of ``size`` to the LR size.
        noise: the batch's noise (one seeded stream per image); default: unseeded.
        plan: the HR tiles (:meth:`idm_rt.tiling.TilePlan.for_image`), denoised in overlap and blended
            at every step; None, or a plan of one tile, denoises the whole output at once.
        denoise: the U-Net call, ``model.denoise`` by default (e.g. a CUDA-graph replay of it).
        cache_bytes: tiles' conditionings kept between steps (:func:`idm_rt.tiling.tiled_eps`).
    """
    settings.check_for(model.config)
    denoise = timed(UNET, denoise or model.denoise)
    b, _, h, w = lr.shape
    noise = noise or Noise([None] * b)
    if scale is None:
        scale = (size[0] / h * size[1] / w) ** 0.5
    with model.sampling():
        checkpoint()
        with stage(ENCODER):
            cond = model.encode(lr, size)
        if settings.steps == 0:  # the start itself: no conditioning, no U-Net call
            with stage(SAMPLER):
                start = namespace(cond).clip(
                    bicubic_upscale(lr, size) if settings.init == "bicubic" else cond, -1.0, 1.0
                )
            return namespace(cond).clip(back_project(start, lr, settings.back_projection), -1.0, 1.0)
        p = model.scale_fraction([scale] * b)
        if plan is not None and len(plan.tiles) > 1:
            eps_fn = tiled_eps(model, cond, p, plan, denoise, cache_bytes)
        else:
            checkpoint()
            with stage(CONDITIONING):
                conditioning = model.condition(cond, p)

            def eps_fn(x: Array, g: Array) -> Array:
                checkpoint()
                return denoise(x, conditioning, g)

        if settings.back_projection:
            eps_fn = back_projected(eps_fn, lr, settings.back_projection)
        with stage(SAMPLER):  # the U-Net calls and back-projection inside are their own stages
            x_T = initial_state(lr, cond, settings, noise)
            x_0 = sampler(settings.sampler).run(
                eps_fn,
                x_T,
                settings.steps,
                t_start=settings.start_timestep,
                eta=settings.eta,
                noise=noise,
                progress=progress,
            )
            return namespace(x_0).clip(x_0, -1.0, 1.0)


def initial_state(lr: Array, cond: Array, settings: SamplingSettings, noise: Noise) -> Array:
    """x_T at the start timestep: pure noise, or ``sqrt(ac) x + sqrt(1 - ac) z`` at the timestep whose
    level is nearest ``init_level``, x the bicubic upscale of ``lr`` or the condition image ``cond``
    (an HR estimate for models whose encoder was trained as one, ``IDMConfig.encoder_upsampler``)."""
    xp = namespace(lr)
    size = tuple(cond.shape[-2:])
    if settings.init == "noise":
        return noise.like(xp.zeros((lr.shape[0], 3, *size), dtype=xp.float32, device=device(lr)))
    ac = LinearSchedule().ac(settings.start_timestep)
    start = xp.clip(bicubic_upscale(lr, size) if settings.init == "bicubic" else cond, -1.0, 1.0)
    return math.sqrt(ac) * start + math.sqrt(1.0 - ac) * noise.like(start)
