"""What the sampling loop needs of a model: the torch :class:`~idm_rt.IDM` and every engine runner
(:class:`~idm_rt.backends.EngineRunner`) implement it, so that :func:`idm_rt.pipeline.super_resolve`,
tiling and the Upscaler never ask which one they hold."""

from __future__ import annotations

import contextlib
from typing import Protocol, runtime_checkable

import torch

from ..config import IDMConfig
from .conditioning import Conditioning


@runtime_checkable
class SamplingModel(Protocol):
    """A model as the sampling loop calls it.

    Attributes:
        backend: ``"torch"``, or the engine backend that runs it (``"onnxruntime"``, ``"tensorrt"``).
        config: the network shape (the U-Net's size multiple, its levels).
        max_scale: the largest training magnification M of ``p = (s - 1) / (M - 1)``.
    """

    backend: str
    config: IDMConfig
    max_scale: float

    def prepare(self, device: torch.device) -> SamplingModel:
        """The model ready to sample on ``device`` (ValueError where it cannot run there)."""

    def scale_fraction(self, scale: torch.Tensor | float) -> torch.Tensor:
        """p per sample for magnification ``scale`` (:func:`~idm_rt.model.conditioning.scale_fraction`)."""

    def encode(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """LR (B, 3, h, w) -> condition image (B, 3, H, W), once per image."""

    def condition(self, cond: torch.Tensor, p: torch.Tensor) -> Conditioning:
        """Condition image and scale fractions -> the U-Net's conditioning, once per image or tile."""

    def denoise(self, x_t: torch.Tensor, conditioning: Conditioning, noise_level: torch.Tensor) -> torch.Tensor:
        """The noise in x_t at noise level g (B,): the only call inside the loop."""

    def sampling(self) -> contextlib.AbstractContextManager:
        """The context an image is sampled in (an engine runner's thread setup, say)."""

    def auto_tile(self, size: tuple[int, int], max_memory: int | None = None) -> int | None:
        """The tile side this model picks for an HR output of ``size`` (H, W), within ``max_memory`` bytes
        where it plans memory; None: untiled. It depends on neither the batch nor the moment, so an image
        comes out the same in any batch and at any time."""
