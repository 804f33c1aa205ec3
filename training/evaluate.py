"""``python -m idm_rt.training.evaluate``: PSNR/SSIM (Y, border cropped) and Consistency of a model against
bicubic, per scale (means over the images); and the fine detail beyond the LR's band that the outputs hold
(:func:`~.metrics.detail_fractions`: all of it, and the part correlated with the HR) and their naturalness
(NIQE, :mod:`.niqe`, lower is more natural; the HR's too), medians over the images; as Markdown tables and JSON.

Examples:
  python -m idm_rt.training.evaluate --data skimage --scales 2,3,4,6,8 --crop 192
  python -m idm_rt.training.evaluate --model runs/small/checkpoints/step_00040000/ema --data val/ --save-dir eval_out
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import idm_rt
from idm_rt import sampling
from idm_rt.arrays import Noise, to_host
from idm_rt.fileio import atomic_write
from idm_rt.memory import configure_allocator
from idm_rt.model.protocol import SamplingModel
from idm_rt.pipeline import super_resolve
from idm_rt.sampling import SamplingSettings
from idm_rt.threads import add_threads_argument, configure_threads
from idm_rt.tiling import TilePlan

from .data import center_crop, load_rgb, scan_folder
from .metrics import as_saved, bicubic, detail_fractions, make_pair, measure, protocol_side
from .niqe import NIQEModel
from .visual import save_grid

# scikit-image's bundled natural photos (public domain / CC0): a public held-out check.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def load_images(data: str, crop: int | None) -> list[tuple[str, torch.Tensor]]:
    """(name, (3, H, W) uint8) for every image of a folder, or of scikit-image's photos for ``skimage``."""
    if data == "skimage":
        from skimage import data as skdata

        images = [
            (n, torch.from_numpy(np.ascontiguousarray(getattr(skdata, n)())).permute(2, 0, 1)) for n in SKIMAGE_PHOTOS
        ]
    else:
        scan = scan_folder(data, min_size=8)
        for path, why in scan.skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        images = [(p.stem, load_rgb(p)) for p in scan.images]
    return [(n, center_crop(im, crop) if crop else im) for n, im in images]


def large_enough(images: list[tuple[str, torch.Tensor]], scales: list[float]) -> list[tuple[str, torch.Tensor]]:
    """The images every scale can be measured on (SSIM's 11-pixel window must fit inside the border
    of ceil(s) pixels the metrics leave out of the :func:`protocol_side` crop), saying which are
    skipped; ValueError when none is left."""

    def measurable(side: int, s: float) -> bool:
        return protocol_side(side, s) - 2 * math.ceil(s) >= 11

    kept = []
    for name, img in images:
        bad = [s for s in scales if not measurable(min(img.shape[-2:]), s)]
        if bad:
            print(
                f"skipped {name}: {img.shape[-1]}x{img.shape[-2]} is too small to evaluate at {bad[0]:g}x",
                file=sys.stderr,
            )
        else:
            kept.append((name, img))
    if not kept:
        raise ValueError(
            f"no image is large enough to evaluate at {max(scales):g}x (a larger --crop or smaller --scales)"
        )
    return kept


MEANS = ("psnr", "ssim", "cons")  # averaged over the images, as SR papers do
MEDIANS = ("detail", "detail_corr", "niqe")  # medians: a crop with almost no HR detail makes a wild ratio


def detail_and_naturalness(out: torch.Tensor, hr: torch.Tensor, s: float, niqe: NIQEModel) -> dict[str, float]:
    """:func:`~.metrics.detail_fractions` (border ceil(s), as PSNR) and NIQE (NaN below one NIQE patch) of an
    output (1, 3, H, W) in [-1, 1], rounded to 8 bits as it would be saved."""
    out = as_saved(out)
    small = min(out.shape[-2:]) < niqe.patch
    return {**detail_fractions(out, as_saved(hr), s, math.ceil(s)), "niqe": float("nan") if small else niqe.score(out)}


