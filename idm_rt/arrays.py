"""The arrays the sampling loop runs on, whatever library holds them: numpy on CPUs, torch tensors (CPU or CUDA),
CuPy on GPUs without torch. The loop is written once against the Array API standard (through array-api-compat);
this module adds what the standard leaves to each library: moving host data in and out, and noise.

Noise is drawn on the host with numpy (one PCG64 stream per image, seeded), then moved to the loop's device: the same
seed gives the same numbers on every backend, so that torch, ONNX Runtime and TensorRT give the same image. For
deterministic samplers only the start is drawn (once per image); the stochastic ones draw one array per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device, is_numpy_array, is_torch_array

Array = Any  # an array of numpy, torch or CuPy


def namespace(*arrays: Array) -> Any:
    """The Array API namespace of ``arrays`` (array-api-compat's)."""
    return array_namespace(*arrays)


def like(host: np.ndarray, ref: Array) -> Array:
    """``host`` as an array of ``ref``'s library, on its device (in ``host``'s dtype)."""
    if is_numpy_array(ref):
        return host
    return namespace(ref).asarray(host if host.flags.writeable else host.copy(), device=device(ref))


def to_host(x: Array) -> np.ndarray:
    """``x`` as a numpy array (copied from a GPU)."""
    if is_numpy_array(x):
        return x
    if is_torch_array(x):
        return x.detach().cpu().numpy()
    return x.get()  # CuPy


def full_batch(x: Array, value: float) -> Array:
    """A float32 array of shape (B,) holding ``value``, B the batch of ``x``, on its device."""
    xp = namespace(x)
    return xp.full((x.shape[0],), value, dtype=xp.float32, device=device(x))


class Noise:
    """Standard normal noise for a batch, one seeded stream per image (so an image's noise does not depend on its
    batch); unseeded images draw from fresh entropy."""

    def __init__(self, seeds: Sequence[int | None]):
        self.streams = [np.random.default_rng(seed) for seed in seeds]

    def like(self, x: Array) -> Array:
        """Noise shaped like ``x`` (B, ...), in its library, dtype float32, on its device."""
        if len(self.streams) != x.shape[0]:
            raise ValueError(f"noise for {len(self.streams)} images asked for a batch of {x.shape[0]}")
        host = np.stack([s.standard_normal(tuple(x.shape[1:]), dtype=np.float32) for s in self.streams])
        return like(host, x)
