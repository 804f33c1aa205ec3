"""The noise schedule of IDM/SR3: linear betas over T steps, in float64 (numpy, as the release computes it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class LinearSchedule:
    """``betas = linspace(start, end, T)``; ``ac = cumprod(1 - betas)``.

    The network's noise level at step t is ``g = sqrt(ac[t])``.
    """

    timesteps: int = 2000
    start: float = 1e-6
    end: float = 1e-2

    @cached_property
    def betas(self) -> np.ndarray:
        return np.linspace(self.start, self.end, self.timesteps, dtype=np.float64)

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @cached_property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.concatenate([[1.0], self.alphas_cumprod[:-1]])

    @cached_property
    def sqrt_alphas_cumprod_prev(self) -> np.ndarray:
        """``sqrt([1, ac...])`` (length T + 1): the interval ends that training samples g between."""
        return np.sqrt(np.concatenate([[1.0], self.alphas_cumprod]))

    def ac(self, t: int) -> float:
        return float(self.alphas_cumprod[t])

    def noise_level(self, t: int) -> float:
        """g = sqrt(ac[t]) as the network sees it."""
        return math.sqrt(self.alphas_cumprod[t])
