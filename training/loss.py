"""The IDM objective (SR3's continuous noise level, IDM Eq. 2): L1 between the true and predicted noise."""

from __future__ import annotations

import torch
from torch import nn

from idm_rt.diffusion import LinearSchedule


class NoisePredictionLoss:
    """t ~ U{1..max_t}; g ~ U(sqrt_ac_prev[t], sqrt_ac_prev[t-1]); x = g y0 + sqrt(1 - g^2) eps;
    loss = mean |eps - net(x, cond, p, g)|.

    ``max_t`` = T is the paper's objective. A smaller ``max_t`` trains only the noise levels that
    sampling from a diffused bicubic start (``init="bicubic"``) visits (truncated diffusion).
    """

    def __init__(self, schedule: LinearSchedule | None = None, max_t: int | None = None):
        sched = schedule or LinearSchedule()
        max_t = sched.timesteps if max_t is None else max_t
        if not 1 <= max_t <= sched.timesteps:
            raise ValueError(f"max_timestep must be in 1..{sched.timesteps}, got {max_t}")
        self.sqrt_ac_prev = sched.sqrt_alphas_cumprod_prev[: max_t + 1].float()

    def __call__(self, model: nn.Module, hr: torch.Tensor, lr: torch.Tensor, p: torch.Tensor,
                 gen: torch.Generator) -> torch.Tensor:
        """``model(x_t, lr, p, g)`` is an :class:`~idm_rt.IDM` or its DDP wrapper; p is (B,)."""
        b = hr.shape[0]
        t = torch.randint(1, len(self.sqrt_ac_prev), (b,), generator=gen)
        hi, lo = self.sqrt_ac_prev[t - 1], self.sqrt_ac_prev[t]
        g = (lo + (hi - lo) * torch.rand(b, generator=gen)).to(hr.device)
        eps = torch.randn(hr.shape, generator=gen).to(hr.device)
        x_noisy = g.view(-1, 1, 1, 1) * hr + torch.sqrt(1 - g.view(-1, 1, 1, 1) ** 2) * eps
        pred = model(x_noisy, lr, p, g)
        return (eps - pred.float()).abs().mean()
