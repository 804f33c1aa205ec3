"""What every engine runner shares: the small model interface the pipeline calls (``encode``,
``condition``, ``denoise``, ``scale_fraction``, ``asarray``, ``config``), mapped onto the directory's graphs.

Every call runs at its input's own size, never padded, so an engine computes what the torch model
computes: the U-Net on a bucket's static graph when the tile is exactly the bucket's size, on the
dynamic graph otherwise. Subclasses implement :meth:`EngineRunner.run_graph`, one graph call on named arrays,
and say which array library holds their arrays (numpy on CPUs; torch or CuPy on GPUs): no torch is needed on a CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import Array, namespace
from ..buckets import TileCosts, dynamic_limit, route, select_bucket
from ..cost import StageFlops
from ..devices import Device, parse_device
from ..model.pieces import Conditioning, features_in_tiles, in_blocks, receptive_radius, scale_fraction
from ..model.tables import query_tables_for, resize_tables
from ..resize import bicubic_upscale
from ..stage_timing import ENGINE_ARRAYS, stage
from .engine_dir import (
    Manifest,
    graph_inputs,
    graph_key,
    graph_specs,
    read_manifest,
    table_names,
)


class EngineRunner:
    """Runs a built engine directory behind the interface of :class:`~idm_rt.IDM` that
    :func:`idm_rt.pipeline.super_resolve` and tiling use (:class:`~idm_rt.model.protocol.SamplingModel`)."""

    backend: str  # each runner's own; the SamplingModel protocol (idm_rt.model.protocol)
    # The dynamic graph's largest tile side, in sides of the largest bucket (the tile rule weighs it, costs_for).
    dynamic_reach = 1

    def __init__(self, folder: str | os.PathLike, device: str | Device):
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(folder)
        self.device = parse_device(device)
        self.config = self.manifest.config
        self.max_scale = float(self.manifest.max_scale)
        self.buckets = self.manifest.buckets
        # what the work of an upscale costs (idm_rt.cost.flops_of), as the build counted it
        self.recorded_flops = StageFlops.from_dict(self.manifest.stage_flops) if self.manifest.stage_flops else None
        absent = [
            key
            for key in (graph_key(*spec) for spec in graph_specs(self.buckets, self.manifest.static))
            if key not in self.manifest.graphs
        ]
        if absent:
            raise ValueError(
                f"{folder} is incomplete, it has no {', '.join(absent)} (a build was interrupted "
                f"or is still running); run python -m idm_rt.build for it again"
            )

    def run_graph(self, key: str, inputs: dict[str, Array]) -> list[Array]:
        """Run graph ``key`` (see :func:`~idm_rt.backends.engine_dir.graph_key`) on named inputs; float32 outputs."""
        raise NotImplementedError

    def asarray(self, host: np.ndarray) -> Array:
        """A host array as this runner's kind of array, on its device (numpy itself on a CPU)."""
        raise NotImplementedError

    def prepare(self, device: str | Device) -> EngineRunner:
        """Itself: a runner runs on the device it was loaded for, and no other."""
        if parse_device(device) != self.device:
            raise ValueError(f"these engines were loaded for {self.device}, not {device}; load them for it")
        return self

    def scale_fraction(self, scale: Any) -> Array:
        """p = (s - 1) / (M - 1), M recorded in the manifest."""
        return self.asarray(scale_fraction(scale, self.max_scale))

    def sampling(self) -> contextlib.AbstractContextManager:
        """The context :func:`~idm_rt.pipeline.super_resolve` samples in (nothing by default)."""
        return contextlib.nullcontext()

    def _inputs(self, kind: str, arrays) -> dict[str, Array]:
        return dict(zip(graph_inputs(kind, self.config), arrays))

    def encode(self, lr: Array, size: tuple[int, int]) -> Array:
        """LR (B, 3, h, w) -> condition image (B, 3, H, W), as the torch encoder computes it, one image at
        a time: the LR features in tiles (:func:`~idm_rt.model.encoder.features_in_tiles`), the HR part
        in blocks (:func:`~idm_rt.model.encoder.in_blocks`, the same tables), plus the bicubic upscale
        for the implicit upsampler; so memory, and a TensorRT profile, is bounded by the tile and the block."""
        if size[0] < lr.shape[-2] or size[1] < lr.shape[-1]:  # a block would read more than its profile allows
            raise ValueError(
                f"engines upscale: the output ({size[1]}x{size[0]}) is smaller than the LR image "
                f"({lr.shape[-1]}x{lr.shape[-2]}) on one axis; use the torch backend to downscale"
            )
        tables = resize_tables(self.config.encoder_upsampler, tuple(lr.shape[-2:]), size)
        names = graph_inputs("encoder_block", self.config)
        radius = receptive_radius(self.config.encoder_blocks)

        def features(part: Array) -> Array:
            return self.run_graph("encoder", {"lr": part})[0]

        def block(*inputs: Array) -> Array:
            return self.run_graph("encoder_block", dict(zip(names, inputs)))[0]

        xp = namespace(lr)
        out = xp.concat(
            [in_blocks(block, features_in_tiles(features, lr[i : i + 1], radius), *tables) for i in range(lr.shape[0])]
        )
        return out + bicubic_upscale(lr, size) if self.config.encoder_upsampler == "implicit" else out

    @classmethod
    def static_speedup(cls, winograd: bool, precision: str) -> float:
        """How many times faster per pixel a static U-Net graph (of a build with Winograd convolutions or not, in
        ``precision``) runs than the dynamic graph: 1 unless a runner measured otherwise."""
        return 1.0

    @classmethod
    def costs_for(cls, flops: StageFlops | None, static: bool, winograd: bool, precision: str) -> TileCosts:
        """What the tile rule weighs for engines of this kind (with static graphs or not, Winograd convolutions or
        not, in ``precision``): their static graphs' speed, the U-Net's cost growth with the tile's area (as the build
        counted it, ``flops``) and the dynamic graph's reach."""
        attention = flops.unet_area / flops.unet if flops is not None and flops.unet > 0 else 0.0
        speedup = cls.static_speedup(winograd, precision) if static else 1.0
        return TileCosts(speedup, attention, cls.dynamic_reach)

    def tile_costs(self) -> TileCosts:
        """What the tile rule weighs for these engines (:meth:`costs_for` of their manifest)."""
        winograd = self.manifest.build_flags.get("conv") == "winograd"
        return self.costs_for(self.recorded_flops, self.manifest.static, winograd, self.manifest.precision)

    def condition(self, cond: Array, p: Array) -> Conditioning:
        """The conditioning at ``cond``'s own size, one sample at a time."""
        self._check_tile(tuple(cond.shape[-2:]))
        xp = namespace(cond)
        p = xp.broadcast_to(xp.reshape(xp.astype(p, xp.float32), (-1,)), (cond.shape[0],))
        out = run_batched(
            lambda part: self.run_graph("conditioner", part), self._inputs("conditioner", (cond, p)), 1, 1
        )
        return Conditioning.from_flat(cond, out)

    def denoise(self, x_t: Array, conditioning: Conditioning, noise_level: Array) -> Array:
        """eps for x_t (B, 3, h, w): on the static graph of the bucket of exactly that size, else on
        the dynamic graph with the implicit layers' tables for (h, w)."""
        size = tuple(x_t.shape[-2:])
        self._check_tile(size)
        xp = namespace(x_t)
        with stage(ENGINE_ARRAYS):
            g = xp.broadcast_to(xp.reshape(xp.astype(noise_level, xp.float32), (-1,)), (x_t.shape[0],))
            per_sample = self._inputs("unet", [x_t, conditioning.cond, *conditioning.flat(), g])
        exact = next((b for b in self.buckets if (b.height, b.width) == size and self.manifest.static), None)
        if exact is not None:
            key = graph_key("unet", exact)
            return run_batched(lambda part: self.run_graph(key, part), per_sample, exact.max_batch, exact.min_batch)[0]
        with stage(ENGINE_ARRAYS):
            tables = [self.asarray(t) for four in query_tables_for(size, self.config.levels) for t in four]
            shared = dict(zip(table_names(self.config.levels), tables))  # per size, not per sample
        return run_batched(
            lambda part: self.run_graph("unet_dynamic", {**part, **shared}),
            per_sample,
            max(b.max_batch for b in self.buckets),
            1,
        )[0]

    def _check_tile(self, size: tuple[int, int]) -> None:
        """A clear error when an HR tile of ``size`` is beyond what the engines run: no bucket covers it and it exceeds
        the dynamic graph's reach."""
        if select_bucket(self.buckets, size) is not None:
            return
        limit = dynamic_limit(self.buckets, self.config.size_multiple, self.tile_costs())
        if max(size) > limit:
            built = ", ".join(b.name for b in self.buckets)
            raise ValueError(
                f"no engine bucket covers an HR tile of {size[1]}x{size[0]} (built: {built}) and these engines run "
                f"tiles beyond their buckets up to {limit}x{limit}; use a tile of at most {limit} or rebuild with a "
                "larger --tile"
            )


