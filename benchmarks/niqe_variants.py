"""Which NIQE suits the 192 px crops ``idm_rt.training.evaluate`` scores: patch side, the spacing of a scored
image's patches (side by side, as the paper, or overlapping by half) and the sharpness threshold of the
pristine model (the paper's 0.75, lower, or every patch). Each variant is fitted on the training images
(``--data``, its last ``--holdout`` images by path left out, as ``idm_rt.training.niqe_fit`` does) and scores
the candidates of ``benchmarks.detail_measures`` (bicubic, the model's HR estimate, that estimate plus
white or band-limited noise, the HR) on 192 px crops of the held-out images (to choose on) and of
scikit-image's photos (the evaluation set, to report). Needs the training images (../shared/datasets).

    python -m benchmarks.niqe_variants --data ../shared/datasets
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

import idm_rt
from idm_rt.fileio import atomic_write
from idm_rt.threads import add_threads_argument, configure_threads
from idm_rt.training.data import center_crop, load_rgb, scan_folder, split_holdout
from idm_rt.training.evaluate import load_images
from idm_rt.training.niqe import mvg_distance, patch_features
from idm_rt.training.niqe_fit import fit, image_patches, select

from .common import add_replace_argument, write
from .detail_measures import candidates

NOISY = ("estimate+white_full", "estimate+band_full", "estimate+white_to_hr", "estimate+band_to_hr")
SHORT = {
    "bicubic": "bicubic",
    "estimate": "estimate",
    "hr": "HR",
    "estimate+white_full": "white, band's energy",
    "estimate+band_full": "band, band's energy",
    "estimate+white_to_hr": "white, to HR's",
    "estimate+band_to_hr": "band, to HR's",
}


def score(mean: np.ndarray, cov: np.ndarray, feats: np.ndarray) -> float:
    own = np.cov(feats, rowvar=False) if len(feats) > 1 else np.zeros_like(cov)
    return mvg_distance(mean, cov, feats.mean(0), own)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the training images (the NIQE model's pristine set)")
    ap.add_argument("--holdout", type=int, default=4)
    ap.add_argument("--patches", default="96,64,48")
    ap.add_argument("--thresholds", default="0,0.5,0.75")
    ap.add_argument("--scales", default="2,4")
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--out", default="niqe_variants")
    add_threads_argument(ap)
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    configure_threads(args.threads)
    model = idm_rt.Upscaler.from_pretrained().model
    train, held_out = split_holdout(
        scan_folder(args.data, min_size=max(map(int, args.patches.split(",")))).images, args.holdout, args.data
    )
    sets = {
        "held-out": [(p.stem, center_crop(load_rgb(p), args.crop)) for p in held_out],
        "skimage": load_images("skimage", args.crop),
    }
    scales = [float(v) for v in args.scales.split(",")]
    # every candidate image, (3, H, W) in [0, 1], by (set, scale, candidate, image name)
    images = {
        (name, s, cand, n): (t[0].double() + 1) / 2
        for name, crops in sets.items()
        for s in scales
        for n, img in crops
        for cand, t in candidates(model, img, s, 0).items()
    }
    rows = []
    for patch in map(int, args.patches.split(",")):
        per_image = image_patches(train, patch)
        for stride in (patch, patch // 2):
            feats = {k: patch_features(im, patch, stride)[0] for k, im in images.items()}
            for threshold in map(float, args.thresholds.split(",")):
                mean, cov = fit(select(per_image, threshold))
                for name, crops in sets.items():
                    for s in scales:
                        by = {c: [score(mean, cov, feats[name, s, c, n]) for n, _ in crops] for c in SHORT}
                        med = {c: statistics.median(v) for c, v in by.items()}
                        rows.append(
                            {
                                "patch": patch,
                                "stride": stride,
                                "threshold": threshold,
                                "set": name,
                                "scale": s,
                                "medians": med,
                                "ranked": med["bicubic"] > med["estimate"] > med["hr"],
                                "noise_worse": {c: med[c] > med["estimate"] for c in NOISY},
                                "noise_worse_crops": {
                                    c: sum(a > b for a, b in zip(by[c], by["estimate"])) for c in NOISY
                                },
                            }
                        )
                        print(_line(rows[-1]), flush=True)
    result = {
        "data": args.data,
        "held_out": [p.name for p in held_out],
        "train_images": len(train),
        "crop": args.crop,
        "rows": rows,
    }
    path = write(args.out, result, "niqe_variants", args.replace)
    full = json.loads(path.read_text())  # with the command and machine
    atomic_write(path.with_suffix(".md"), lambda p: Path(p).write_text(markdown(full)))
    return full


def _line(r: dict) -> str:
    noise = " ".join(f"{'+' if r['noise_worse'][c] else '-'}{r['noise_worse_crops'][c]}" for c in NOISY)
    return (
        f"| {r['patch']} | {'side by side' if r['stride'] == r['patch'] else 'half overlap'} | {r['threshold']:g} "
        f"| {r['set']} | {r['scale']:g}x | "
        + " | ".join(f"{r['medians'][c]:.2f}" for c in SHORT)
        + f" | {'yes' if r['ranked'] else 'NO'} | {noise} |"
    )


def markdown(result: dict) -> str:
    lines = [
        "# NIQE variants for 192 px crops",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. Pristine model: "
        f"{result['train_images']} training images of `{result['data']}`; held out: "
        f"{', '.join(result['held_out'])}. NIQE medians over the {result['crop']} px crops (lower is more "
        "natural); 'ranked': bicubic > estimate > HR; 'noise worse': each noisy estimate scores worse than "
        "the estimate's, in the order of the noise columns (+ yes, - no; then on how many crops). The "
        "bundled model (`training/niqe_model.json`) is the row 96 / half overlap / 0.",
        "",
        "| patch | scored patches | threshold | crops | scale | "
        + " | ".join(SHORT.values())
        + " | ranked | noise worse |",
        "|---" * (7 + len(SHORT)) + "|",
    ]
    lines += [_line(r) for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
