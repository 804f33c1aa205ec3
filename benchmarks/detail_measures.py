"""Validation of the fine-detail and naturalness measures of ``idm_rt.training.evaluate`` (issue 29): on
held-out photos, do they rank bicubic below the model's HR estimate below the HR, and does noise added
to the estimate score as detail?

Candidates per crop: bicubic; the bundled model's HR estimate alone (``model.encode``: no U-Net call, no
back-projection); that estimate plus grey Gaussian noise, white or limited to the band the LR cannot hold
(:func:`~idm_rt.training.metrics.detail_band`), scaled to two band energies: what the estimate lacks of the
HR's band energy (its plain detail fraction then matches the HR's, 1) and the HR's whole band energy
("noise of the band's energy"); the HR. Measures: PSNR(Y), the detail fraction, the correlated detail
fraction and NIQE, per crop and as medians.

    python -m benchmarks.detail_measures                  # skimage photos, 192 px crops, 2x and 4x
    python -m benchmarks.detail_measures --niqe-model /tmp/p48.json --out detail_measures_p48
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

import idm_rt
from idm_rt.fileio import atomic_write
from idm_rt.threads import add_threads_argument, configure_threads
from idm_rt.training.evaluate import detail_and_naturalness, load_images
from idm_rt.training.metrics import bicubic, detail_band, detail_fractions, make_pair, psnr_y, quantize
from idm_rt.training.niqe import MODEL_FILE, NIQEModel

from .common import add_replace_argument, write

NOISES = {"white": "white", "band": "band-limited"}
LEVELS = {"to_hr": "to the HR's detail", "full": "of the band's energy"}
MEASURES = ("psnr", "detail", "detail_corr", "niqe")


def band_noise(hr: torch.Tensor, s: float, energy: float, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Grey Gaussian noise (1, 3, H, W) in [-1, 1] units, white or limited to the band 1/s <= r <= 1, whose Y
    energy in that band (border ceil(s) cut) is ``energy`` times the HR's (``hr`` (1, 3, H, W) in [-1, 1])."""
    h, w = hr.shape[-2:]
    z = torch.randn((h, w), generator=gen, dtype=torch.float64)
    if kind == "band":
        z = torch.fft.ifft2(torch.fft.fft2(z) * ~detail_band((h, w), s).isnan()).real
    grey = z.expand(3, h, w)
    unit = detail_fractions(grey / 2, (hr[0].double() + 1) / 2, s, math.ceil(s))["detail"]  # per unit of z
    return (grey * math.sqrt(energy / unit))[None].to(hr.dtype)


def candidates(model: idm_rt.IDM, img: torch.Tensor, s: float, seed: int) -> dict[str, torch.Tensor]:
    """The images compared on one crop, (1, 3, H, W) in [-1, 1], as 8-bit files would hold them."""
    hr, lr = make_pair(img, s)
    size = tuple(hr.shape[-2:])
    with torch.no_grad():
        est = quantize(model.encode(lr, size))
    out = {"bicubic": quantize(bicubic(lr, size)), "estimate": est}
    lack = 1 - detail_fractions((est[0] + 1) / 2, (hr[0] + 1) / 2, s, math.ceil(s))["detail"]
    gen = torch.Generator().manual_seed(seed)
    for kind in NOISES:
        for level, energy in (("to_hr", lack), ("full", 1.0)):
            out[f"estimate+{kind}_{level}"] = quantize(est + band_noise(hr, s, energy, kind, gen))
    return {**out, "hr": hr}


def measure_all(
    images: list[tuple[str, torch.Tensor]], model: idm_rt.IDM, scales: list[float], niqe: NIQEModel, seed: int
) -> dict:
    """PSNR(Y) (None for the HR itself), detail fractions and NIQE of every candidate: per crop, and the medians
    over the crops, by scale ("2x") and candidate."""
    per_crop: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for s in scales:
        for name, img in images:
            outs = candidates(model, img, s, seed)
            hr = outs["hr"]
            for cand, out in outs.items():
                psnr = psnr_y((out[0].double() + 1) / 2, (hr[0].double() + 1) / 2, math.ceil(s))
                values = {
                    "psnr": psnr if math.isfinite(psnr) else None,  # the HR's own: JSON has no infinity
                    **detail_and_naturalness(out, hr, s, niqe),
                }
                per_crop.setdefault(f"{s:g}x", {}).setdefault(cand, {})[name] = values
    medians = {
        sc: {
            cand: {
                m: None
                if any(v[m] is None for v in crops.values())
                else statistics.median(v[m] for v in crops.values())
                for m in MEASURES
            }
            for cand, crops in by_cand.items()
        }
        for sc, by_cand in per_crop.items()
    }
    return {"per_crop": per_crop, "medians": medians}


