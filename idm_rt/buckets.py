"""Engine buckets: the HR tile shapes (plus a batch range) that engines are built for.

The U-Net's tensor shapes depend only on the HR tile it denoises and on the batch, not on the
scale (the scale enters through the small conditioning vectors), so one engine per tile shape
serves every scale. Each bucket gets a U-Net graph of its static shape; one more U-Net graph
with dynamic sizes (and the conditioner) runs every other size up to the largest bucket (ONNX
Runtime's, which has no size limit of its own, up to twice its side), at that size: nothing is
ever padded, so every engine computes what the torch model computes.

The rule that maps a request (input size h x w, scale s) onto the graphs is :data:`RULE`.

Batches larger than a bucket's maximum run in chunks, smaller than its minimum are padded by
repeating the last sample (samples are independent, so the results do not change).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RULE = """\
1. the output is H x W = round(h*s) x round(w*s), as idm_rt.Upscaler.output_size;
2. when a bucket covers the output (height >= H and width >= W) it runs untiled: on that
   bucket's static graph when it is exactly its size, else on the dynamic graph at its own size;
3. when no bucket covers the output it is denoised in overlapping square tiles blended at every
   step (idm_rt.tiling) whose side, a multiple of the U-Net's size multiple from half the largest
   square inside the largest bucket up to that square (up to twice it where the dynamic graph has
   no size limit of its own: ONNX Runtime's), covers the output at the least estimated cost: the
   tiles' pixels times a U-Net call's cost per pixel at the tile's area (the self-attention's share
   grows with it, as the build counted), divided by how many times faster per pixel the static
   graphs run for tiles of exactly a bucket's size (ONNX Runtime's Winograd graphs), the larger side
   on a tie; each tile then follows rule 2, on the dynamic graph where no bucket covers it (a side
   that covers the output: untiled). The torch backend with the same tile computes the same tiles."""

MAX_SIDE, MAX_BATCH = 8192, 256  # far above what a tile or a batch of one GPU holds


@dataclass(frozen=True, order=True)
class Bucket:
    """An HR tile shape with the batch range its engines accept."""

    height: int
    width: int
    min_batch: int = 1
    max_batch: int = 1

    def __post_init__(self) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in self.to_dict().values()):
            raise ValueError(f"bucket sizes and batches must be integers, got {self.to_dict()}")
        if not 8 <= min(self.height, self.width) <= max(self.height, self.width) <= MAX_SIDE:
            raise ValueError(f"bucket {self.height}x{self.width} must be between 8x8 and {MAX_SIDE}x{MAX_SIDE}")
        if not 1 <= self.min_batch <= self.max_batch <= MAX_BATCH:
            raise ValueError(
                f"batch range {self.min_batch}..{self.max_batch} must satisfy 1 <= min <= max <= {MAX_BATCH}"
            )

    @property
    def name(self) -> str:
        """File-name friendly id, e.g. ``128x128_b1-4`` (height first)."""
        return f"{self.height}x{self.width}_b{self.min_batch}-{self.max_batch}"

    @property
    def dynamic_batch(self) -> bool:
        """Whether the engines take a range of batch sizes rather than one."""
        return self.min_batch != self.max_batch

    def covers(self, size: tuple[int, int]) -> bool:
        """Whether an HR tile of ``size`` (H, W) fits inside this bucket."""
        return size[0] <= self.height and size[1] <= self.width

    def to_dict(self) -> dict[str, int]:
        return {"height": self.height, "width": self.width, "min_batch": self.min_batch, "max_batch": self.max_batch}

    @classmethod
    def from_dict(cls, d: object) -> Bucket:
        if not isinstance(d, dict) or not {"height", "width", "min_batch", "max_batch"} <= set(d):
            raise ValueError(f"a bucket needs height, width, min_batch and max_batch, got {d!r}")
        return cls(d["height"], d["width"], d["min_batch"], d["max_batch"])


# Outputs a bucket covers run untiled (on ONNX Runtime larger ones too, where that is cheaper); larger ones in tiles
# (rule 3) whose 32-px overlaps add 15-30 % pixels (128 tiles added 78 %) while the attention's share of a call stays
# small. Two static graphs, which ONNX Runtime runs faster per pixel than its dynamic one (benchmarks/results/
# static_speedup.md): 280 for the 2 x 2 and 4 x 4 tiles of 0.26-1 MP outputs, 256 for large outputs.
DEFAULT_TILES = (256, 280)


def plan_buckets(
    scales: Sequence[float] = (),
    input_size: tuple[int, int] | None = None,
    tiles: Sequence[int] = (),
    batch: tuple[int, int] = (1, 1),
) -> list[Bucket]:
    """The buckets to build: one per HR output of ``input_size`` (width, height) at each scale,
    one square bucket per tile side; all with the batch range ``batch`` (min, max).
    With neither given, :data:`DEFAULT_TILES`."""
    if bool(scales) != (input_size is not None):
        raise ValueError("--scales and --input-size go together (e.g. --scales 2,4 --input-size 64x64)")
    shapes = []
    if input_size is not None:
        w, h = input_size
        if w < 1 or h < 1:
            raise ValueError(f"input size must be positive, got {w}x{h}")
        for s in scales:
            if not math.isfinite(s) or s <= 1:
                raise ValueError(f"scales must be finite numbers > 1, got {s!r}")
            shapes.append((round(h * s), round(w * s)))
    shapes += [(t, t) for t in tiles]
    if not shapes:
        shapes = [(t, t) for t in DEFAULT_TILES]
    return sorted({Bucket(h, w, batch[0], batch[1]) for h, w in shapes})


def select_bucket(buckets: Iterable[Bucket], size: tuple[int, int]) -> Bucket | None:
    """Rule 2: the smallest-area bucket covering ``size`` (H, W), or None."""
    fits = [b for b in buckets if b.covers(size)]
    return min(fits, key=lambda b: (b.height * b.width, b.height), default=None)


def tile_side(buckets: Sequence[Bucket], multiple: int) -> int:
    """Rule 3: the largest square inside the largest bucket, the base of the tile sides' range."""
    largest = max(buckets, key=lambda b: (b.height * b.width, b.height))
    side = min(largest.height, largest.width) // multiple * multiple
    if side < 2 * multiple:
        raise ValueError(
            f"the largest bucket {largest.name} is too small to tile with (needs a side of at least {2 * multiple})"
        )
    return side


