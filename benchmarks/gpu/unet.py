"""The whole U-Net on the device: our eager form (Triton kernels), CUDA graphs, autocast and torch.compile against
the release's eager form; checks, the time of one call and of one image's sampling loop."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from unittest import mock

import numpy as np
import torch

import idm_rt
from idm_rt.cuda_graph import StaticDenoiser
from idm_rt.diffusion import LinearSchedule, ddim

from .common import AUTOCAST_TOL, Run, conditioning, log, rel_max_err, release_style
from .static_ddim import StaticDDIM
from .tf32 import budget_for, derive, read_budgets

AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _inputs(c: idm_rt.Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and g of the checks: seeded on the CPU (so a derivation there sees the same), moved to the device."""
    x = torch.randn(c.cond.shape, generator=torch.Generator().manual_seed(1)).to(c.cond)
    return x, torch.tensor([0.6], device=c.cond.device)


def _sides(model: idm_rt.IDM, size: int, steps: int) -> dict[str, Callable[[torch.dtype], torch.Tensor]]:
    """The float32 checks' sides as functions of the dtype, on the CPU, from the same seeds as the run."""

    def built(dtype: torch.dtype, literal: bool):
        net = copy.deepcopy(model).cpu().to(dtype)
        release_style(net, literal)
        c = conditioning(net, size)
        x, g = _inputs(c)
        return net, c, x.to(dtype), g.to(dtype)

    def denoise(literal: bool) -> Callable[[torch.dtype], torch.Tensor]:
        def side(dtype: torch.dtype) -> torch.Tensor:
            net, c, x, g = built(dtype, literal)
            with torch.no_grad():
                return net.denoise(x, c, g)

        return side

    def loop(static: bool) -> Callable[[torch.dtype], torch.Tensor]:
        def side(dtype: torch.dtype) -> torch.Tensor:
            net, c, x, _ = built(dtype, dtype == torch.float64)
            with torch.no_grad():
                if static:
                    return StaticDDIM(net, graphs=False)(c, x, steps)
                return ddim(lambda x_, g_: net.denoise(x_, c, g_), x, steps)

        return side

    return {"ours": denoise(False), "release": denoise(True), "graphed loop": loop(True), "loop": loop(False)}


def check_ids(preset: str, size: int, steps: int) -> dict[str, str]:
    return {
        "unet": f"U-Net {preset} {size}px: ours (kernels) vs release eager, fp32",
        "ddim": f"DDIM {steps} steps {preset} {size}px: graphed loop vs eager, fp32",
    }


def unet_budgets(preset: str, size: int, steps: int, model: idm_rt.IDM | None = None) -> dict[str, dict]:
    """The budgets of the U-Net's float32 checks (derived on the CPU; ``model`` the run's, else the preset's)."""
    if model is None:
        torch.manual_seed(0)
        model = idm_rt.IDM(idm_rt.preset(preset), max_scale=4.0).eval()
    sides, ids = _sides(model, size, steps), check_ids(preset, size, steps)
    return {
        ids["unet"]: derive(sides["ours"], sides["release"], lambda: sides["release"](torch.float64)),
        ids["ddim"]: derive(sides["graphed loop"], sides["loop"], lambda: sides["loop"](torch.float64)),
    }


def _graphs(run: Run) -> bool:
    return run.device.type == "cuda"


def steps_of_checks(run: Run) -> int:
    return 2 if run.dry else 20