def bucket_tile(runner: EngineRunner, size: tuple[int, int], max_memory: int | None = None) -> int | None:
    """The tile side the bucket rule picks for an HR output ``size`` (None: no tiling); the buckets, built for their
    batches, set the memory (tiles beyond them, up to the dynamic graph's reach, at most its square times the reach
    squared)."""
    return route(runner.buckets, size, runner.config.size_multiple, runner.tile_costs()).tile


def run_batched(
    run: Callable[[dict[str, Array]], list[Array]], inputs: dict[str, Array], max_batch: int, min_batch: int
) -> list[Array]:
    """``run`` on chunks of at most max_batch samples, short chunks padded to min_batch by repeating
    their last sample (samples are independent); outputs trimmed and concatenated along the batch."""
    first = next(iter(inputs.values()))
    xp, n = namespace(first), first.shape[0]
    chunks = []
    for start in range(0, n, max_batch):
        part = {k: v[start : start + max_batch] for k, v in inputs.items()}
        m = next(iter(part.values())).shape[0]
        if m < min_batch:
            part = {k: xp.concat([v, xp.broadcast_to(v[-1:], (min_batch - m, *v.shape[1:]))]) for k, v in part.items()}
        chunks.append([o[:m] for o in run(part)])
    return [xp.concat(outs) if len(outs) > 1 else outs[0] for outs in zip(*chunks)]
