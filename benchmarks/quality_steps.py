"""Quality against sampling steps: ddim vs dpmpp_2m at 5-50 steps, the curve the default sampler and
step count are chosen from, with the fine detail and naturalness of each setting (the detail-against-PSNR
curve). Held-out images: scikit-image's bundled photos (never trained on), or any folder (``--data``, e.g.
the images a training run held out, to choose settings on data that is not the reported test set).

    python -m benchmarks.quality_steps                    # bundled default model, 4x, 192px crops
    python -m benchmarks.quality_steps --model runs/default/checkpoints/step_00008000/ema --scales 2,4,8
    python -m benchmarks.quality_steps --inits bicubic:0.9 --back-projection 0,2    # with LR back-projection
"""

from __future__ import annotations

import argparse

import idm_rt
from idm_rt.training.evaluate import SKIMAGE_PHOTOS, cell, evaluate, load_images

from .common import add_replace_argument, write


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--scales", default="4", help="comma-separated scales, each a curve")
    ap.add_argument("--steps", default="5,10,20,50")
    ap.add_argument("--samplers", default="ddim,dpmpp_2m")
    ap.add_argument(
        "--inits",
        default="noise,bicubic:0.5,bicubic:0.7",
        help="starts to compare: noise, or bicubic:LEVEL / estimate:LEVEL for the bicubic upscale or the "
        "model's HR estimate diffused to noise level LEVEL",
    )
    ap.add_argument("--back-projection", default="0", help="comma-separated back-projection passes per step to compare")
    ap.add_argument("--data", default="skimage", help="'skimage' or a folder of HR images")
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--out", default="quality_steps", help="result name (<name>.json)")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    model = idm_rt.Upscaler.from_pretrained(args.model).model
    images = load_images(args.data, args.crop)
    scales = [float(v) for v in args.scales.split(",")]
    curve = []
    for start in args.inits.split(","):
        init, _, level = start.partition(":")
        for passes in (int(n) for n in args.back_projection.split(",")):
            for sampler in args.samplers.split(","):
                for steps in (int(s) for s in args.steps.split(",")):
                    settings = idm_rt.SamplingSettings(
                        sampler=sampler, steps=steps, init=init, init_level=float(level or 0.5), back_projection=passes
                    )
                    for row in evaluate(model, images, scales, settings):
                        curve.append(
                            {"init": start, "back_projection": passes, "sampler": sampler, "steps": steps, **row}
                        )
                        print(
                            f"{row['scale']:g}x {start:12s} bp{passes} {sampler:9s} {steps:3d} steps: PSNR(Y) "
                            f"{row['psnr']:.2f} (bicubic {row['psnr_bic']:.2f})  SSIM {row['ssim']:.4f} (bicubic "
                            f"{row['ssim_bic']:.4f})  Consistency {row['cons']:.2f}e-5  detail "
                            f"{cell(row['detail'], 3)} (correlated {cell(row['detail_corr'], 3)})  NIQE "
                            f"{cell(row['niqe'], 2)}"
                        )
    names = (
        "scikit-image photos: " + ", ".join(SKIMAGE_PHOTOS)
        if args.data == "skimage"
        else f"{args.data}: " + ", ".join(name for name, _ in images)
    )
    res = {"model": args.model or "default", "images": names, "crop": args.crop, "scales": scales, "curve": curve}
    print(f"wrote {write(args.out, res, 'quality_steps', args.replace)}")
    return res


if __name__ == "__main__":
    main()