@torch.no_grad()
def check_model(run: Run) -> None:
    """Ours against the release's eager form (fp32, within the derived budget), with and without a CUDA graph;
    fp16 and bf16 autocast under CUDA graphs (their error recorded); the graphed DDIM loop against eager."""
    model = run.model()
    kernels = run.kernels
    c = conditioning(model, run.size)
    x, g = _inputs(c)
    steps = steps_of_checks(run)
    label = "dry" if run.dry else run.preset
    ids = check_ids(label, run.size, steps)
    stored = {} if run.dry else read_budgets()
    derived: dict = {}

    def budget(key: str) -> dict:
        def derive_now() -> dict:
            if not derived:
                derived.update(unet_budgets(label, run.size, steps, model))
            return derived[ids[key]]

        return budget_for(ids[key], derive_now, stored)

    from .kernels import pinned

    release_style(model, True)
    ref = model.denoise(x, c, g)
    release_style(model, False, kernels)
    with pinned(0):  # correctness on one config per kernel: one compilation per specialisation
        run.variant(
            "ours eager fp32",
            lambda: run.check(
                ids["unet"], rel_max_err(model.denoise(x, c, g), ref), budget("unet")["budget"], budget=budget("unet")
            ),
        )
        run.variant(
            "ours CUDA graph fp32",
            lambda: run.check(
                ids["unet"].replace("ours (kernels)", "ours (kernels) + CUDA graph"),
                rel_max_err(StaticDenoiser(model, graphs=_graphs(run))(x, c, g), ref),
                budget("unet")["budget"],
                budget=budget("unet"),
            ),
        )
        for name, dtype in AUTOCAST.items():

            def autocast_check(dtype=dtype, name=name):
                err = rel_max_err(StaticDenoiser(model, autocast=dtype, graphs=_graphs(run))(x, c, g), ref)
                run.results.setdefault("autocast_error", {})[name] = err
                run.check(f"U-Net {run.size}px: ours + CUDA graph {name} autocast (measured error)", err, AUTOCAST_TOL)

            run.variant(f"ours CUDA graph {name}", autocast_check)

        def loop_check():
            eager = ddim(lambda x_, g_: model.denoise(x_, c, g_), x, steps)
            graphed = StaticDDIM(model, graphs=_graphs(run))(c, x, steps)
            run.check(ids["ddim"], rel_max_err(graphed, eager), budget("ddim")["budget"], budget=budget("ddim"))

        run.variant(f"DDIM {steps} steps graphed", loop_check)