def checks(medians: dict) -> dict[str, dict[str, bool]]:
    """The orderings the measures must give on the medians of each scale ("required": issue 29's), and the
    ones measured beside them ("also": noise of what the estimate lacks, which NIQE may find natural)."""
    out: dict[str, dict[str, bool]] = {"required": {}, "also": {}}
    for sc, m in medians.items():
        bic, est, hr = m["bicubic"], m["estimate"], m["hr"]
        for key in ("detail", "detail_corr"):
            out["required"][f"{sc} {key}: bicubic < estimate < HR"] = bic[key] < est[key] < hr[key]
        out["required"][f"{sc} NIQE: bicubic > estimate > HR"] = bic["niqe"] > est["niqe"] > hr["niqe"]
        for cand, v in m.items():
            if cand.startswith("estimate+"):
                group = out["required" if cand.endswith("_full") else "also"]
                # not real detail: the correlated fraction moves by less than 0.05 (the HR's is 1)
                group[f"{sc} {_label(cand)}: correlated detail within 0.05 of the estimate's"] = (
                    abs(v["detail_corr"] - est["detail_corr"]) < 0.05
                )
                group[f"{sc} {_label(cand)}: NIQE worse than the estimate's"] = v["niqe"] > est["niqe"]
    return out


def markdown(result: dict) -> str:
    lines = [
        f"# Detail and naturalness measures: validation ({result['data']})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores. NIQE model: "
        f"`{result['niqe_model']}` (patch {result['niqe_patch']}). Medians over the crops "
        f"({', '.join(result['images'])}):",
        "",
        "| scale | candidate | PSNR(Y) | detail | correlated detail | NIQE |",
        "|---|---|---|---|---|---|",
    ]
    for sc, m in result["medians"].items():
        for cand, v in m.items():
            psnr = "-" if v["psnr"] is None else f"{v['psnr']:.2f}"
            lines.append(
                f"| {sc} | {_label(cand)} | {psnr} | {v['detail']:.3f} | {v['detail_corr']:.3f} | {v['niqe']:.2f} |"
            )
    lines += [
        "",
        "The detail fraction counts any energy in the band, noise included (the noisy estimates reach the "
        "HR's 1 and beyond); the correlated detail fraction keeps only what lies along the HR, and NIQE judges "
        "how natural the result looks without the HR.",
    ]
    for group, title in (("required", "Checks (issue 29)"), ("also", "Also measured (not required)")):
        lines += ["", f"{title}:", ""] + [
            f"- {'pass' if ok else 'FAIL'}: {k}" for k, ok in result["checks"][group].items()
        ]
    lines += [
        "",
        "Per crop (detail / correlated detail / NIQE):",
        "",
        "| scale | candidate | " + " | ".join(result["images"]) + " |",
        "|---|---|" + "---|" * len(result["images"]),
    ]
    for sc, by_cand in result["per_crop"].items():
        for cand, crops in by_cand.items():
            cells = [f"{v['detail']:.3f} / {v['detail_corr']:.3f} / {v['niqe']:.2f}" for v in crops.values()]
            lines.append(f"| {sc} | {_label(cand)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _label(cand: str) -> str:
    if not cand.startswith("estimate+"):
        return cand
    kind, level = cand.removeprefix("estimate+").split("_", 1)
    return f"estimate + {NOISES[kind]} noise {LEVELS[level]}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint (default: the bundled model)")
    ap.add_argument("--data", default="skimage", help="'skimage' or a folder of HR images")
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--scales", default="2,4")
    ap.add_argument("--niqe-model", type=Path, default=MODEL_FILE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="detail_measures", help="result name under benchmarks/results/")
    add_threads_argument(ap)
    add_replace_argument(ap)
    args = ap.parse_args(argv)
    configure_threads(args.threads)
    model = idm_rt.Upscaler.from_pretrained(args.model).model
    images = load_images(args.data, args.crop)
    niqe = NIQEModel.load(args.niqe_model)
    result = {
        "data": args.data,
        "crop": args.crop,
        "images": [n for n, _ in images],
        "model": args.model or "default",
        "niqe_model": args.niqe_model.name,
        "niqe_patch": niqe.patch,
        "seed": args.seed,
        **measure_all(images, model, [float(v) for v in args.scales.split(",")], niqe, args.seed),
    }
    result["checks"] = checks(result["medians"])
    path = write(args.out, result, "detail_measures", args.replace)
    full = json.loads(path.read_text())  # with the command and machine
    atomic_write(path.with_suffix(".md"), lambda p: Path(p).write_text(markdown(full)))
    print(markdown(full))
    return full


if __name__ == "__main__":
    main()
