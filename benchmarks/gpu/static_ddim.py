"""Deterministic DDIM (eta = 0) as a loop of CUDA-graph replays: every step, U-Net call and update, is one
replay, the step's noise level and coefficients read on the device from tables indexed by an on-device step
counter, so a whole sampling loop runs with no host work and no host synchronisation. The GPU benchmark
compares it with :class:`idm_rt.cuda_graph.StaticDenoiser` under the runtime's samplers.
"""

from __future__ import annotations

import math

import torch

from idm_rt.cuda_graph import CompiledUNet, Replay, static_copy, use_graphs
from idm_rt.diffusion.samplers import ddim_timesteps
from idm_rt.diffusion.schedule import LinearSchedule
from idm_rt.model import IDM, Conditioning


def ddim_coefficients(sched: LinearSchedule, steps: int) -> tuple[list[float], list[float], list[float]]:
    """Per network call of :func:`idm_rt.diffusion.samplers.ddim` with eta = 0: the noise level g and
    (cx, ce) with ``x_next = cx x + ce eps``, i.e. sqrt(an) x0 + sqrt(1 - an) eps written in x and eps."""
    seq = ddim_timesteps(sched, steps)
    gs, cxs, ces = [], [], []
    for i, j in zip(reversed(seq[1:]), reversed(seq[:-1])):
        at, an = sched.ac(i), sched.ac(j)
        gs.append(sched.noise_level(i))
        cxs.append(math.sqrt(an / at))
        ces.append(math.sqrt(1.0 - an) - math.sqrt(an * (1.0 - at) / at))
    return gs, cxs, ces


class StaticDDIM:
    """Deterministic DDIM (eta = 0) on static buffers, whose every step, U-Net call and update, is one
    graph replay (``graphs``).

    Per shape: static x, the conditioning, an on-device step counter, and coefficient tables with
    room for the longest schedule; a run copies its tables in, then replays ``steps - 1`` times.
    Same arguments as :class:`StaticDenoiser`, plus the schedule.
    """

    def __init__(
        self,
        model: IDM,
        autocast: torch.dtype | None = None,
        compile: bool = False,
        graphs: bool | None = None,
        schedule: LinearSchedule | None = None,
    ):
        self.net = CompiledUNet(model, autocast, compile)
        self.graphs = graphs
        self.sched = schedule or LinearSchedule()
        self._entries: dict[tuple, tuple[dict[str, torch.Tensor], Conditioning, Replay]] = {}
        self._coefs: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, conditioning: Conditioning, x_T: torch.Tensor, steps: int = 200) -> torch.Tensor:
        """x_0 from x_T, the same function as ``ddim(..., eta=0)`` on ``model.denoise``."""
        key = (tuple(x_T.shape), x_T.dtype, x_T.device, tuple(t.shape for t in conditioning.tensors()))
        if key not in self._entries:
            self._entries[key] = self._build(x_T, conditioning)
        s, c_s, replay = self._entries[key]
        tables = self._tables(steps, x_T.device)
        s["tables"][:, : tables.shape[1]].copy_(tables)
        for dst, src in zip(c_s.tensors(), conditioning.tensors()):
            dst.copy_(src)
        s["x"].copy_(x_T)
        s["k"].zero_()
        for _ in range(tables.shape[1]):
            replay()
        return s["x"].clone()

    def _tables(self, steps: int, device: torch.device) -> torch.Tensor:
        """(3, calls) rows g, cx, ce on the device, uploaded once per step count."""
        key = (steps, device)
        if key not in self._coefs:
            self._coefs[key] = torch.tensor(ddim_coefficients(self.sched, steps), dtype=torch.float32, device=device)
        return self._coefs[key]

    def _build(self, x_T: torch.Tensor, conditioning: Conditioning):
        """Static state for this shape and the replayable step on it."""
        dev = x_T.device
        s = {
            "x": x_T.clone(),
            "k": torch.zeros(1, dtype=torch.long, device=dev),
            "tables": torch.zeros(3, self.sched.timesteps, dtype=torch.float32, device=dev),
        }
        c_s = static_copy(conditioning)
        batch = x_T.shape[0]

        def step() -> torch.Tensor:
            g, cx, ce = s["tables"].index_select(1, s["k"]).unbind(0)  # (1,) each, read on the device
            eps = self.net.eps(s["x"], c_s, g.expand(batch))
            s["x"].copy_(cx * s["x"] + ce * eps)
            s["k"].add_(1)
            return s["x"]

        # the warm-up runs move x and k (on zero tables): both are reset before every sampling run
        return s, c_s, Replay(step, dev, use_graphs(self.graphs, dev))
