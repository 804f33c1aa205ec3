"""One image batch through IDM: encode once, condition once, sample with the U-Net only.

The Upscaler adds input conversion and tiling around :func:`super_resolve`; training's
validation calls it directly.
"""

from __future__ import annotations

import torch

from .diffusion import randn_like, run_sampler
from .model import IDM
from .tiling import TilePlan, tiled_eps


@torch.no_grad()
def super_resolve(model: IDM, lr: torch.Tensor, size: tuple[int, int], scale: float | None = None,
                  sampler: str = "dpmpp_2m", steps: int = 20, eta: float = 0.0,
                  generator: torch.Generator | None = None, tile: int | None = None,
                  progress: bool = False) -> torch.Tensor:
    """LR batch (B, 3, h, w) in [-1, 1] -> HR batch (B, 3, H, W) in [-1, 1].

    Args:
        scale: the magnification fed to the scale MLPs; by default the geometric mean of the
            per-axis ratios of ``size`` to the LR size.
        tile: HR tile side; outputs larger than one tile are denoised in overlapping tiles
            blended at every step (a tile covering the whole output changes nothing).
    """
    b, _, h, w = lr.shape
    if scale is None:
        scale = (size[0] / h * size[1] / w) ** 0.5
    cond = model.encode(lr, size)
    p = model.scale_fraction(scale).expand(b).to(lr.device)
    plan = TilePlan.for_image(size, tile, model.config.size_multiple) if tile is not None else None
    if plan is not None and len(plan.tiles) > 1:
        eps_fn = tiled_eps(model, cond, p, plan)
    else:
        conditioning = model.condition(cond, p)
        eps_fn = lambda x, g: model.denoise(x, conditioning, g)  # noqa: E731
    x_T = randn_like(cond, generator)
    return run_sampler(eps_fn, x_T, sampler, steps, eta, generator, progress=progress).clamp(-1.0, 1.0)
