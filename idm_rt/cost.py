"""What an upscale costs before it runs: the FLOPs of each stage from the input size, the output size, the U-Net
calls and the tiling, so that a service admits a request by the work it asks for, not by its pixels alone (a 1.1x
upscale of a large photo costs its encoder far more than its U-Net calls).

The FLOPs per pixel of each stage are counted once per network shape with torch on the meta device (no memory, no
weights): the encoder's body per LR pixel it computes (its tiles' halos included), its HR part per output pixel,
the conditioning per pixel of every tile, and one U-Net call per pixel of every tile, ``a + b * area`` (the
self-attention's share grows with the tile, :func:`idm_rt.tile_size.cost_per_pixel`). Back-projection and the
sampler's arithmetic cost a few FLOPs per pixel and are left out. An engine build records the counts in its
manifest, so that engines estimate without torch (:func:`flops_of`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

from .config import IDMConfig
from .tiling import TilePlan

PROBE = 32  # LR side of the counted encoder call (output twice that)


@dataclass(frozen=True)
class StageFlops:
    """FLOPs per pixel of each stage of one upscale."""

    features: float  # encoder body, per LR pixel computed
    hr: float  # encoder HR part, per output pixel
    condition: float  # conditioning, per pixel of each tile
    unet: float  # one U-Net call, per pixel of each tile ...
    unet_area: float  # ... plus this times the tile's area

    @classmethod
    def from_dict(cls, d: Any) -> StageFlops:
        """The costs a manifest or a worker's sheet records; ValueError naming what is wrong with them."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(d, dict) or sorted(d) != sorted(names):
            raise ValueError(f"stage FLOPs must be an object of {', '.join(names)}, got {d!r}")
        bad = [
            k
            for k, v in d.items()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
        ]
        if bad:
            raise ValueError(f"stage FLOPs {', '.join(bad)} must be finite numbers >= 0, got {d!r}")
        return cls(**{k: float(v) for k, v in d.items()})

    def total(
        self,
        lr_size: tuple[int, int],
        size: tuple[int, int],
        calls: int,
        tile: int | None = None,
        multiple: int = 8,
        feature_tile: int = 0,
        radius: int = 0,
    ) -> float:
        """FLOPs of one upscale of an ``lr_size`` (h, w) image to ``size`` (H, W) with ``calls`` U-Net calls in
        tiles of side ``tile`` (None: untiled); ``feature_tile`` and ``radius``: the encoder's LR tiles and the
        halo each is computed with (0: one pass)."""
        plan = TilePlan.whole(size) if tile is None else TilePlan.for_image(size, tile, multiple)
        lr_pixels = _with_halos(lr_size[0], feature_tile, radius) * _with_halos(lr_size[1], feature_tile, radius)
        per_call = plan.unet_cost(self.unet, self.unet_area)
        conditioned = sum(h * w for _, _, h, w in plan.tiles)
        return lr_pixels * self.features + size[0] * size[1] * self.hr + conditioned * self.condition + calls * per_call


def _with_halos(n: int, tile: int, radius: int) -> int:
    """LR rows (or columns) an encoder in tiles of ``tile`` with ``radius`` of halo computes for ``n``."""
    if not tile or n <= tile:
        return n
    return sum(min(a + tile + radius, n) - max(a - radius, 0) for a in range(0, n, tile))


def flops_of(model: Any) -> StageFlops:
    """The stage costs of a model the sampling loop runs: those an engine runner's build recorded (no torch needed),
    else counted for its network (:func:`stage_flops`, with torch)."""
    recorded = getattr(model, "recorded_flops", None)
    return recorded if recorded is not None else stage_flops(model.config)


@functools.lru_cache(maxsize=16)
def stage_flops(config: IDMConfig) -> StageFlops:
    """The stage costs of a network of ``config``, counted with torch on the meta device."""
    from .backends.registry import require

    require(("torch",), "counting a network's FLOPs (engines built by this version record them)")
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import IDM
    from .tile_size import cost_per_pixel

    with torch.device("meta"):
        model = IDM(config)
    counted = []
    with torch.no_grad():
        lr, x, p = (
            torch.zeros(1, 3, PROBE, PROBE, device="meta"),
            torch.zeros(1, 3, 2 * PROBE, 2 * PROBE, device="meta"),
            torch.zeros(1, device="meta"),
        )
        for call in (
            lambda: model.encoder.features(lr),
            lambda: model.encode(lr, x.shape[-2:]),
            lambda: model.condition(x, p),
        ):
            counter = FlopCounterMode(display=False)
            with counter:
                call()
            counted.append(counter.get_total_flops())
    features, encode, condition = counted
    a, b = cost_per_pixel(model)
    return StageFlops(features / PROBE**2, (encode - features) / (2 * PROBE) ** 2, condition / (2 * PROBE) ** 2, a, b)
