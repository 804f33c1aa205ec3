"""Side-by-side comparison grids, so that progress can be seen and not only read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from idm_rt.fileio import atomic_write

LABEL_HEIGHT = 16  # the header row of column labels, in pixels (Pillow's default bitmap font is 11 high)


def save_grid(rows: list[list[torch.Tensor]], path: Path, pad: int = 4, labels: Sequence[str] = ()) -> None:
    """Images (3, H, W) in [0, 1], one list per row, written as one PNG (atomically); ``labels`` name the
    columns in a header row."""
    h = max(t.shape[-2] for r in rows for t in r)
    w = max(t.shape[-1] for r in rows for t in r)
    cols = max(len(r) for r in rows)
    top = LABEL_HEIGHT if labels else 0
    canvas = torch.ones(3, top + len(rows) * (h + pad) + pad, cols * (w + pad) + pad)
    for i, r in enumerate(rows):
        for j, t in enumerate(r):
            y, x = top + pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, y : y + t.shape[-2], x : x + t.shape[-1]] = t.clamp(0, 1)
    image = Image.fromarray((canvas.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for j, label in enumerate(labels):
        draw.text((pad + j * (w + pad), 3), label, fill=(0, 0, 0))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
