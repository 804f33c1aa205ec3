"""Side-by-side comparison grids, so that progress can be seen and not only read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from idm_rt.fileio import atomic_write


def save_grid(rows: list[list[torch.Tensor]], path: Path, pad: int = 4) -> None:
    """Images (3, H, W) in [0, 1], one list per row, written as one PNG (atomically)."""
    h = max(t.shape[-2] for r in rows for t in r)
    w = max(t.shape[-1] for r in rows for t in r)
    cols = max(len(r) for r in rows)
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, cols * (w + pad) + pad)
    for i, r in enumerate(rows):
        for j, t in enumerate(r):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, y:y + t.shape[-2], x:x + t.shape[-1]] = t.clamp(0, 1)
    arr = (canvas.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))