def evaluate(
    model: SamplingModel,
    images: list[tuple[str, torch.Tensor]],
    scales: list[float],
    settings: SamplingSettings,
    seed: int = 0,
    save_dir: Path | None = None,
    device: str = "cpu",
    tile: int | None = None,
    outputs: dict | None = None,
    niqe: NIQEModel | None = None,
) -> list[dict]:
    """Per scale, of ours and of bicubic: mean PSNR(Y), SSIM(Y) and Consistency (x1e-5); median detail
    fractions and NIQE (``niqe``: the bundled pristine model by default), and the HR's median NIQE (None
    where no image is one NIQE patch large). ``outputs``, when given, receives each of our 8-bit images
    ((3, H, W) in [0, 1]) by (scale, name), to compare models."""
    niqe = niqe or NIQEModel.load()
    small = [n for n, im in images if min(im.shape[-2:]) < niqe.patch]
    if small:
        print(
            f"NIQE not measured on {', '.join(small)}: smaller than its {niqe.patch}x{niqe.patch} patch",
            file=sys.stderr,
        )
    rows = []
    total = len(scales) * len(images)
    bar = tqdm(total=total, desc="evaluate", unit="img")
    for s in scales:
        acc: dict[str, list[float]] = {k + key: [] for k in MEANS + MEDIANS for key in ("", "_bic")}
        acc["niqe_hr"] = []
        for name, img in images:
            hr, lr = make_pair(img, s, device)
            size = tuple(hr.shape[-2:])
            plan = TilePlan.for_image(size, tile, model.config.size_multiple) if tile else None
            # the model's own kind of array in (numpy for an engine runner) and a tensor out, so that engines are
            # evaluated as the torch model is (benchmarks.int8_onnx)
            out = super_resolve(
                model, model.asarray(to_host(lr)), size, settings, scale=s, noise=Noise([seed]), plan=plan
            )
            sr = torch.as_tensor(to_host(out)).to(hr.device)
            bic = bicubic(lr, size)
            if outputs is not None:
                outputs[s, name] = as_saved(sr)
            for key, out in (("", sr), ("_bic", bic)):
                for metric, value in {**measure(out, hr, lr, s), **detail_and_naturalness(out, hr, s, niqe)}.items():
                    acc[metric + key].append(value)
            acc["niqe_hr"].append(detail_and_naturalness(hr, hr, s, niqe)["niqe"])
            if save_dir is not None:
                save_grid([[(t[0].cpu() + 1) / 2 for t in (bic, sr, hr)]], save_dir / f"x{s:g}" / f"{name}_grid.png")
            bar.update(1)
        rows.append({"scale": s, **{k: _summary(k, v) for k, v in acc.items()}, "images": len(images)})
    bar.close()
    return rows


