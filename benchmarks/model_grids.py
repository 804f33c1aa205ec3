"""Side-by-side grids of models against bicubic and the HR image, per scale, on scikit-image's photos (the
evaluation protocol of ``idm_rt.training.evaluate``: center crops, 8-bit LR, each model at its own
recommended sampling, seed 0): one PNG per scale, a row per photo, columns bicubic | each model | HR.

    python -m benchmarks.model_grids --models previous=/path/to/old,new=idm_rt/weights/default --scales 2,4,8
"""

from __future__ import annotations

import argparse

import idm_rt
from idm_rt.arrays import Noise
from idm_rt.pipeline import super_resolve
from idm_rt.training.evaluate import SKIMAGE_PHOTOS, load_images
from idm_rt.training.metrics import as_saved, bicubic, make_pair
from idm_rt.training.visual import save_grid

from .common import add_replace_argument, results_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="NAME=PATH,... in column order")
    ap.add_argument("--scales", default="2,4,8")
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--images", default="astronaut,coffee,chelsea", help=f"some of {','.join(SKIMAGE_PHOTOS)}")
    ap.add_argument("--name", default="default_model_grid", help="files: <name>_x<scale>.png")
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    models = [
        (name, idm_rt.Upscaler.from_pretrained(path))
        for name, path in (item.split("=", 1) for item in args.models.split(","))
    ]
    wanted = args.images.split(",")
    images = [(n, img) for n, img in load_images("skimage", args.crop) if n in wanted]
    for s in (float(v) for v in args.scales.split(",")):
        rows = []
        for _, img in images:
            hr, lr = make_pair(img, s)
            size = tuple(hr.shape[-2:])
            outputs = [super_resolve(up.model, lr, size, up.sampling, scale=s, noise=Noise([0])) for _, up in models]
            rows.append([as_saved(t).float() for t in (bicubic(lr, size), *outputs, hr)])
        path = results_dir(args.replace) / f"{args.name}_x{s:g}.png"
        labels = ["bicubic", *(n for n, _ in models), "HR"]
        save_grid(rows, path, labels=[f"{label} ({s:g}x)" if k == 0 else label for k, label in enumerate(labels)])
        print(f"wrote {path}: {', '.join(labels)}; rows {', '.join(wanted)}")


if __name__ == "__main__":
    main()
