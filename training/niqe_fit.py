"""``python -m idm_rt.training.niqe_fit``: fit NIQE's pristine model (:mod:`.niqe`) on a folder of natural
images and save it as JSON, with the command, the data and the counts it was made from.

Patches tile each image side by side. ``--threshold T`` keeps, as the paper does (T = 0.75), only each
image's sharpest patches: those whose sharpness (the sum of the local deviation sigma over the patch)
exceeds T times the image's sharpest patch's. The bundled model keeps every patch that is not flat
(T = 0): fitted on the sharpest only, it more often scored band-limited noise added to the model's smooth
HR estimate as more natural than the estimate (``benchmarks/results/niqe_variants.md``). The last
``--holdout`` images by path are left out, the rule the trainer holds out its validation images by.

Example (the bundled model, ``training/niqe_model.json``):
  python -m idm_rt.training.niqe_fit --data ../shared/datasets --out training/niqe_model.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from idm_rt.fileio import atomic_write
from idm_rt.threads import add_threads_argument, configure_threads

from .data import load_rgb, scan_folder, split_holdout
from .niqe import FEATURES, MIN_PATCH, patch_features

FORMAT = "idm-rt-niqe/1"
MAX_PATCH = 512


def image_patches(images: list[Path], patch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, (features (N, 36), sharpness (N,)) of its patches side by side."""
    return [
        patch_features(load_rgb(path).double() / 255, patch)
        for path in tqdm(images, desc=f"NIQE features, {patch} px patches", unit="img")
    ]


def select(per_image: list[tuple[np.ndarray, np.ndarray]], threshold: float) -> np.ndarray:
    """The features of each image's patches sharper than ``threshold`` times its sharpest (finite ones)."""
    return np.concatenate([f[(s > threshold * s.max()) & np.isfinite(f).all(1)] for f, s in per_image])


def fit(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of patch features (N, 36); ValueError when too few for a covariance."""
    if len(feats) <= FEATURES:
        raise ValueError(f"only {len(feats)} patches kept: too few for a {FEATURES}-dimensional covariance")
    return feats.mean(0), np.cov(feats, rowvar=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m idm_rt.training.niqe_fit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data", required=True, help="folder of pristine natural images (searched recursively)")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write (replaces only a NIQE model)")
    ap.add_argument(
        "--patch", type=int, default=96, help="patch side in pixels, a multiple of 4 (default 96, the paper's)"
    )
    ap.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="keep patches sharper than this fraction of the image's sharpest (default 0: all; the paper's 0.75)",
    )
    ap.add_argument("--holdout", type=int, default=4, help="leave out the last N images by path (default 4)")
    add_threads_argument(ap)
    args = ap.parse_args(argv)
    configure_threads(args.threads)
    try:
        if not MIN_PATCH <= args.patch <= MAX_PATCH or args.patch % 4:
            raise ValueError(f"--patch must be a multiple of 4 in {MIN_PATCH}..{MAX_PATCH}, got {args.patch}")
        if not 0 <= args.threshold < 1:
            raise ValueError(f"--threshold must be in [0, 1), got {args.threshold}")
        if args.holdout < 0:
            raise ValueError(f"--holdout must be >= 0, got {args.holdout}")
        if args.out.is_dir() or any(p.exists() and not p.is_dir() for p in args.out.parents):
            raise ValueError(f"--out {args.out} is a folder, or lies under a file")
        if args.out.exists() and not _is_model(args.out):
            raise ValueError(f"--out {args.out} exists and is not a NIQE model this command wrote; not replacing it")
        scan = scan_folder(args.data, min_size=args.patch)
        for path, why in scan.skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        images, held_out = split_holdout(scan.images, args.holdout, args.data)
        per_image = image_patches(images, args.patch)
        kept = select(per_image, args.threshold)
        mean, cov = fit(kept)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = Path(args.data)
    result = {
        "format": FORMAT,
        "command": shlex.join(
            ["python", "-m", "idm_rt.training.niqe_fit", *(argv if argv is not None else sys.argv[1:])]
        ),
        "paper": "Mittal, Soundararajan, Bovik, Making a 'completely blind' image quality analyzer, IEEE SPL 2013",
        "patch": args.patch,
        "threshold": args.threshold,
        "data": {
            "folder": args.data,
            "images": len(images),
            "skipped": [str(p.relative_to(root)) for p, _ in scan.skipped],
            "held_out": [str(p.relative_to(root)) for p in held_out],
            "patches_seen": sum(len(f) for f, _ in per_image),
            "patches_kept": len(kept),
        },
        "mean": mean.tolist(),
        "cov": cov.tolist(),
    }
    atomic_write(args.out, lambda p: Path(p).write_text(json.dumps(result, indent=1) + "\n"))
    print(
        f"{args.out}: {result['data']['patches_kept']} of {result['data']['patches_seen']} patches from "
        f"{len(images)} images"
    )
    return 0


def _is_model(path: Path) -> bool:
    """Whether ``path`` holds a model this command wrote (so that replacing it loses nothing else)."""
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


if __name__ == "__main__":
    sys.exit(main())
