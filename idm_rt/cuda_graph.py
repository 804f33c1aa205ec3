"""Fast CUDA path of the torch backend: denoising steps replayed from CUDA graphs.

The U-Net's hundreds of small kernels cost more CPU launch time than GPU time at tile sizes
like 128x128. Following PyTorch's CUDA Graphs recipe (warm up on a side stream, capture with
``torch.cuda.graph``, copy new inputs into the captured static buffers, replay), this module
keeps static buffers per tile shape and runs on them, replayed from a CUDA graph when ``graphs``:

* :class:`StaticDenoiser`: one whole U-Net call; a drop-in for ``IDM.denoise`` under any sampler.
  (``benchmarks/gpu/static_ddim.py`` builds a whole DDIM loop of replays on the same pieces.)

Options: fp16/bf16 autocast (``autocast=torch.float16``), ``torch.compile`` of the U-Net, and
``graphs=False`` to run the same static-buffer code eagerly (the only way it runs on a CPU).
Nothing here has run on a GPU in this repository's tests; ``python -m benchmarks.gpu_check`` checks it.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable

import torch

from .model import IDM, Conditioning
from .model.unet import query_tables_for


def static_copy(c: Conditioning) -> Conditioning:
    """A conditioning with fresh buffers of the same shapes, for the graph to read from."""
    return Conditioning.from_flat(c.cond.clone(), [t.clone() for t in c.flat()])


class Replay:
    """A function of static buffers only, captured into a CUDA graph on ``device`` (after a warm-up on a
    side stream, as the PyTorch docs prescribe) or, with ``graphs=False``, simply run each time.

    Warm-up, capture and replay run with ``device`` current and on streams of ``device``: the buffers of a
    model on cuda:1 are captured there whatever device the caller has current (the kernels run on the
    current stream of their tensors' device, which must be the capturing stream)."""

    def __init__(self, fn: Callable[[], torch.Tensor], device: torch.device, graphs: bool, warmup: int = 3):
        self.fn, self.device, self.graph = fn, device, None
        if not graphs:
            return
        with torch.cuda.device(device):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # cuDNN/Triton autotuning and lazy init happen here, not in capture
                for _ in range(warmup):
                    fn()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # the capture stream named: torch.cuda.graph's default one is made once, on whichever device
            # was current the first time
            with torch.cuda.graph(self.graph, stream=side):
                self.out = fn()

    def __call__(self) -> torch.Tensor:
        if self.graph is None:
            return self.fn()
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self.out


class CompiledUNet:
    """The model's U-Net as the graphs call it: optionally ``torch.compile``d, under optional autocast.

    A compiled U-Net is given the implicit layers' query tables, computed outside it: ``torch.compile``
    traces through the ``lru_cache`` that keeps them, so inside it they would be rebuilt on the host and
    copied to the device in every call (and inside a CUDA graph's capture). Given tables, the layers take
    their torch form, which the compiler fuses; the Triton kernels serve the eager U-Net."""

    def __init__(self, model: IDM, autocast: torch.dtype | None, compile: bool):
        if autocast not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"autocast must be None, torch.float16 or torch.bfloat16, not {autocast}")
        self.model, self.autocast, self.compiled = model, autocast, compile
        self.unet = torch.compile(model.unet, dynamic=False) if compile else model.unet

    def eps(self, x: torch.Tensor, c: Conditioning, g: torch.Tensor) -> torch.Tensor:
        """Predicted noise in x's dtype; autocast without its weight cache, which graphs cannot replay."""
        tables = query_tables_for(tuple(x.shape[-2:]), self.model.config.levels, x.device) if self.compiled else None
        ctx = (
            torch.autocast(x.device.type, self.autocast, cache_enabled=False)
            if self.autocast
            else contextlib.nullcontext()
        )
        with torch.no_grad(), ctx:
            return self.unet(x, c, g, tables).to(x.dtype)


def use_graphs(graphs: bool | None, device: torch.device) -> bool:
    if graphs is None:
        return device.type == "cuda" and torch.cuda.is_available()
    if graphs and device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
    return graphs


AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # precision names -> autocast dtype


class StaticDenoiser:
    """``IDM.denoise`` on static buffers per input shape, replayed from a CUDA graph each (``graphs``);
    call it like ``model.denoise``.

    The returned tensor is a fresh copy. A conditioning is copied into the static buffers only
    when a different object comes in (tiles alternate; steps of one tile reuse theirs).

    Args:
        model: an IDM in eval mode, on the device the inputs will be on.
        autocast: "fp32" (none), "fp16" or "bf16" (or the torch dtype).
        compile: ``torch.compile`` the U-Net before capture (slow first call).
        graphs: capture CUDA graphs; default on when the model's inputs are CUDA tensors.
    """

    def __init__(
        self, model: IDM, autocast: str | torch.dtype | None = None, compile: bool = False, graphs: bool | None = None
    ):
        self.net = CompiledUNet(model, AUTOCAST.get(autocast, autocast), compile)
        self.graphs = graphs
        self._entries: OrderedDict[tuple, tuple[list[torch.Tensor], Replay]] = OrderedDict()
        self._loaded: dict[tuple, Conditioning] = {}

    # Captured graphs kept at once (each holds its static buffers and memory pool): a folder of
    # differently sized images must not grow GPU memory without bound.
    MAX_GRAPHS = 4

    def __call__(self, x: torch.Tensor, conditioning: Conditioning, g: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device, tuple(t.shape for t in conditioning.tensors()))
        if key not in self._entries:
            while len(self._entries) >= self.MAX_GRAPHS:
                old, _ = self._entries.popitem(last=False)
                self._loaded.pop(old, None)
            self._entries[key] = self._build(x, conditioning, g)
        self._entries.move_to_end(key)
        static, replay = self._entries[key]
        static[0].copy_(x)
        static[1].copy_(g.to(static[1].device).view(-1).expand(x.shape[0]))
        if self._loaded.get(key) is not conditioning:
            for dst, src in zip(static[2:], conditioning.tensors()):
                dst.copy_(src)
            self._loaded[key] = conditioning
        return replay().clone()

    def _build(self, x: torch.Tensor, conditioning: Conditioning, g: torch.Tensor):
        """Static buffers for this shape and the replayable U-Net call on them."""
        x_s, g_s = x.clone(), torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        c_s = static_copy(conditioning)
        replay = Replay(lambda: self.net.eps(x_s, c_s, g_s), x.device, use_graphs(self.graphs, x.device))
        return [x_s, g_s] + c_s.tensors(), replay