def _summary(key: str, values: list[float]) -> float | None:
    """The mean or the median (:data:`MEANS`, :data:`MEDIANS`) of the images' values, NaN ones left out; None
    (JSON's null) when every one is NaN."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return None
    return float(np.mean(finite) if key.split("_")[0] in MEANS else np.median(finite))


def cell(value: float | None, digits: int) -> str:
    """A table cell: ``value`` to ``digits`` decimals, "n/a" where nothing could be measured."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict], title: str) -> str:
    """Two tables: the fidelity measures (means), then fine detail and naturalness (medians)."""
    lines = [
        f"**{title}**",
        "",
        "| scale | PSNR(Y) ours | PSNR(Y) bicubic | SSIM(Y) ours | SSIM(Y) bicubic | Consistency ours (x1e-5) "
        "| Consistency bicubic (x1e-5) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']:g}x | {cell(r['psnr'], 2)} | {cell(r['psnr_bic'], 2)} | {cell(r['ssim'], 4)} "
            f"| {cell(r['ssim_bic'], 4)} | {cell(r['cons'], 2)} | {cell(r['cons_bic'], 2)} |"
        )
    lines += [
        "",
        "Fine detail (fractions of the HR's energy beyond the LR's band: all of it, and only what is "
        "correlated with the HR) and naturalness (NIQE, lower is more natural), medians over the images:",
        "",
        "| scale | detail ours | detail bicubic | correlated detail ours | correlated detail bicubic "
        "| NIQE ours | NIQE bicubic | NIQE HR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']:g}x | {cell(r['detail'], 3)} | {cell(r['detail_bic'], 3)} "
            f"| {cell(r['detail_corr'], 3)} | {cell(r['detail_corr_bic'], 3)} | {cell(r['niqe'], 2)} "
            f"| {cell(r['niqe_bic'], 2)} | {cell(r['niqe_hr'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def _writable_folder(path: Path) -> bool:
    """Whether ``path`` is a folder or can be made one (no file at it or at any of its parents)."""
    return not any(p.exists() and not p.is_dir() for p in (path, *path.parents))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m idm_rt.training.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", help="checkpoint (project folder or released .pth); default: the bundled model")
    ap.add_argument("--data", required=True, help="folder of HR images, or 'skimage' for scikit-image's photos")
    ap.add_argument("--scales", default="2,3,4,6,8", help="comma-separated magnifications (default 2,3,4,6,8)")
    sampling.add_arguments(ap)
    ap.add_argument("--crop", type=int, help="evaluate on a central crop of this side (faster on a CPU)")
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sampler's noise, the same for every image and scale (default 0): the same seed "
        "gives the same table",
    )
    ap.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda or cuda:N")
    ap.add_argument("--tile", type=int, help="HR tile side for large images (default, or 0: untiled)")
    ap.add_argument("--save-dir", type=Path, help="write comparison grids (bicubic | ours | HR) here")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    add_threads_argument(ap)
    args = ap.parse_args(argv)
    configure_threads(args.threads)
    configure_allocator()
    try:
        scales = [float(s) for s in args.scales.split(",")]
        if not all(math.isfinite(s) and s > 1 for s in scales):
            raise ValueError(f"scales must be finite numbers > 1, got {args.scales}")
        up = idm_rt.Upscaler.from_pretrained(args.model, device=args.device)
        settings = sampling.from_arguments(args, up.sampling, up.presets)
        multiple = up.model.config.size_multiple
        if args.tile is not None and args.tile != 0 and args.tile < 2 * multiple:
            raise ValueError(f"--tile must be 0 (off) or at least {2 * multiple} for this model, got {args.tile}")
        images = large_enough(load_images(args.data, args.crop), scales)
        # said now, not after the whole evaluation has run
        if not 0 <= args.seed < 2**63:
            raise ValueError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
        if args.json is not None and (args.json.is_dir() or not _writable_folder(args.json.parent)):
            raise ValueError(f"--json {args.json} cannot be written: it is a folder or lies under a file")
        if args.save_dir is not None and not _writable_folder(args.save_dir):
            raise ValueError(f"--save-dir {args.save_dir} is a file, or lies under one")
    except (ValueError, FileNotFoundError) as e:  # CheckpointMismatch is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = evaluate(up.model, images, scales, settings, args.seed, args.save_dir, args.device, args.tile)
    start = f"{settings.init} start at {settings.init_level:g}" if settings.init != "noise" else "noise start"
    title = (
        f"{args.data}, {len(images)} images{f', {args.crop}px crops' if args.crop else ''}, {settings.sampler} "
        f"{settings.steps} steps, {start}, back-projection {settings.back_projection}, seed {args.seed}"
    )
    print(markdown(rows, title))
    if args.json:
        result = {
            "model": args.model or "default",
            "data": args.data,
            "crop": args.crop,
            **settings.to_dict(),
            "seed": args.seed,
            "rows": rows,
        }
        atomic_write(args.json, lambda p: Path(p).write_text(json.dumps(result, indent=2) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
