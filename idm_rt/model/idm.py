"""The whole IDM network: encoder, LR conditioner and U-Net behind one small API."""

from __future__ import annotations

import torch
from torch import nn

from ..config import IDMConfig
from .conditioning import Conditioning, LRConditioner
from .encoder import EDSREncoder
from .implicit import KERNEL_MODES, ImplicitUp
from .unet import UNet


class IDM(nn.Module):
    """Implicit Diffusion Model for continuous super-resolution.

    Images are float tensors in [-1, 1], NCHW, RGB. The sampling loop calls only
    :meth:`denoise`; :meth:`encode` and :meth:`condition` run once per image.

    Attributes:
        config: the network shape.
        max_scale: the largest magnification M seen in training; ``p = (s-1)/(M-1)``.
        provenance: where the weights came from (saved with the project format).
        defaults: the sampling settings recommended for these weights (``sampler``, ``steps``,
            ``init``, ``init_level``, ``consistency``), used by ``Upscaler.from_pretrained``.
    """

    def __init__(self, config: IDMConfig, max_scale: float = 4.0):
        super().__init__()
        if not max_scale > 1:
            raise ValueError(f"max_scale (the largest training magnification M) must be > 1, got {max_scale}")
        self.config = config
        self.max_scale = float(max_scale)
        self.provenance: dict = {}
        self.defaults: dict = {}
        self.encoder = EDSREncoder(config.encoder_blocks, config.encoder_feats, config.encoder_upsampler)
        self.conditioner = LRConditioner(config)
        self.unet = UNet(config)

    def scale_fraction(self, scale: torch.Tensor | float) -> torch.Tensor:
        """``p = (s - 1) / (M - 1)`` per sample; p > 1 extrapolates beyond the trained range."""
        s = torch.as_tensor(scale, dtype=torch.float32).view(-1)
        return (s - 1.0) / (self.max_scale - 1.0)

    def encode(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """LR (B, 3, h, w) -> condition image (B, 3, H, W) at the output size."""
        return self.encoder(lr, size)

    def condition(self, cond: torch.Tensor, p: torch.Tensor) -> Conditioning:
        """Condition image and per-sample scale fraction p (B,) -> the U-Net's conditioning."""
        return self.conditioner(cond, p.to(cond.device))

    def denoise(self, x_t: torch.Tensor, conditioning: Conditioning, noise_level: torch.Tensor) -> torch.Tensor:
        """Predict the noise in x_t (B, 3, H, W) at noise level g = sqrt(gamma) (B,)."""
        return self.unet(x_t, conditioning, noise_level.to(x_t.device))

    def forward(self, lr: torch.Tensor, size: tuple[int, int], p: torch.Tensor, x_t: torch.Tensor | None = None,
                noise_level: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The whole network in one call (training, DDP): ``(cond, eps)``; encode, condition, denoise.
        Without ``x_t`` only the encoder runs and eps is None (regression-only training steps)."""
        cond = self.encode(lr, size)
        if x_t is None:
            return cond, None
        return cond, self.denoise(x_t, self.condition(cond, p), noise_level)

    def set_implicit_form(self, form: str) -> None:
        """``"fast"`` (default) or ``"literal"`` (the release's per-pixel MLP, kept as the reference)."""
        if form not in ("fast", "literal"):
            raise ValueError(f"implicit form must be 'fast' or 'literal', not {form!r}")
        for m in self.implicit_layers():
            m.literal = form == "literal"

    def set_kernels(self, mode: str) -> None:
        """Implicit layers on the fused Triton kernels: ``"auto"`` (on CUDA when Triton is installed),
        ``"triton"`` (always; CPU tensors need ``TRITON_INTERPRET=1``) or ``"torch"`` (never)."""
        if mode not in KERNEL_MODES:
            raise ValueError(f"kernels must be one of {KERNEL_MODES}, not {mode!r}")
        for m in self.implicit_layers():
            m.kernels = mode

    def implicit_layers(self) -> list[ImplicitUp]:
        """The U-Net's implicit up-layers, deepest first."""
        return [m for m in self.modules() if isinstance(m, ImplicitUp)]
