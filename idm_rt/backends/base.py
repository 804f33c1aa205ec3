"""What every engine runner shares: the small model interface the pipeline calls (``encode``,
``condition``, ``denoise``, ``scale_fraction``, ``config``), mapped onto the directory's graphs.

Every call runs at its input's own size, never padded, so an engine computes what the torch model
computes: the U-Net on a bucket's static graph when the tile is exactly the bucket's size, on the
dynamic graph otherwise. Subclasses only implement :meth:`EngineRunner.run_graph`, one graph call
on named torch tensors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..buckets import Bucket, route, select_bucket
from ..model import Conditioning
from ..model.conditioning import scale_fraction
from ..model.encoder import features_in_tiles, in_blocks, receptive_radius, resize_tables
from ..model.unet import query_tables_for
from ..resize import upscale
from .engine_dir import (
    Manifest,
    graph_inputs,
    graph_key,
    graph_specs,
    read_manifest,
    table_names,
)


def parse_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, with a ValueError naming ``device`` for a string or type torch does not know."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:  # torch's words for them
        raise ValueError(f"unknown device {device!r}: {str(e).splitlines()[0]}") from None


class EngineRunner:
    """Runs a built engine directory behind the interface of :class:`~idm_rt.IDM` that
    :func:`idm_rt.pipeline.super_resolve` and tiling use; tensors in and out are torch tensors."""

    backend: str  # each runner's own; the SamplingModel protocol (idm_rt.model.protocol)

    def __init__(self, folder: str | os.PathLike, device: str | torch.device):
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(folder)
        self.device = parse_device(device)
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

    def prepare(self, device: torch.device) -> EngineRunner:
        """Itself: a runner runs on the device it was loaded for, and no other."""
        if torch.device(device) != self.device:
            raise ValueError(f"these engines were loaded for {self.device}, not {device}; load them for it")
        return self

    def scale_fraction(self, scale: torch.Tensor | float) -> torch.Tensor:
        """p = (s - 1) / (M - 1), M recorded in the manifest."""
        return scale_fraction(scale, self.max_scale)

    def sampling(self) -> contextlib.AbstractContextManager:
        """The context :func:`~idm_rt.pipeline.super_resolve` samples in (nothing by default)."""
        return contextlib.nullcontext()

    def auto_tile(self, size: tuple[int, int], max_memory: int | None = None) -> int | None:
        """The tile side the bucket rule picks for an HR output ``size`` (None: no tiling); the buckets,
        built for their batches, already set the memory."""
        return route(self.buckets, size, self.config.size_multiple).tile

    def _inputs(self, kind: str, tensors) -> dict[str, torch.Tensor]:
        return dict(zip(graph_inputs(kind, self.config), tensors))

    def encode(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """LR (B, 3, h, w) -> condition image (B, 3, H, W), as the torch encoder computes it, one image at
        a time: the LR features in tiles (:func:`~idm_rt.model.encoder.features_in_tiles`), the HR part
        in blocks (:func:`~idm_rt.model.encoder.in_blocks`, the same tables), plus the bicubic upscale
        for the implicit upsampler; so memory, and a TensorRT profile, is bounded by the tile and the block."""
        if size[0] < lr.shape[-2] or size[1] < lr.shape[-1]:  # a block would read more than its profile allows
            raise ValueError(f"engines upscale: the output ({size[1]}x{size[0]}) is smaller than the LR image "
                             f"({lr.shape[-1]}x{lr.shape[-2]}) on one axis; use the torch backend to downscale")
        tables = resize_tables(self.config.encoder_upsampler, tuple(lr.shape[-2:]), size, lr.device)
        names = graph_inputs("encoder_block", self.config)
        radius = receptive_radius(self.config.encoder_blocks)

        def features(part: torch.Tensor) -> torch.Tensor:
            return self.run_graph("encoder", {"lr": part})[0]

        def block(*inputs: torch.Tensor) -> torch.Tensor:
            return self.run_graph("encoder_block", dict(zip(names, inputs)))[0]

        out = torch.cat([in_blocks(block, features_in_tiles(features, image[None], radius), *tables) for image in lr])
        return out + upscale(lr, size) if self.config.encoder_upsampler == "implicit" else out

    def condition(self, cond: torch.Tensor, p: torch.Tensor) -> Conditioning:
        """The conditioning at ``cond``'s own size, one sample at a time."""
        self._covering_bucket(tuple(cond.shape[-2:]))
        p = p.to(cond.device, torch.float32).view(-1).expand(cond.shape[0])
        out = run_batched(lambda part: self.run_graph("conditioner", part), self._inputs("conditioner", (cond, p)),
                          1, 1)
        return Conditioning.from_flat(cond, out)

    def denoise(self, x_t: torch.Tensor, conditioning: Conditioning, noise_level: torch.Tensor) -> torch.Tensor:
        """eps for x_t (B, 3, h, w): on the static graph of the bucket of exactly that size, else on
        the dynamic graph with the implicit layers' tables for (h, w)."""
        size = tuple(x_t.shape[-2:])
        self._covering_bucket(size)
        g = noise_level.to(x_t.device, torch.float32).view(-1).expand(x_t.shape[0])
        per_sample = self._inputs("unet", [x_t, conditioning.cond, *conditioning.flat(), g])
        exact = next((b for b in self.buckets if (b.height, b.width) == size), None)
        if exact is not None:
            key = graph_key("unet", exact)
            return run_batched(lambda part: self.run_graph(key, part), per_sample, exact.max_batch,
                               exact.min_batch)[0]
        tables = [t for four in query_tables_for(size, self.config.levels, x_t.device) for t in four]
        shared = dict(zip(table_names(self.config.levels), tables))  # per size, not per sample
        return run_batched(lambda part: self.run_graph("unet_dynamic", {**part, **shared}), per_sample,
                           max(b.max_batch for b in self.buckets), 1)[0]

    def _covering_bucket(self, size: tuple[int, int]) -> Bucket:
        """The bucket rule's bucket for an HR tile of ``size``; a clear error when none covers it."""
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

