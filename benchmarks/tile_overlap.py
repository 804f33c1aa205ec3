"""How much tiles must overlap for seamless outputs: the bundled model's images tiled with overlaps from
8 px to half a tile, against the same image untiled (same seed), at its default sampling.

Per overlap: PSNR of the tiled image against the untiled one, and the seam ratio: the mean absolute step
between neighbouring pixels across every tile edge (both ends of each overlap, rows and columns), over
the same steps in the untiled image. 1.0 means the tiling leaves no edge the image itself does not have.

    python -m benchmarks.tile_overlap [--model M] [--tile 192] [--overlaps 8,16,24,32,48,64,96]
"""

from __future__ import annotations

import argparse

import torch

import idm_rt
from idm_rt.arrays import Noise
from idm_rt.pipeline import super_resolve
from idm_rt.tiling import TilePlan
from idm_rt.training.evaluate import SKIMAGE_PHOTOS, load_images
from idm_rt.training.metrics import make_pair, psnr_y

from .common import add_replace_argument, write


def seam_ratio(tiled: torch.Tensor, full: torch.Tensor, plan: TilePlan) -> float:
    """Mean |step| across the plan's tile edges in ``tiled`` over the same in ``full`` (images (3, H, W))."""
    h, w = plan.size
    rows = sorted({e for t, _, th, _ in plan.tiles for e in (t, t + th) if 0 < e < h})
    cols = sorted({e for _, left, _, tw in plan.tiles for e in (left, left + tw) if 0 < e < w})

    def steps(img: torch.Tensor) -> float:
        across = [(img[:, r] - img[:, r - 1]).abs().mean() for r in rows]
        across += [(img[:, :, c] - img[:, :, c - 1]).abs().mean() for c in cols]
        return float(torch.stack(across).mean())

    return steps(tiled) / steps(full)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--crop", type=int, default=384, help="HR crop side (the output's size)")
    ap.add_argument("--tile", type=int, default=192)
    ap.add_argument("--overlaps", default="8,16,24,32,48,64,96")
    ap.add_argument("--seeds", default="0,1")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    up = idm_rt.Upscaler.from_pretrained(args.model)
    model, settings = up.model, up.sampling
    overlaps = [int(o) for o in args.overlaps.split(",")]
    rows = {o: {"psnr_vs_untiled": [], "seam_ratio": []} for o in overlaps}
    for name, img in load_images("skimage", args.crop)[:3]:
        hr, lr = make_pair(img, args.scale)
        size = tuple(hr.shape[-2:])
        for seed in (int(s) for s in args.seeds.split(",")):
            run = lambda **kw: super_resolve(model, lr, size, settings, scale=args.scale, noise=Noise([seed]), **kw)[0]
            full = (run() + 1) / 2
            for o in overlaps:
                plan = TilePlan.for_image(size, args.tile, model.config.size_multiple, o)
                tiled = (run(plan=plan) + 1) / 2
                rows[o]["psnr_vs_untiled"].append(psnr_y(tiled.double(), full.double()))
                rows[o]["seam_ratio"].append(seam_ratio(tiled, full, plan))
                print(
                    f"{name} seed {seed} overlap {o:3d}: PSNR vs untiled {rows[o]['psnr_vs_untiled'][-1]:.2f} dB, "
                    f"seam ratio {rows[o]['seam_ratio'][-1]:.3f}",
                    flush=True,
                )
    table = [
        {
            "overlap": o,
            "psnr_vs_untiled": sum(r["psnr_vs_untiled"]) / len(r["psnr_vs_untiled"]),
            "seam_ratio": sum(r["seam_ratio"]) / len(r["seam_ratio"]),
            "seam_ratio_max": max(r["seam_ratio"]),
        }
        for o, r in rows.items()
    ]
    for r in table:
        print(
            f"overlap {r['overlap']:3d}: PSNR vs untiled {r['psnr_vs_untiled']:.2f} dB, seam ratio "
            f"{r['seam_ratio']:.3f} (max {r['seam_ratio_max']:.3f})"
        )
    res = {
        "model": args.model or "default",
        "sampling": settings.to_dict(),
        "images": list(SKIMAGE_PHOTOS[:3]),
        "output": f"{args.crop}x{args.crop}",
        "scale": args.scale,
        "tile": args.tile,
        "rows": table,
    }
    print(f"wrote {write('tile_overlap', res, 'tile_overlap', args.replace)}")
    return res


if __name__ == "__main__":
    main()
