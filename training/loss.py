"""The IDM objective (SR3's continuous noise level, IDM Eq. 2), with two options for few-step sampling
from an HR estimate: a Min-SNR weighting of the noise loss and a regression loss on the estimate."""

from __future__ import annotations

import torch
from torch import nn

from idm_rt.diffusion import LinearSchedule


class IDMLoss:
    """t ~ U{1..max_t}; g ~ U(sqrt_ac_prev[t], sqrt_ac_prev[t-1]); x = g y0 + sqrt(1 - g^2) eps;
    loss = mean w(g) |eps - net(x, cond, p, g)| + aux_weight * mean |cond - y0|.

    With the defaults (``max_t`` = T, ``snr_gamma`` = 0, ``aux_weight`` = 0) this is the paper's
    objective. The options:

    * ``max_t`` < T trains only the noise levels that sampling from a diffused start visits
      (truncated diffusion);
    * ``snr_gamma`` > 0 weights each sample by ``w = min(1, sqrt(gamma / SNR))``, SNR = g^2 / (1 - g^2):
      the L1 form of Min-SNR-gamma (Hang et al., ICCV 2023). Above SNR = gamma the loss becomes
      ``sqrt(gamma)`` times the L1 error of the implied clean image, ``|x0 - y0| = |eps - pred| / sqrt(SNR)``,
      the error that the few steps from a low noise level are judged by;
    * ``aux_weight`` > 0 adds an L1 regression of the encoder's condition image onto the HR image,
      so that it is an HR estimate that sampling can start from (``init="estimate"``).
    """

    def __init__(
        self,
        schedule: LinearSchedule | None = None,
        max_t: int | None = None,
        snr_gamma: float = 0.0,
        aux_weight: float = 0.0,
    ):
        sched = schedule or LinearSchedule()
        max_t = sched.timesteps if max_t is None else max_t
        if not 1 <= max_t <= sched.timesteps:
            raise ValueError(f"max_timestep must be in 1..{sched.timesteps}, got {max_t}")
        self.sqrt_ac_prev = torch.from_numpy(sched.sqrt_alphas_cumprod_prev[: max_t + 1]).float()
        self.snr_gamma, self.aux_weight = snr_gamma, aux_weight

    def weight(self, g: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of the noise loss at noise level g (B,)."""
        if not self.snr_gamma:
            return torch.ones_like(g)
        snr = g * g / (1 - g * g).clamp_min(1e-12)
        return torch.clamp(torch.sqrt(self.snr_gamma / snr.clamp_min(1e-12)), max=1.0)

    def __call__(
        self,
        model: nn.Module,
        hr: torch.Tensor,
        lr: torch.Tensor,
        p: torch.Tensor,
        gen: torch.Generator,
        denoise: bool = True,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, its parts). ``model(lr, size, p, x_t, g) -> (cond, eps)`` is an :class:`~idm_rt.IDM`
        or its DDP wrapper; p is (B,). ``denoise=False`` trains the estimate alone (no U-Net call)."""
        size = tuple(hr.shape[-2:])
        if not denoise:
            cond, _ = model(lr, size, p)
            aux = (cond.float() - hr).abs().mean()
            return aux, {"aux": aux.item()}
        b = hr.shape[0]
        t = torch.randint(1, len(self.sqrt_ac_prev), (b,), generator=gen)
        hi, lo = self.sqrt_ac_prev[t - 1], self.sqrt_ac_prev[t]
        g = (lo + (hi - lo) * torch.rand(b, generator=gen)).to(hr.device)
        eps = torch.randn(hr.shape, generator=gen).to(hr.device)
        x_noisy = g.view(-1, 1, 1, 1) * hr + torch.sqrt(1 - g.view(-1, 1, 1, 1) ** 2) * eps
        cond, pred = model(lr, size, p, x_noisy, g)
        noise = ((eps - pred.float()).abs().mean(dim=(1, 2, 3)) * self.weight(g)).mean()
        parts = {"noise": noise.item()}
        if not self.aux_weight:
            return noise, parts
        aux = (cond.float() - hr).abs().mean()
        parts["aux"] = aux.item()
        return noise + self.aux_weight * aux, parts
