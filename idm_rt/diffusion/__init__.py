"""Diffusion schedule and samplers: :data:`SAMPLERS`, one table of (function, grid, calls) by name."""

from __future__ import annotations

import numpy as np

from .samplers import (
    SAMPLERS,
    EpsFn,
    Sampler,
    calls_for,
    ddim,
    ddim_timesteps,
    ddpm,
    ddpm_step,
    ddpm_timesteps,
    dpmpp_2m,
    dpmpp_levels,
    sampler,
)
from .schedule import LinearSchedule


def start_timestep(level: float, sched: LinearSchedule | None = None) -> int:
    """The timestep whose noise level sqrt(ac[t]) is nearest to ``level`` (for diffused starts)."""
    if not 0 < level < 1:
        raise ValueError(f"init_level must be in (0, 1), got {level}")
    g = np.sqrt((sched or LinearSchedule()).alphas_cumprod)
    return max(1, int(np.argmin(np.abs(g - level))))


__all__ = [
    "LinearSchedule",
    "SAMPLERS",
    "Sampler",
    "sampler",
    "calls_for",
    "start_timestep",
    "EpsFn",
    "ddpm",
    "ddim",
    "dpmpp_2m",
    "ddpm_step",
    "ddpm_timesteps",
    "ddim_timesteps",
    "dpmpp_levels",
]
