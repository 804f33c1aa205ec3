"""Latency of one U-Net call and of one whole image: release-style vs ours, same weights.

release-style: the way the released code runs: the LR conditioning pyramid is recomputed inside
every network call and the implicit layers evaluate the two-Linear MLP at every target pixel.
ours: the conditioning computed once per image, the implicit layers in their exact refactored
form (1x1 map at the source resolution, nearest gather, row and column terms).
Both float32, eager PyTorch, the same weights and DDIM steps. The release's unused per-call work
(pyramid level 0, the last down-step) is emulated with same-shape layers (release_style.py).

With ``--onnxruntime`` the same model is also built into an ONNX Runtime engine directory (fp32,
one bucket of the output size, Winograd convolutions on a CPU as ``python -m idm_rt.build`` makes
them) and timed through its runner (numpy arrays on a CPU), per call and per image.

Both run with the process's allocator set as the command lines set it (``idm_rt.configure_allocator``:
freed memory kept for the next call); ``--no-allocator`` leaves glibc's default.

With ``--sizes`` it reports instead the time of one whole image at the bundled model's defaults, and the
peak memory, against the output's size for each backend (:mod:`benchmarks.size_scaling`).

    python -m benchmarks.latency                 # official shape, 128x128 output, CPU
    python -m benchmarks.latency --onnxruntime   # + ONNX Runtime (CPU; CUDA when torch sees a GPU)
    python -m benchmarks.latency --size 64 --steps 5 --repeats 3
    python -m benchmarks.latency --sizes 512,724,1024,1448,2048 --backends torch,onnxruntime,onnxruntime-int8
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import torch

import idm_rt
from idm_rt.diffusion import calls_for, sampler
from idm_rt.pipeline import super_resolve

from .common import ORT_SETTLE_S, add_replace_argument, interleaved, summary, write
from .release_style import ReleaseStyle


def onnxruntime_runners(model: idm_rt.IDM, side: int, stack: contextlib.ExitStack):
    """Runners of an fp32 ONNX Runtime engine of ``model`` for one side x side bucket, built in a
    temp folder: as shipped, and (on the CPU) without torch's threads pinned while sampling."""
    from idm_rt.backends import load_runner
    from idm_rt.build import main as build
    from idm_rt.export.engines import auto_conv

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    idm_rt.save_model(model, tmp / "model")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if (
        build(
            [
                "--engine",
                "fp32",
                "--backend",
                "onnxruntime",
                "--model",
                str(tmp / "model"),
                "--out",
                str(tmp / "engines"),
                "--tile",
                str(side),
                "--conv",
                auto_conv("onnxruntime", "fp32", device),
            ]
        )
        != 0
    ):
        raise RuntimeError("building the ONNX Runtime engine failed")
    return {"onnxruntime": load_runner(tmp / "engines", device=device)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="official", help="network shape (random weights)")
    ap.add_argument("--size", type=int, default=128, help="HR output side")
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=5, help="DDIM steps for the whole-image timing (steps - 1 calls)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per variant (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--onnxruntime", action="store_true", help="also time an ONNX Runtime engine of the same model")
    ap.add_argument("--out", default="latency", help="result name (<name>.json)")
    ap.add_argument("--no-allocator", action="store_true", help="leave glibc's allocator as it is")
    ap.add_argument("--sizes", help="output sides: per-image time and peak memory against size, per backend")
    ap.add_argument("--backends", default="torch,onnxruntime", help="with --sizes: backends to time")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    if args.sizes:
        from .size_scaling import main as scaling

        return scaling(
            ["--sides", args.sizes, "--backends", args.backends, "--threads", str(args.threads or 2)]
            + ["--replace"] * args.replace
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_allocator:
        idm_rt.configure_allocator()

    torch.manual_seed(0)
    model = idm_rt.IDM(idm_rt.preset(args.preset)).eval()
    size = (args.size, args.size)
    lr = torch.rand(1, 3, round(args.size / args.scale), round(args.size / args.scale)) * 2 - 1
    p = model.scale_fraction(args.scale)
    x = torch.randn(1, 3, *size)
    g = torch.tensor([0.5])

    with contextlib.ExitStack() as stack:
        runners = onnxruntime_runners(model, args.size, stack) if args.onnxruntime else {}
        runner = runners.get("onnxruntime")
        stack.enter_context(torch.inference_mode())
        cond = model.encode(lr, size)
        conditioning = model.condition(cond, p)

        release = ReleaseStyle(model)
        settings = idm_rt.SamplingSettings(sampler="ddim", steps=args.steps)

        def release_image():
            c = model.encode(lr, size)
            return sampler("ddim").run(
                lambda xt, lv: release.denoise(xt, c, p, lv), torch.randn(1, 3, *size), args.steps
            )

        def our_image():
            return super_resolve(model, lr, size, settings, scale=args.scale)

        calls = {
            "release_style": lambda: release.denoise(x, cond, p, g),
            "ours": lambda: model.denoise(x, conditioning, g),
        }
        images = {"release_style": release_image, "ours": our_image}
        if runner is not None:  # (its arrays are numpy's on a CPU)
            host = {name: t.numpy() for name, t in (("x", x), ("g", g), ("lr", lr), ("cond", cond), ("p", p))}
            ort_conditioning = runner.condition(runner.asarray(host["cond"]), runner.asarray(host["p"]))
            x_r, g_r, lr_r = (runner.asarray(host[k]) for k in ("x", "g", "lr"))
            calls["onnxruntime"] = lambda: runner.denoise(x_r, ort_conditioning, g_r)
            images["onnxruntime"] = lambda: super_resolve(runner, lr_r, size, settings, scale=args.scale)
        settle = ORT_SETTLE_S if runner is not None else 0.0
        call = interleaved(calls, args.repeats, settle_s=settle)
        image = interleaved(images, max(2, args.repeats // 2), settle_s=settle)

    res = {
        "preset": args.preset,
        "output": f"{args.size}x{args.size}",
        "dtype": "float32",
        "allocator": "glibc default" if args.no_allocator else "idm_rt.configure_allocator",
        "unet_call": {k: summary(v) for k, v in call.items()},
        "image": {k: summary(v) for k, v in image.items()},
        "image_sampler": f"ddim, {args.steps} steps ({calls_for('ddim', args.steps)} U-Net calls)",
    }
    for part in ("unet_call", "image"):
        base = res[part]["release_style"]["median_s"]
        res[part]["speedup"] = base / res[part]["ours"]["median_s"]
        if runner is not None:
            res[part]["speedup_onnxruntime"] = base / res[part]["onnxruntime"]["median_s"]
            res[part]["onnxruntime_vs_ours"] = res[part]["ours"]["median_s"] / res[part]["onnxruntime"]["median_s"]
    path = write(args.out, res, "latency", args.replace)
    print(f"{args.preset} {args.size}x{args.size} float32, {torch.get_num_threads()} threads")
    for part in ("unet_call", "image"):
        r = res[part]
        line = (
            f"  {part:9s} release-style {r['release_style']['median_s']:.3f} s   ours {r['ours']['median_s']:.3f} s"
            f" ({r['speedup']:.2f}x)"
        )
        if runner is not None:
            line += f"   onnxruntime {r['onnxruntime']['median_s']:.3f} s ({r['speedup_onnxruntime']:.2f}x)"
        print(line)
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