@dataclass(frozen=True)
class TileCosts:
    """What rule 3 weighs besides the pixels, an engine runner's own (:func:`idm_rt.backends.base.bucket_tile`).

    Attributes:
        static_speedup: how many times faster per pixel a tile runs on a bucket's static graph (a tile of exactly
            its size) than on the dynamic graph; 1 where the engines have none or run both alike.
        attention: a U-Net call's cost per pixel grows by this fraction per pixel of the tile's area (the
            recorded ``unet_area / unet``, :class:`idm_rt.cost.StageFlops`); 0 where unknown.
        reach: the dynamic graph's largest tile side, in sides of the largest bucket's square (1 where it has the
            bucket's limits, as TensorRT's profiles do).
    """

    static_speedup: float = 1.0
    attention: float = 0.0
    reach: int = 1


def dynamic_limit(buckets: Sequence[Bucket], multiple: int, costs: TileCosts = TileCosts()) -> int:
    """The largest tile side the dynamic graph runs (rule 3)."""
    return costs.reach * tile_side(buckets, multiple)


def fitted_tile(
    buckets: Sequence[Bucket], size: tuple[int, int], multiple: int, costs: TileCosts = TileCosts()
) -> int | None:
    """Rule 3: the tile side for an output of ``size`` (H, W) that no bucket covers (None: one tile covers it, on the
    dynamic graph). The largest square alone can waste most of a call on overlaps (a 512x512 output in 256 tiles: 9
    tiles, 2.25 tiled pixels per output pixel; in 192 tiles, the same 9 tiles and 1.27); sides under half of it spend
    still more of each tile on overlaps; larger tiles, where the dynamic graph takes them, cost more per pixel."""
    from .tiling import TilePlan  # (tiling needs the array libraries; the rule's text and the buckets do not)

    largest = tile_side(buckets, multiple)
    static = {(b.height, b.width) for b in buckets}

    def cost(tile: int) -> float:
        return TilePlan.for_image(size, tile, multiple).unet_cost(1.0, costs.attention, static, costs.static_speedup)

    top = dynamic_limit(buckets, multiple, costs)
    sides = range(top, max(largest // 2, 2 * multiple) - 1, -multiple)  # largest first: it wins ties
    tile = min(sides, key=cost)
    return None if tile >= max(size) else tile


@dataclass(frozen=True)
class Route:
    """How one output size runs: on ``bucket`` directly, in tiles of side ``tile``, or (neither) untiled on the
    dynamic graph beyond every bucket."""

    size: tuple[int, int]
    bucket: Bucket | None
    tile: int | None

    def describe(self) -> str:
        h, w = self.size
        if self.bucket is not None:
            if (self.bucket.height, self.bucket.width) == self.size:
                return f"{w}x{h} output -> bucket {self.bucket.name} (exact fit, its static graph)"
            return f"{w}x{h} output -> the dynamic graph at {w}x{h} (inside bucket {self.bucket.name})"
        if self.tile is None:
            return f"{w}x{h} output -> the dynamic graph at {w}x{h} (beyond every bucket, within its reach)"
        return (
            f"{w}x{h} output -> tiles of {self.tile}x{self.tile}, each on a bucket's static graph when exactly its "
            "size, else on the dynamic graph"
        )


def route(buckets: Sequence[Bucket], size: tuple[int, int], multiple: int, costs: TileCosts = TileCosts()) -> Route:
    """Apply the rule to an HR output ``size`` (H, W) (``costs``: see :class:`TileCosts`)."""
    bucket = select_bucket(buckets, size)
    return Route(size, bucket, None if bucket is not None else fitted_tile(buckets, size, multiple, costs))


def parse_size(text: str) -> tuple[int, int]:
    """``"64x48"`` -> (64, 48), width first."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like WIDTHxHEIGHT, e.g. 64x64, got {text!r}") from None
    return w, h


def parse_list(text: str, kind: type) -> list:
    """``"2,3,4"`` -> [2, 3, 4] of ``kind``."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of {kind.__name__}s, got {text!r}") from None


def parse_batch(text: str) -> tuple[int, int]:
    """``"4"`` -> (4, 4); ``"1,4"`` -> (1, 4)."""
    values = parse_list(text, int)
    if len(values) not in (1, 2) or not 1 <= values[0] <= values[-1]:
        raise ValueError(f"batch must be N or MIN,MAX with 1 <= MIN <= MAX, got {text!r}")
    return values[0], values[-1]


__all__ = [
    "Bucket",
    "Route",
    "TileCosts",
    "dynamic_limit",
    "plan_buckets",
    "select_bucket",
    "tile_side",
    "fitted_tile",
    "route",
    "parse_size",
    "parse_list",
    "parse_batch",
    "RULE",
    "DEFAULT_TILES",
]
