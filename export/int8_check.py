"""The int8 build's check of the engine it made (``python -m idm_rt.build --engine int8``), against the torch
float32 model it was made from: how much quantisation costs depends on the model and on the calibration images,
so a build that holds for one model can fail for the next, and only a measurement on the engine itself says.

1. Parity (:mod:`.parity`): each int8 U-Net on random inputs, relative error under ``parity.LIMITS["int8"]``.
2. Images: held-out HR crops of the bucket's size (:func:`.quantize.held_out_images`), downscaled at each of
   :data:`SCALES` and upscaled by the engine and by the torch model with the model's recommended settings and
   the same seed. The engine's deviation from the torch image must be small against the torch image's own error
   against HR: PSNR(engine, torch) at least :data:`MARGIN_DB` above PSNR(torch, HR) at every scale (means over the
   images), i.e. a deviation whose mean square is at most 2.3 % of the error's, which moves PSNR against HR by at
   most :data:`HR_TOLERANCE_DB` dB when the two are uncorrelated. The torch model stands for the fp32 engine,
   which reproduces it within parity's 1e-4.

``python -m benchmarks.int8_onnx`` measures the same rule on more images and scales, with timings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from idm_rt.arrays import Noise, to_host
from idm_rt.backends import load_runner
from idm_rt.model import IDM
from idm_rt.pipeline import super_resolve
from idm_rt.resize import downscale
from idm_rt.sampling import SamplingSettings

from . import parity, quantize

VERSION = 1  # bump when what the check measures or requires changes: a recorded result is then measured again
HR_TOLERANCE_DB = 0.1
MARGIN_DB = -10 * math.log10(10 ** (HR_TOLERANCE_DB / 10) - 1)  # 16.3 dB: 10 log10(1 + 10^(-MARGIN/10)) = 0.1
SCALES = (2.0, 4.0, 8.0)
IMAGES = 3


@dataclass
class ScaleResult:
    """Means over the held-out images at one scale; PSNR on RGB in [0, 1]."""

    scale: float
    psnr_vs_fp32: float  # the engine's image against the torch model's
    psnr_fp32_vs_hr: float  # the torch model's image against HR
    max_error: int  # largest difference from the torch image, in 1/255

    @property
    def passed(self) -> bool:
        return self.psnr_vs_fp32 >= self.psnr_fp32_vs_hr + MARGIN_DB


@dataclass
class Int8Check:
    """What :func:`check` measured, and whether the engine holds."""

    calibration: str
    held_out: str
    parity: list[tuple[str, str, float]] = field(default_factory=list)  # (graph, batch x size, relative error)
    scales: list[ScaleResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(err < parity.LIMITS["int8"] for _, _, err in self.parity) and all(s.passed for s in self.scales)

    def report(self) -> str:
        """The numbers, one line each, marked ok or FAIL."""
        limit = parity.LIMITS["int8"]
        lines = [
            f"int8 check against the torch float32 model (calibration: {self.calibration}; held-out images: "
            f"{self.held_out})"
        ]
        lines += [
            f"  parity {key} {case}: relative error {err:.2e} (limit {limit:.0e}) {_ok(err < limit)}"
            for key, case, err in self.parity
        ]
        lines += [
            f"  images at {s.scale:g}x: {s.psnr_vs_fp32:.1f} dB from the float32 image (needed "
            f"{s.psnr_fp32_vs_hr + MARGIN_DB:.1f}: the float32 image's {s.psnr_fp32_vs_hr:.1f} dB against HR + "
            f"{MARGIN_DB:.1f}), max error {s.max_error}/255 {_ok(s.passed)}"
            for s in self.scales
        ]
        return "\n".join(lines)


def _ok(passed: bool) -> str:
    return "ok" if passed else "FAIL"


def check(folder: Path, model: IDM, calibration: quantize.Calibration, log: Callable[[str], None] = print) -> Int8Check:
    """Measure the int8 engine directory ``folder`` built from ``model`` with ``calibration`` (see the module)."""
    runner = load_runner(folder, "onnxruntime", "cpu")
    keys = [key for key, entry in runner.manifest.graphs.items() if entry.precision == "int8"]
    bucket = max(runner.buckets, key=lambda b: b.height * b.width)
    images, held_out = quantize.held_out_images(calibration.origin, calibration.settings, IMAGES)
    result = Int8Check(calibration.source, held_out)
    log(
        f"checking the int8 engine: parity of {', '.join(keys)}, then {len(images)} held-out images at "
        f"{', '.join(f'{s:g}x' for s in SCALES)} against the torch float32 model"
    )
    result.parity = [(key, case, err) for key, _, case, err in parity.graph_errors(runner, model, keys=keys)]
    settings = model.recommended or SamplingSettings()
    gen = torch.Generator().manual_seed(calibration.settings.seed)
    hrs = [quantize.random_crop(img, (bucket.height, bucket.width), gen)[None] for img in images]
    for s in SCALES:
        vs_fp32, fp32_vs_hr, worst = [], [], 0.0
        for k, hr in enumerate(hrs):
            lr = downscale(hr, (max(1, round(bucket.height / s)), max(1, round(bucket.width / s))))
            ours, reference = (
                _unit(
                    torch.as_tensor(
                        to_host(
                            super_resolve(
                                m,
                                m.asarray(lr.numpy()),
                                (bucket.height, bucket.width),
                                settings,
                                scale=s,
                                noise=Noise([k]),
                            )
                        )
                    )
                )
                for m in (runner, model)
            )
            vs_fp32.append(_psnr(ours, reference))
            fp32_vs_hr.append(_psnr(reference, _unit(hr)))
            worst = max(worst, float((ours - reference).abs().max()))
        result.scales.append(
            ScaleResult(s, sum(vs_fp32) / len(vs_fp32), sum(fp32_vs_hr) / len(fp32_vs_hr), round(worst * 255))
        )
    return result


def _unit(img: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], float64, as 8-bit images are measured (rounded to 1/255)."""
    return ((img.double() + 1) * 127.5).round() / 255


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).pow(2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)
