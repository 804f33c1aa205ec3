"""The noise schedule of IDM/SR3: linear betas over T steps, kept in float64 and read as float32."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class LinearSchedule:
    """``betas = linspace(start, end, T)``; ``ac = cumprod(1 - betas)``.

    The network's noise level at step t is ``g = sqrt(ac[t])``.
    """

    timesteps: int = 2000
    start: float = 1e-6
    end: float = 1e-2

    @cached_property
    def betas(self) -> torch.Tensor:
        return torch.linspace(self.start, self.end, self.timesteps, dtype=torch.float64)

    @cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, dim=0)

    @cached_property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @cached_property
    def sqrt_alphas_cumprod_prev(self) -> torch.Tensor:
        """``sqrt([1, ac...])`` (length T + 1): the interval ends that training samples g between."""
        return torch.sqrt(torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod]))

    def ac(self, t: int) -> float:
        return float(self.alphas_cumprod[t])

    def noise_level(self, t: int) -> float:
        """g = sqrt(ac[t]) as the network sees it."""
        return float(torch.sqrt(self.alphas_cumprod[t]))
