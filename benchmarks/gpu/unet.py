"""The whole U-Net on the GPU: kernels, CUDA graphs and autocast against the release's eager form, and the
time of one call and of one image's DDIM loop."""

from __future__ import annotations

import torch

import idm_rt
from idm_rt.cuda_graph import StaticDDIM, StaticDenoiser
from idm_rt.diffusion import LinearSchedule, ddim

from .common import DEVICE, check, conditioning, log, median_ms, rel_max_err, release_style


@torch.no_grad()
def check_model(results: dict, model: idm_rt.IDM, size: int) -> None:
    """Whole U-Net with kernels and with graphs, and the graphed DDIM loop, against eager torch."""
    c = conditioning(model, size)
    x = torch.randn(c.cond.shape, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    g = torch.tensor([0.6], device=DEVICE)
    release_style(model, True)
    ref = model.denoise(x, c, g)
    release_style(model, False)
    check(results, f"U-Net {size}px: kernels vs release eager (fp32)", rel_max_err(model.denoise(x, c, g), ref), 1e-4)
    check(results, f"U-Net {size}px: kernels + CUDA graph fp32", rel_max_err(StaticDenoiser(model)(x, c, g), ref), 1e-4)
    for dtype in (torch.float16, torch.bfloat16):
        err = rel_max_err(StaticDenoiser(model, autocast=dtype)(x, c, g), ref)
        results["autocast_error"][str(dtype)[6:]] = err
        check(results, f"U-Net {size}px: kernels + CUDA graph {str(dtype)[6:]} (measured error)", err, 5e-2)
    eager = ddim(lambda x_, g_: model.denoise(x_, c, g_), LinearSchedule(), x, 20)
    check(results, f"DDIM 20 steps {size}px: graphed loop vs eager", rel_max_err(StaticDDIM(model)(c, x, 20), eager),
          1e-4)


@torch.no_grad()
def time_unet(results: dict, model: idm_rt.IDM, size: int, reps: int, compile: bool) -> None:
    """One U-Net call, batch 1: release-style eager fp32 vs ours eager vs ours with kernels + graphs."""
    c = conditioning(model, size)
    x, g = torch.randn(c.cond.shape, device=DEVICE), torch.tensor([0.6], device=DEVICE)
    release_style(model, True)
    variants = {"release eager fp32": median_ms(lambda: model.denoise(x, c, g), reps)}
    release_style(model, False)
    variants["ours eager fp32 (kernels)"] = median_ms(lambda: model.denoise(x, c, g), reps)
    graphed = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
    for name, dtype in graphed.items():
        fast = StaticDenoiser(model, autocast=dtype)
        variants[f"ours kernels + CUDA graph {name}"] = median_ms(lambda: fast(x, c, g), reps)
    if compile:
        fast = StaticDenoiser(model, autocast=torch.float16, compile=True)
        variants["ours kernels + compile + CUDA graph fp16"] = median_ms(lambda: fast(x, c, g), reps)
    base = variants["release eager fp32"]
    for name, ms in variants.items():
        results["unet"].append({"size": size, "variant": name, "ms": ms, "speedup": base / ms})
        log(f"U-Net {size}px {name}: {ms:.3f} ms ({base / ms:.2f}x)")


@torch.no_grad()
def time_image(results: dict, model: idm_rt.IDM, size: int, steps_list: tuple[int, ...]) -> None:
    """One whole image (the sampling loop only; encoding and conditioning run once), DDIM."""
    c = conditioning(model, size)
    x_T = torch.randn(c.cond.shape, device=DEVICE)
    sched = LinearSchedule()
    loops = {"fp32": StaticDDIM(model), "fp16": StaticDDIM(model, autocast=torch.float16)}
    for steps in steps_list:
        release_style(model, True)
        eager = lambda: ddim(lambda x, g: model.denoise(x, c, g), sched, x_T, steps)
        ms = {"release eager fp32": median_ms(eager, 1, 0)}
        release_style(model, False)
        for name, loop in loops.items():
            ms[f"ours graphed DDIM {name}"] = median_ms(lambda: loop(c, x_T, steps), 1, 1)
        for name, t in ms.items():
            results["image"].append({"size": size, "steps": steps, "variant": name, "ms": t,
                                     "speedup": ms["release eager fp32"] / t})
            log(f"image {size}px {steps} steps {name}: {t:.1f} ms")


