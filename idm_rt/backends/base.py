"""What every engine runner shares: the small model interface the pipeline calls (``encode``,
``condition``, ``denoise``, ``scale_fraction``, ``config``), mapped onto per-bucket graphs.

Subclasses only implement :meth:`EngineRunner.run_graph`, one graph call on named torch tensors.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..buckets import route, select_bucket
from ..model import IDM, Conditioning
from ..model.encoder import nearest_indices
from .engine_dir import (CONDITIONER_INPUTS, ENCODER_INPUTS, Manifest, flatten_conditioning, graph_key, graph_specs,
                         read_manifest, unet_inputs, unflatten_conditioning)


class EngineRunner:
    """Runs a built engine directory behind the interface of :class:`~idm_rt.IDM` that
    :func:`idm_rt.pipeline.super_resolve` and tiling use; tensors in and out are torch tensors."""

    # p = (s - 1) / (M - 1): the same function as the torch model's, reading self.max_scale.
    scale_fraction = IDM.scale_fraction

    def __init__(self, folder: str | os.PathLike, device: str | torch.device):
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(folder)
        self.device = torch.device(device)
        self.config = self.manifest.config
        self.max_scale = float(self.manifest.max_scale)
        self.buckets = self.manifest.buckets
        absent = [key for key in (graph_key(*spec) for spec in graph_specs(self.buckets))
                  if key not in self.manifest.graphs]
        if absent:
            raise ValueError(f"{folder} is incomplete, it has no {', '.join(absent)} (a build was interrupted "
                             f"or is still running); run python -m idm_rt.build for it again")

    def run_graph(self, key: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Run graph ``key`` (see :func:`~idm_rt.backends.engine_dir.graph_key`) on named inputs."""
        raise NotImplementedError

    def sampling(self) -> contextlib.AbstractContextManager:
        """The context :func:`~idm_rt.pipeline.super_resolve` samples in (nothing by default)."""
        return contextlib.nullcontext()

    def auto_tile(self, size: tuple[int, int]) -> int | None:
        """The tile side the bucket rule picks for an HR output ``size`` (None: no tiling)."""
        return route(self.buckets, size, self.config.size_multiple).tile

    def encode(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """LR (B, 3, h, w) -> condition image (B, 3, H, W); nearest indices exactly as F.interpolate's.
        One image at a time: the encoder runs on whole images, so a TensorRT engine reserves memory
        for the largest size it accepts, and a batch of them would multiply that."""
        rows = nearest_indices(lr.shape[-2], size[0], lr.device)
        cols = nearest_indices(lr.shape[-1], size[1], lr.device)
        return torch.cat([self.run_graph("encoder", dict(zip(ENCODER_INPUTS, (image[None], rows, cols))))[0]
                          for image in lr])

    def condition(self, cond: torch.Tensor, p: torch.Tensor) -> Conditioning:
        """Conditioning at the bucket shape covering ``cond`` (edge-padded to it if smaller), one sample at a time."""
        bucket = self._bucket(tuple(cond.shape[-2:]))
        padded = _pad_to(cond, (bucket.height, bucket.width))
        p = p.to(cond.device, torch.float32).view(-1).expand(cond.shape[0])
        key = graph_key("conditioner", bucket)
        out = run_batched(lambda part: self.run_graph(key, part), dict(zip(CONDITIONER_INPUTS, (padded, p))), 1, 1)
        return unflatten_conditioning(padded, out)

    def denoise(self, x_t: torch.Tensor, conditioning: Conditioning, noise_level: torch.Tensor) -> torch.Tensor:
        """eps for x_t (B, 3, h, w); runs at the conditioning's bucket shape and crops back to (h, w)."""
        bucket = self._bucket(tuple(conditioning.cond.shape[-2:]))
        h, w = x_t.shape[-2:]
        g = noise_level.to(x_t.device, torch.float32).view(-1).expand(x_t.shape[0])
        tensors = [_pad_to(x_t, (bucket.height, bucket.width)), conditioning.cond,
                   *flatten_conditioning(conditioning), g]
        key = graph_key("unet", bucket)
        out = run_batched(lambda part: self.run_graph(key, part), dict(zip(unet_inputs(self.config.levels), tensors)),
                          bucket.max_batch, bucket.min_batch)
        return out[0][:, :, :h, :w]

    def _bucket(self, size: tuple[int, int]):
        bucket = select_bucket(self.buckets, size)
        if bucket is None:
            built = ", ".join(b.name for b in self.buckets)
            raise ValueError(f"no engine bucket covers an HR tile of {size[1]}x{size[0]} (built: {built}); "
                             f"use a tile of at most {self.auto_tile(size)} or rebuild with a larger --tile")
        return bucket


def run_batched(run: Callable[[dict[str, torch.Tensor]], list[torch.Tensor]], inputs: dict[str, torch.Tensor],
                max_batch: int, min_batch: int) -> list[torch.Tensor]:
    """``run`` on chunks of at most max_batch samples, short chunks padded to min_batch by repeating
    their last sample (samples are independent); outputs trimmed and concatenated along the batch."""
    n = next(iter(inputs.values())).shape[0]
    chunks = []
    for start in range(0, n, max_batch):
        part = {k: v[start:start + max_batch] for k, v in inputs.items()}
        m = next(iter(part.values())).shape[0]
        if m < min_batch:
            part = {k: torch.cat([v, v[-1:].expand(min_batch - m, *v.shape[1:])]) for k, v in part.items()}
        chunks.append([o[:m] for o in run(part)])
    return [torch.cat(outs) for outs in zip(*chunks)]


def _pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Edge-pad (B, C, h, w) on the bottom and right to ``size``; unchanged when it already fits."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    return x if dh == dw == 0 else F.pad(x, (0, dw, 0, dh), mode="replicate")
