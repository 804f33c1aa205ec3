"""What several test files share: paths, tiny networks, error measures, test images, training folders and
options, stand-ins for a full disk. Fixtures stay in conftest.py; test files import these from here, never
from conftest or from each other."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import idm_rt
from benchmarks.common import TINY_CONFIG

ROOT = Path(__file__).resolve().parents[1]
# The release's own numbers (README, "Release parity"): in the project's shared folder beside the checkout, or where
# IDM_RT_GOLDEN says; the repository does not hold them.
GOLDEN = Path(os.environ.get("IDM_RT_GOLDEN") or ROOT.parent / "shared" / "golden" / "official_small")

TINY = TINY_CONFIG  # the tests' smallest network, the one the benchmarks' dry and fault runs use
# The export and engine tests' network: 32 channels, the default 32 normalisation groups.
TINY_32 = idm_rt.IDMConfig(
    inner_channel=32, channel_multiplier=(1, 2, 4), res_blocks=1, attn_levels=(2,), encoder_blocks=2
)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter re-drawn (zero biases and unit scales exercised too), small enough to stay tame."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def smooth_rgba(h=8, w=10, seed=0) -> np.ndarray:
    """A smooth RGBA image with alpha in [128, 255] (premultiplying it back and forth loses little)."""
    small = (np.random.default_rng(seed).random((3, 4, 4)) * 255).astype(np.uint8)
    out = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).copy()
    out[..., 3] = 128 + out[..., 3] // 2
    return out


HIGH_BIT = {"I": "<i4", "I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2", "F": "<f4"}


def pil_image(mode: str) -> Image.Image:
    base = Image.fromarray(smooth_rgba())
    if mode in HIGH_BIT:
        u16 = np.asarray(base.convert("L")).astype(np.uint16) * 257
        values = u16 / 65535 if mode == "F" else u16
        return Image.frombytes(mode, base.size, values.astype(HIGH_BIT[mode]).tobytes())
    if mode.startswith("P"):
        im = base.convert("RGB").quantize(16) if mode != "PA" else base.convert("PA")
        if mode == "P+transparency":
            im.info["transparency"] = 0
        return im
    return base.convert(mode) if "a" in mode.lower() else base.convert("RGB").convert(mode)


def make_folder(path, n=5, size=40):
    """Smooth random images (low-frequency noise upsampled), plus a broken and a tiny file."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((size, size + 3 * i), Image.BICUBIC).save(path / f"img{i}.png")
    (path / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path / "tiny.png")
    return path


def train_config(tmp_path, **kw):
    """A few-step run of the TINY network on ``tmp_path / "data"`` (see :func:`make_folder`) into
    ``tmp_path / "run"``; ``kw`` overrides options."""
    from idm_rt.training.config import resolve

    opts = [
        f'data="{tmp_path / "data"}"',
        f'out="{tmp_path / "run"}"',
        "crop=16",
        "batch=2",
        "steps=6",
        "ckpt_every=3",
        "keep_last=2",
        "val_every=0",
        "log_every=1",
        "lr=0.001",
        "fixed_scale_steps=3",
        "threads=1",
        "val_holdout=1",
    ] + [f"{k}={v}" for k, v in kw.items()]
    cfg = resolve("small", overrides=opts)
    cfg.network = dict(TINY.to_dict())
    return cfg


# --set options of a small, quick run for the training command line.
TINY_SET = [
    "crop=16",
    "batch=2",
    "threads=1",
    "val_holdout=1",
    "val_every=0",
    "ckpt_every=2",
    "log_every=1",
    "network.channel_multiplier=[1,2,4]",
    "network.attn_levels=[2]",
    "network.encoder_blocks=2",
]


def safetensors_no_space(state, path, *args, **kwargs):
    """A stand-in for safetensors' save_file on a full disk: part of the file written, then its error."""
    from safetensors import SafetensorError

    Path(path).write_bytes(b"partly written")
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def skip_summary(reasons: list[str]) -> str | None:
    """One line naming how many tests were skipped and why, each reason once with its count (None: none were)."""
    if not reasons:
        return None
    counts = Counter(reasons)
    return f"NOT CHECKED: {len(reasons)} test{'s' * (len(reasons) > 1)} skipped: " + "; ".join(
        f"{n} x {reason}" for reason, n in counts.most_common()
    )
