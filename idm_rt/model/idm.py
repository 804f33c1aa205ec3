"""The whole IDM network: encoder, LR conditioner and U-Net behind one small API."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..config import IDMConfig, check_max_scale
from .conditioning import LRConditioner
from .encoder import EDSREncoder
from .implicit import KERNEL_MODES, ImplicitUp
from .pieces import Conditioning, scale_fraction
from .unet import UNet

if TYPE_CHECKING:
    from ..sampling import SamplingSettings


# Largest network built: 4 GiB of float32 weights (the released network has 118 M parameters). The
# count comes from the config, so that a crafted one is refused before anything is allocated.
MAX_PARAMETERS = 2**30


def parameter_count(config: IDMConfig) -> int:
    """Parameters of the network ``config`` describes, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        parts = (
            EDSREncoder(config.encoder_blocks, config.encoder_feats, config.encoder_upsampler),
            LRConditioner(config),
            UNet(config),
        )
    return sum(p.numel() for part in parts for p in part.parameters())


def check_size(config: IDMConfig) -> None:
    """ValueError naming the count and the limit when ``config`` describes more than
    :data:`MAX_PARAMETERS` parameters."""
    try:
        count = parameter_count(config)
    except RuntimeError:  # a weight shape beyond int64 ("numel: integer multiplication overflow")
        count = 2**63
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"the network this config describes has {count:,} parameters, above the limit of "
            f"{MAX_PARAMETERS:,} (inner_channel {config.inner_channel}, channel_multiplier "
            f"{list(config.channel_multiplier)}, encoder_feats {config.encoder_feats})"
        )


class IDM(nn.Module):
    """Implicit Diffusion Model for continuous super-resolution.

    Images are float tensors in [-1, 1], NCHW, RGB. The sampling loop calls only
    :meth:`denoise`; :meth:`encode` and :meth:`condition` run once per image.

    Attributes:
        config: the network shape.
        max_scale: the largest magnification M seen in training; ``p = (s-1)/(M-1)``.
        provenance: where the weights came from (saved with the project format).
        recommended: the :class:`~idm_rt.SamplingSettings` recommended for these weights (stored with
            them, used by ``Upscaler.from_pretrained``), or None.
        presets: other named settings for these weights (``quality="fast"``, ...), stored with them.
    """

    def __init__(self, config: IDMConfig, max_scale: float = 4.0):
        super().__init__()
        max_scale = check_max_scale(max_scale)
        check_size(config)
        self.config = config
        self.max_scale = float(max_scale)
        self.provenance: dict = {}
        self.recommended: SamplingSettings | None = None
        self.presets: dict[str, SamplingSettings] = {}
        self.encoder = EDSREncoder(config.encoder_blocks, config.encoder_feats, config.encoder_upsampler)
        self.conditioner = LRConditioner(config)
        self.unet = UNet(config)

    backend = "torch"  # the SamplingModel protocol (idm_rt.model.protocol), which the loop calls

    def prepare(self, device: Any) -> IDM:
        """On ``device`` ("cpu", "cuda:1", a :class:`~idm_rt.devices.Device` or a ``torch.device``), in eval mode
        (dropout off); ValueError naming a device this torch cannot put tensors on."""
        name = str(device)
        if name.startswith("meta"):  # before the move: on meta the weights would be gone
            raise ValueError("device 'meta' holds no values to compute with; use 'cpu' or 'cuda'")
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this torch has no CUDA device")
        try:
            target = torch.device(name)
            torch.empty(0, device=target)  # mps, xla, cuda:7, ...: can this torch put tensors there?
        except Exception as e:  # noqa: BLE001 (torch raises several types for a device it cannot use)
            raise ValueError(
                f"device {name!r} cannot be used here ({e.__class__.__name__}: {str(e).splitlines()[0]})"
            ) from None
        return self.to(target).eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def asarray(self, host: np.ndarray) -> torch.Tensor:
        """A host array as a tensor on this model's device (the SamplingModel protocol)."""
        return torch.from_numpy(np.ascontiguousarray(host)).to(self.device)

    def scale_fraction(self, scale: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
        """``p = (s - 1) / (M - 1)`` per sample, on this model's device; p > 1 extrapolates beyond the trained
        range (:func:`~idm_rt.model.pieces.scale_fraction`)."""
        if isinstance(scale, torch.Tensor):
            scale = scale.detach().cpu().numpy()
        return self.asarray(scale_fraction(scale, self.max_scale))

    def sampling(self) -> contextlib.AbstractContextManager:
        """No autograd while an image is sampled."""
        return torch.no_grad()

    def encode(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """LR (B, 3, h, w) -> condition image (B, 3, H, W) at the output size."""
        return self.encoder(lr, size)

    def condition(self, cond: torch.Tensor, p: torch.Tensor) -> Conditioning:
        """Condition image and per-sample scale fraction p (B,) -> the U-Net's conditioning."""
        return self.conditioner(cond, p.to(cond.device))

    def denoise(self, x_t: torch.Tensor, conditioning: Conditioning, noise_level: torch.Tensor) -> torch.Tensor:
        """Predict the noise in x_t (B, 3, H, W) at noise level g = sqrt(gamma) (B,)."""
        return self.unet(x_t, conditioning, noise_level.to(x_t.device))

    def forward(
        self,
        lr: torch.Tensor,
        size: tuple[int, int],
        p: torch.Tensor,
        x_t: torch.Tensor | None = None,
        noise_level: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