def _autocast(run: Run, dtype: torch.dtype | None):
    return torch.autocast(run.device.type, dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def time_unet(run: Run) -> None:
    """One U-Net call, batch 1, each variant against the release's eager fp32 call: ours eager (kernels) in
    fp32 and under fp16 autocast, ours replayed from CUDA graphs in fp32, fp16 and bf16."""
    model = run.model()
    kernels = run.kernels
    c = conditioning(model, run.size)
    x, g = _inputs(c)
    times: dict[str, float] = {}

    def timed(name: str, setup: Callable[[], Callable[[], object]], expected_s: float = 5.0) -> None:
        def measure():
            times[name] = ms = run.median_ms(setup())
            base = times.get("release eager fp32", float("nan"))
            run.add("unet", {"size": run.size, "variant": name, "ms": ms, "speedup": base / ms})
            log(f"U-Net {run.size}px {name}: {ms:.3f} ms ({base / ms:.2f}x)")

        run.variant(f"U-Net call: {name}", measure, expected_s)

    def eager(literal: bool, dtype: torch.dtype | None = None) -> Callable[[], Callable[[], object]]:
        def setup():
            release_style(model, literal, kernels)

            def call():
                with _autocast(run, dtype):
                    return model.denoise(x, c, g)

            return call

        return setup

    timed("release eager fp32", eager(True))
    timed("ours eager fp32", eager(False))
    timed("ours eager fp16 autocast", eager(False, torch.float16))
    for name, dtype in {"fp32": None, **AUTOCAST}.items():

        def graphed(dtype=dtype):
            release_style(model, False, kernels)
            fast = StaticDenoiser(model, autocast=dtype, graphs=_graphs(run))
            return lambda: fast(x, c, g)

        timed(f"ours CUDA graph {name}", graphed)


def image_steps(run: Run) -> tuple[int, ...]:
    return (2,) if run.dry else (20,) if run.quick else (20, 200)


@torch.no_grad()
def time_image(run: Run) -> None:
    """One image's DDIM loop (encoding and conditioning once, outside it), each variant against the release's
    eager fp32 loop; and one whole Upscaler.upscale call (library defaults) on the torch backend."""
    model = run.model()
    kernels = run.kernels
    c = conditioning(model, run.size)
    x_T, _ = _inputs(c)
    sched = LinearSchedule()
    for steps in image_steps(run):
        base: dict[str, float] = {}

        def timed(name: str, setup: Callable[[], Callable[[], object]], steps=steps, base=base) -> None:
            def measure():
                fn = setup()
                ms = run.median_ms(fn, 1 if steps > 50 else 3, warmup=1)
                base.setdefault("ref", ms)
                run.add(
                    "image", {"size": run.size, "steps": steps, "variant": name, "ms": ms, "speedup": base["ref"] / ms}
                )
                log(f"image {run.size}px DDIM {steps} {name}: {ms:.1f} ms ({base['ref'] / ms:.2f}x)")

            run.variant(f"image DDIM {steps}: {name}", measure, expected_s=steps * 0.1)

        def eager(literal: bool, steps=steps):
            release_style(model, literal, kernels)
            return lambda: ddim(lambda x, g: model.denoise(x, c, g), x_T, steps, schedule=sched)

        def graphed(dtype: torch.dtype | None, steps=steps):
            release_style(model, False, kernels)
            loop = StaticDDIM(model, autocast=dtype, graphs=_graphs(run))
            return lambda: loop(c, x_T, steps)

        timed("release eager fp32", lambda: eager(True))
        timed("ours eager fp32", lambda: eager(False))
        timed("ours graphed DDIM fp32", lambda: graphed(None))
        timed("ours graphed DDIM fp16", lambda: graphed(torch.float16))
    time_upscaler(run, model)


def time_upscaler(run: Run, model: idm_rt.IDM) -> None:
    """Upscaler.upscale of a 4x image to size x size with the library's default sampling: the release's
    eager form against ours in fp32 and fp16 (CUDA graphs by default on a GPU)."""
    image = np.random.default_rng(0).random((run.size // 4, run.size // 4, 3), dtype=np.float32)
    base: dict[str, float] = {}
    variants = {
        "release eager fp32": (True, "fp32", False),
        "ours fp32": (False, "fp32", None),
        "ours fp16": (False, "fp16", None),
    }
    if run.dry:  # the Upscaler refuses autocast on a CPU
        del variants["ours fp16"]
    for name, (literal, precision, graphs) in variants.items():

        def measure(literal=literal, precision=precision, graphs=graphs, name=name):
            release_style(model, literal, run.kernels)
            up = idm_rt.Upscaler(
                model, device=run.device, precision=precision, cuda_graphs=graphs and _graphs(run), tile=0
            )
            ms = run.median_ms(lambda: up.upscale(image, scale=4, seed=0, progress=False), 3, warmup=1)
            base.setdefault("ref", ms)
            run.add(
                "image",
                {
                    "size": run.size,
                    "steps": "defaults",
                    "variant": f"Upscaler {name}",
                    "ms": ms,
                    "speedup": base["ref"] / ms,
                },
            )
            log(f"Upscaler {run.size}px {name}: {ms:.1f} ms ({base['ref'] / ms:.2f}x)")

        run.variant(f"Upscaler: {name}", measure, expected_s=5.0)


@torch.no_grad()
def time_compile(run: Run) -> None:
    """torch.compile of the U-Net (implicit layers in their torch form, tables given), under CUDA graphs in
    fp16: one call against ours eager fp16 (checked within the autocast tolerance), and one DDIM loop."""
    model = run.model()
    release_style(model, False, run.kernels)
    c = conditioning(model, run.size)
    x, g = _inputs(c)
    steps = image_steps(run)[0]
    out: dict = {}

    def call():
        fast = StaticDenoiser(model, autocast=torch.float16, compile=True, graphs=_graphs(run))
        with _autocast(run, torch.float16):
            want = model.denoise(x, c, g).float()
        run.check(
            f"U-Net {run.size}px: compiled + CUDA graph fp16 vs eager fp16 autocast",
            rel_max_err(fast(x, c, g), want),
            AUTOCAST_TOL,
        )
        out["ms"] = ms = run.median_ms(lambda: fast(x, c, g))
        run.add("unet", {"size": run.size, "variant": "ours compile + CUDA graph fp16", "ms": ms, "speedup": None})
        log(f"U-Net {run.size}px compiled + CUDA graph fp16: {ms:.3f} ms")

    def loop():
        fast = StaticDDIM(model, autocast=torch.float16, compile=True, graphs=_graphs(run))
        ms = run.median_ms(lambda: fast(c, x, steps), 3, warmup=1)
        run.add(
            "image",
            {
                "size": run.size,
                "steps": steps,
                "variant": "ours compile + graphed DDIM fp16",
                "ms": ms,
                "speedup": None,
            },
        )
        log(f"image {run.size}px DDIM {steps} compiled + graphed fp16: {ms:.1f} ms")

    # a dry run traces with Dynamo but generates no code (Inductor on a CPU takes minutes)
    with (
        mock.patch.object(torch, "compile", functools.partial(torch.compile, backend="eager"))
        if run.dry
        else contextlib.nullcontext()
    ):
        run.variant("compile: U-Net call fp16", call, expected_s=60.0)
        run.variant(f"compile: DDIM {steps} fp16", loop, expected_s=30.0)
