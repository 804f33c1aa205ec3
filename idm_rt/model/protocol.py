"""What the sampling loop needs of a model: the torch :class:`~idm_rt.IDM` and every engine runner
(:class:`~idm_rt.backends.EngineRunner`) implement it, so that :func:`idm_rt.pipeline.super_resolve`,
tiling and the Upscaler never ask which one they hold. Arrays are the model's own kind (torch tensors, numpy or
CuPy arrays; :mod:`idm_rt.arrays`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..arrays import Array
from ..config import IDMConfig
from .pieces import Conditioning


@runtime_checkable
class SamplingModel(Protocol):
    """A model as the sampling loop calls it.

    Attributes:
        backend: the name of the backend that runs it (:mod:`idm_rt.backends.registry`).
        config: the network shape (the U-Net's size multiple, its levels).
        max_scale: the largest training magnification M of ``p = (s - 1) / (M - 1)``.
    """

    backend: str
    config: IDMConfig
    max_scale: float

    def prepare(self, device: Any) -> SamplingModel:
        """The model ready to sample on ``device`` (ValueError where it cannot run there)."""

    def asarray(self, host: np.ndarray) -> Array:
        """A host array as this model's kind of array, on its device."""

    def scale_fraction(self, scale: Sequence[float] | float) -> Array:
        """p per sample for magnification ``scale`` (:func:`~idm_rt.model.pieces.scale_fraction`)."""

    def encode(self, lr: Array, size: tuple[int, int]) -> Array:
        """LR (B, 3, h, w) -> condition image (B, 3, H, W), once per image."""

    def condition(self, cond: Array, p: Array) -> Conditioning:
        """Condition image and scale fractions -> the U-Net's conditioning, once per image or tile."""

    def denoise(self, x_t: Array, conditioning: Conditioning, noise_level: Array) -> Array:
        """The noise in x_t at noise level g (B,): the only call inside the loop."""

    def sampling(self) -> contextlib.AbstractContextManager:
        """The context an image is sampled in (torch's no_grad, an engine runner's thread setup)."""
