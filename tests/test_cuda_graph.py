"""The CUDA fast path's static-buffer logic, run eagerly on the CPU (``graphs=False``): the code that
the CUDA graphs capture, against ``IDM.denoise`` and the DDIM sampler. Capture itself needs a GPU
(benchmarks/gpu_check.py)."""

from __future__ import annotations

import pytest
import torch

import idm_rt
from benchmarks.gpu.static_ddim import StaticDDIM
from idm_rt.cuda_graph import StaticDenoiser
from idm_rt.diffusion import LinearSchedule, ddim

from .helpers import rel_err


def conditioning(model, seed: int, size=(16, 16)):
    gen = torch.Generator().manual_seed(seed)
    lr = torch.rand(1, 3, size[0] // 4, size[1] // 4, generator=gen) * 2 - 1
    return model.condition(model.encode(lr, size), model.scale_fraction(4.0))


@torch.no_grad()
def test_denoiser_equals_model_denoise_across_tiles_and_shapes(tiny_model):
    """Alternating conditionings (tiles) and two shapes: every call is model.denoise on its own inputs."""
    fast = StaticDenoiser(tiny_model, graphs=False)
    conds = [conditioning(tiny_model, 0), conditioning(tiny_model, 1), conditioning(tiny_model, 2, (16, 24))]
    for step, c in enumerate(conds * 2):
        x = torch.randn(c.cond.shape)
        g = torch.tensor([0.3 + 0.1 * step])
        assert torch.equal(fast(x, c, g), tiny_model.denoise(x, c, g))
    assert len(fast._entries) == 2


@torch.no_grad()
def test_denoiser_bfloat16_autocast_is_close(tiny_model):
    c = conditioning(tiny_model, 0)
    x, g = torch.randn(c.cond.shape), torch.tensor([0.5])
    out = StaticDenoiser(tiny_model, autocast=torch.bfloat16, graphs=False)(x, c, g)
    assert out.dtype == torch.float32
    assert rel_err(out, tiny_model.denoise(x, c, g)) < 5e-2


@pytest.mark.slow
@pytest.mark.parametrize("steps", [3, 10])
@torch.no_grad()
def test_table_driven_ddim_equals_ddim(tiny_model, steps):
    """One step = U-Net + update read from on-device tables; same x_0 as the ddim sampler (eta = 0)."""
    sched = LinearSchedule()
    fast = StaticDDIM(tiny_model, graphs=False, schedule=sched)
    for seed in (0, 1):  # a second image reuses the static buffers and resets the step counter
        c = conditioning(tiny_model, seed)
        x_T = torch.randn(c.cond.shape, generator=torch.Generator().manual_seed(seed))
        want = ddim(lambda x, g: tiny_model.denoise(x, c, g), x_T, steps, schedule=sched)  # noqa: B023 (called at once)
        assert rel_err(fast(c, x_T, steps), want) < 1e-5


def test_graphs_refused_off_cuda(tiny_model):
    c = conditioning(tiny_model, 0)
    with pytest.raises(ValueError, match="CUDA"):
        StaticDenoiser(tiny_model, graphs=True)(torch.randn(c.cond.shape), c, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="autocast"):
        StaticDenoiser(tiny_model, autocast=torch.float64)


def test_graph_cache_is_bounded():
    cfg = idm_rt.IDMConfig(
        inner_channel=8,
        channel_multiplier=(1, 2),
        res_blocks=1,
        attn_levels=(1,),
        norm_groups=4,
        encoder_blocks=1,
        encoder_feats=8,
        implicit_hidden=8,
    )
    model = idm_rt.IDM(cfg).eval()
    den = StaticDenoiser(model, graphs=False)
    for n in range(4, 11):
        c = model.condition(torch.randn(1, 3, n, n), torch.tensor([0.5]))
        den(torch.randn(1, 3, n, n), c, torch.tensor([0.3]))
    assert len(den._entries) == StaticDenoiser.MAX_GRAPHS


class _FakeCuda:
    """torch.cuda's graph and stream calls as Replay makes them, recording which device is current and
    which device each stream belongs to (device 0 current unless a torch.cuda.device block says otherwise)."""

    def __init__(self):
        self.current, self.events = 0, []
        fake = self

        class Stream:
            def __init__(self, device=None):
                self.device = fake.current if device is None else torch.device(device).index

            def wait_stream(self, other):
                fake.events.append(("wait", self.device, other.device))

        class Ctx:
            def __init__(self, enter, leave=lambda: None):
                self.enter, self.leave = enter, leave

            def __enter__(self):
                self.enter()

            def __exit__(self, *exc):
                self.leave()

        def device(d):
            before = fake.current
            return Ctx(
                lambda: setattr(fake, "current", torch.device(d).index), lambda: setattr(fake, "current", before)
            )

        class Graph:
            def replay(self):
                fake.events.append(("replay", fake.current))

        def graph(g, pool=None, stream=None):
            stream = stream or Stream()  # torch's default capture stream: made on the current device
            return Ctx(lambda: fake.events.append(("capture", fake.current, stream.device)))

        self.Stream, self.device, self.CUDAGraph, self.graph = Stream, device, Graph, graph
        self.current_stream = lambda device=None: Stream(device)
        self.stream = lambda s: Ctx(lambda: fake.events.append(("on stream", fake.current, s.device)))


def test_graphs_are_warmed_captured_and_replayed_on_the_tensors_device(monkeypatch):
    """A model on cuda:1 while cuda:0 is current: warm-up, capture and replay all on device 1 and its
    streams (torch.cuda mocked: capture itself needs GPUs; this is the bookkeeping around it)."""
    from idm_rt import cuda_graph

    fake = _FakeCuda()
    for name in ("Stream", "device", "CUDAGraph", "graph", "current_stream", "stream"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    calls = []
    replay = cuda_graph.Replay(lambda: calls.append(fake.current) or torch.zeros(1), torch.device("cuda", 1), True)
    replay()
    assert calls == [1, 1, 1, 1]  # three warm-up runs and the captured one
    assert fake.events == [("wait", 1, 1), ("on stream", 1, 1), ("wait", 1, 1), ("capture", 1, 1), ("replay", 1)]
    assert fake.current == 0  # the caller's device is current again


def test_a_compiled_unet_is_given_its_tables_instead_of_building_them(tiny_model, monkeypatch):
    """torch.compile traces through the lru_cache around the implicit layers' tables (it ignores the cache),
    so they must not be built inside the compiled U-Net: no grid_sample (which builds them) in any graph
    it captures, and the same eps as model.denoise. Dynamo only, no code generation (fast on a CPU)."""
    from idm_rt import cuda_graph

    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compile = torch.compile
    monkeypatch.setattr(cuda_graph.torch, "compile", lambda fn, **kw: compile(fn, backend=recording, **kw))
    c = conditioning(tiny_model, 0, (16, 24))
    x, g = torch.randn(c.cond.shape), torch.tensor([0.4])
    with torch.no_grad():
        out = StaticDenoiser(tiny_model, compile=True, graphs=False)(x, c, g)
        assert rel_err(out, tiny_model.denoise(x, c, g)) < 1e-5
    assert graphs and not any("grid_sample" in gm.code for gm in graphs)
