"""The released code's per-call work, emulated on our modules for a fair baseline.

In the release, every U-Net call recomputes the whole LR pyramid: ``conv_body_first``, all L
``conv_body_down`` steps (the last one unused), the shift of every level including the unused
level 0, and clones of each; its implicit layers run the two-Linear MLP per target pixel. Our
model has no weights for the unused parts, so same-shape random layers stand in for them: they
cost what the release spends there.
"""

from __future__ import annotations

import torch

from idm_rt.model import IDM
from idm_rt.model.conditioning import ConvAct
from idm_rt.model.layers import EqualConv2d


class ReleaseStyle:
    """``denoise(x_t, cond, p, g)`` doing the release's per-call work; ``model`` stays unchanged."""

    def __init__(self, model: IDM):
        cfg = model.config
        self.model = model
        self.shift0 = EqualConv2d(cfg.inner_channel, cfg.channels[0], 3, padding=1)
        self.last_down = ConvAct(cfg.channels[-2], cfg.channels[-1], stride=2, blur=True)

    def denoise(self, x_t: torch.Tensor, cond: torch.Tensor, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        m = self.model
        c = m.condition(cond, p)
        b, _, h, w = cond.shape
        self.shift0(torch.empty(b, m.config.inner_channel, h, w).normal_())  # level 0: computed, unused
        last = c.shifts[-1]
        self.last_down(torch.empty(b, m.config.channels[-2], *last.shape[-2:]).normal_())  # last step: unused
        c.shifts = [s.clone() if s is not None else None for s in c.shifts]
        m.set_implicit_form("literal")
        try:
            return m.denoise(x_t, c, g)
        finally:
            m.set_implicit_form("fast")
