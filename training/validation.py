"""Validation during training: the EMA weights sampled as the run's ``val_sampling`` says on held-out
crops at the largest training scale M, measured with the evaluation tables' protocol
(:func:`~idm_rt.training.metrics.measure`), so that the training log and the tables compare; a grid
(bicubic | ours | HR) per validation for the eye."""

from __future__ import annotations

from pathlib import Path

import torch

from idm_rt import IDM, SamplingSettings
from idm_rt.arrays import Noise
from idm_rt.pipeline import super_resolve

from .data import center_crop, load_rgb
from .metrics import bicubic, make_pair, measure
from .visual import save_grid


@torch.no_grad()
def validate(
    model: IDM, images: list[Path], crop: int, settings: SamplingSettings, seed: int, grid: Path
) -> dict[str, float]:
    """Mean PSNR(Y) and SSIM(Y) of the model's outputs, of its HR estimate (the condition image) and of
    bicubic at scale M on a central ``crop`` of each image; the grid written to ``grid``."""
    s = model.max_scale
    device = next(model.parameters()).device
    rows, acc = [], {}
    for path in images:
        hr, lr = make_pair(center_crop(load_rgb(path), crop), s, device)
        size = tuple(hr.shape[-2:])
        outputs = {
            "": super_resolve(model, lr, size, settings, scale=s, noise=Noise([seed])),
            "_estimate": model.encode(lr, size).clamp(-1, 1),
            "_bicubic": bicubic(lr, size),
        }
        for key, out in outputs.items():
            for metric, value in measure(out, hr, lr, s).items():
                if metric != "cons":
                    acc.setdefault(f"{metric}_y{key}", []).append(value)
        rows.append([(t[0].cpu() + 1) / 2 for t in (outputs["_bicubic"], outputs[""], hr)])
    save_grid(rows, grid)
    return {k: sum(v) / len(v) for k, v in acc.items()}
