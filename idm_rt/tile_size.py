"""The tile the torch backend picks for an output: the cheapest plan whose tiles fit in memory.

One U-Net call's cost per pixel grows with its size: the convolutions cost the same per pixel, but
self-attention compares every position of its level with every other, so its share grows with the
tile's area (for the bundled model 6 % of a 256x256 call, 19 % at 512x512, 35 % at 768x768, measured
on a CPU). Tiles cost their overlaps instead. The rule weighs both: for every tile side it counts the
FLOPs of the whole tiled plan, ``sum over tiles of area * (a + b * area)``, and takes the cheapest side
whose estimated peak memory fits the budget; an output that one tile covers more cheaply runs untiled.
``a`` (and the bytes per pixel of the activations) come from one 64 x 64 call of the model, counted;
``b`` and the attention's memory from the attention's shapes.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .config import IDMConfig
from .tiling import TilePlan

# A call's real peak (allocator slack, convolution workspaces) measured 1.3-1.6x what its tensors
# hold (CPU, 256 and 512 px); the budget is a fraction of the free memory.
PEAK_MARGIN = 2.0
MEMORY_FRACTION = 0.5
MIN_SIDE = 128  # smaller tiles pay more in per-call overhead than their FLOPs show
PROBE = 64  # the side of the call that is counted


class _LiveBytes(TorchDispatchMode):
    """The most bytes the tensors created under it held at once."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t._base is None:  # views hold no memory of their own
                n = t.untyped_storage().nbytes()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out

    def _free(self, n: int) -> None:
        self.live -= n


def attention_shapes(config: IDMConfig) -> list[tuple[int, int]]:
    """(level, channels) of every self-attention block: res_blocks on the way down and res_blocks + 1 on
    the way up at each attention level, and one in the middle at the deepest level."""
    blocks = [(level, config.channels[level]) for level in config.attn_levels for _ in range(2 * config.res_blocks + 1)]
    return blocks + [(config.levels - 1, config.channels[-1])]


_probes: dict[IDMConfig, tuple[float, float]] = {}


def _probe(model) -> tuple[float, float]:
    """(FLOPs, peak bytes of the tensors) per pixel of one 64 x 64 call of ``model``'s U-Net, counted once
    per network shape (the weights change neither)."""
    if model.config not in _probes:
        _probes[model.config] = _count(model)
    return _probes[model.config]


def _count(model) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, 3, PROBE, PROBE, device=device)
    counter, live = FlopCounterMode(display=False), _LiveBytes()
    with torch.no_grad():
        conditioning = model.condition(x, torch.zeros(1, device=device))
        with counter, live:
            model.denoise(x, conditioning, torch.zeros(1, device=device))
    return counter.get_total_flops() / PROBE**2, live.peak / PROBE**2


def cost_per_pixel(model) -> tuple[float, float]:
    """(a, b): one U-Net call costs ``a + b * area`` FLOPs per pixel of an ``area``-pixel tile. An attention
    block at level l over N = area / 4^l positions multiplies two N x N x C_l products (q.k and the
    weighted v), 4 N^2 C_l FLOPs: b sums 4 C_l / 16^l; a is the counted call's rest."""
    b = sum(4 * c / 16**level for level, c in attention_shapes(model.config))
    counted, _ = _probe(model)
    return counted - b * PROBE**2, b


def peak_bytes(model, area: int, batch: int = 1) -> int:
    """Estimated peak memory of one U-Net call on ``batch`` tiles of ``area`` pixels: the activations' bytes
    per pixel (counted at 64 x 64) times the area, plus three N x N float32 matrices of the widest
    attention (scores, weights, and a copy in between), times :data:`PEAK_MARGIN`."""
    _, per_pixel = _probe(model)
    widest = min(level for level, _ in attention_shapes(model.config))
    n = area / 4**widest
    return int(PEAK_MARGIN * batch * (per_pixel * area + 12 * n * n))


def plan_cost(model, size: tuple[int, int], tile: int | None) -> float:
    """FLOPs of one denoising step over an output of ``size`` in tiles of side ``tile`` (None: untiled)."""
    plan = TilePlan.whole(size) if tile is None else TilePlan.for_image(size, tile, model.config.size_multiple)
    return plan.unet_cost(*cost_per_pixel(model))


def choose_tile(model, size: tuple[int, int], budget: int) -> int | None:
    """The tile side of the cheapest plan (:func:`plan_cost`) for an output of ``size`` (H, W) whose tiles
    fit ``budget`` bytes, one image at a time (a batch of N needs N times the memory); None: untiled."""
    step = model.config.size_multiple
    sides = range(max(2 * step, MIN_SIDE), max(size), step)
    fitting = [t for t in sides if peak_bytes(model, min(t, size[0]) * min(t, size[1])) <= budget]
    options = ([None] if peak_bytes(model, size[0] * size[1]) <= budget else []) + fitting
    if not options:
        return max(2 * step, MIN_SIDE)  # nothing fits: the smallest tiles
    return min(options, key=lambda t: (plan_cost(model, size, t), t is not None))


def choose_for(model, size: tuple[int, int], max_memory: int | None = None) -> int | None:
    """The torch backend's tile for an output of ``size`` (H, W): :func:`choose_tile` within half the memory the
    model's device has (its total, not what is free: the image does not depend on other processes), and within
    ``max_memory`` when given."""
    from .memory import device_memory

    budget = int(MEMORY_FRACTION * device_memory(next(model.parameters()).device))
    return choose_tile(model, size, min(budget, max_memory) if max_memory else budget)
