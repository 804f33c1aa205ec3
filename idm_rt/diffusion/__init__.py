"""Diffusion schedule and samplers; :func:`sample` runs one on an IDM with precomputed conditioning."""

from __future__ import annotations

import torch

from ..model import IDM, Conditioning
from .samplers import (
    EpsFn,
    Generators,
    ddim,
    ddim_timesteps,
    ddpm,
    ddpm_step,
    ddpm_timesteps,
    dpmpp_2m,
    dpmpp_levels,
    randn_like,
)
from .schedule import LinearSchedule

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


def calls_for(sampler: str, steps: int, sched: LinearSchedule = LinearSchedule(), t_start: int | None = None) -> int:
    """Network calls a sampler makes for ``steps``."""
    if sampler == "ddpm":
        return len(ddpm_timesteps(sched, steps, t_start))
    if sampler == "ddim":
        return len(ddim_timesteps(sched, steps, t_start)) - 1
    return steps


def start_timestep(level: float, sched: LinearSchedule | None = None) -> int:
    """The timestep whose noise level sqrt(ac[t]) is nearest to ``level`` (for diffused starts)."""
    if not 0 < level < 1:
        raise ValueError(f"init_level must be in (0, 1), got {level}")
    g = torch.sqrt((sched or LinearSchedule()).alphas_cumprod)
    return max(1, int(torch.argmin((g - level).abs())))


def run_sampler(eps_fn: EpsFn, x_T: torch.Tensor, sampler: str = "ddim", steps: int = 200, eta: float = 0.0,
                generator: Generators = None, schedule: LinearSchedule | None = None,
                progress: bool = False, t_start: int | None = None) -> torch.Tensor:
    """Run a named sampler from x_T, which sits at timestep ``t_start`` (default T-1: pure noise),
    with any noise predictor ``eps_fn(x, g)``."""
    sched = schedule or LinearSchedule()
    if sampler == "ddpm":
        return ddpm(eps_fn, sched, x_T, generator, progress, t_start, steps)
    if sampler == "ddim":
        return ddim(eps_fn, sched, x_T, steps, eta, generator, progress, t_start)
    if sampler == "dpmpp_2m":
        return dpmpp_2m(eps_fn, sched, x_T, steps, progress, t_start)
    raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")


@torch.no_grad()
def sample(model: IDM, conditioning: Conditioning, sampler: str = "ddim", steps: int = 200,
           x_T: torch.Tensor | None = None, generator: torch.Generator | None = None, eta: float = 0.0,
           progress: bool = False) -> torch.Tensor:
    """x_0 (B, 3, H, W) in about [-1, 1] for a precomputed conditioning.

    Only the U-Net runs inside the loop. With x_T given, deterministic samplers (ddim with
    eta = 0, dpmpp_2m) use no other randomness.
    """
    cond = conditioning.cond
    if x_T is None:
        x_T = randn_like(cond, generator)
    return run_sampler(lambda x, g: model.denoise(x, conditioning, g), x_T, sampler, steps, eta, generator,
                       progress=progress)


__all__ = ["LinearSchedule", "SAMPLERS", "sample", "run_sampler", "calls_for", "start_timestep", "ddpm", "ddim",
           "dpmpp_2m", "ddpm_step", "ddpm_timesteps", "ddim_timesteps", "dpmpp_levels"]
