"""HR image folders and the LR/HR pairs IDM trains on.

The LR is made from the HR crop by antialiased bicubic downscaling at the sampled scale; a
whole batch shares one HR size and one scale. Decoded images stay in memory (the default data
set is small), and all randomness comes from one ``torch.Generator`` so that a resumed run
draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from idm_rt.images import IMAGE_SUFFIXES, to_array
from idm_rt.resize import downscale


@dataclass
class FolderScan:
    """Result of validating a folder: usable images and the skipped ones with reasons."""

    images: list[Path]
    skipped: list[tuple[Path, str]]


def scan_folder(folder: str | Path, min_size: int) -> FolderScan:
    """All images under ``folder`` (recursive), each decoded once to check it is whole and large enough.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no usable image in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist")
    images, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        try:
            with Image.open(path) as im:
                w, h = im.size
                high_bit = im.mode in ("F", "I")
                im.draft(im.mode, (max(1, w // 8), max(1, h // 8)))  # a JPEG at 1/8 scale: every byte still read
                im.load()  # a truncated file fails only here (verify() decodes no pixel data)
            if high_bit:  # the modes whose values can be unusable (NaN, out of range): decode them now
                load_rgb(path)
        except Exception as e:  # noqa: BLE001 (PIL raises many types for broken files)
            skipped.append((path, f"unreadable ({e.__class__.__name__}: {e})"))
            continue
        if min(w, h) < min_size:
            skipped.append((path, f"too small ({w}x{h} < {min_size})"))
            continue
        images.append(path)
    if not images:
        raise ValueError(f"no usable training image in {folder} ({len(skipped)} skipped)")
    return FolderScan(images, skipped)


def load_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 tensor, upright (EXIF orientation applied); 16-bit and float images are scaled
    to 8 bits as the upscaler reads them (a plain ``convert("RGB")`` clips them to flat colour)."""
    with Image.open(path) as im:
        if im.mode == "F" and np.asarray(im).max() > 1:  # float in PIL's own 0..255 convention
            im = im.point(lambda v: v * (1 / 255))  # (keeps the EXIF orientation, which to_array applies)
        try:
            rgb, _, _ = to_array(im)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return torch.from_numpy(np.clip(np.round((rgb[0] + 1) * 127.5), 0, 255).astype(np.uint8))


class PairSampler:
    """Random HR crops with flips and 90-degree rotations, and their LR at a given scale."""

    def __init__(self, images: list[Path], crop: int):
        self.images = [load_rgb(p) for p in images]
        self.crop = crop

    def crop_side(self, scale: float, lr_patch: int = 0, max_crop: int = 0) -> int:
        """The HR crop's side at magnification ``scale``: ``crop``, or with ``lr_patch`` the side whose LR is
        ``lr_patch`` pixels (as LIIF and EDSR train), at most ``max_crop`` and the largest image's short side."""
        if not lr_patch:
            return self.crop
        return max(8, min(round(lr_patch * scale), max_crop, max(min(img.shape[1:]) for img in self.images)))

    def batch(
        self, n: int, scale: float, gen: torch.Generator, crop: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(hr, lr, effective scale): hr (n, 3, crop, crop) (``crop`` defaults to the sampler's; each crop comes
        from an image at least that large) and lr in [-1, 1], ``round(crop / scale)`` a side."""
        crop = crop or self.crop
        images = [img for img in self.images if min(img.shape[1:]) >= crop]
        crops = []
        for _ in range(n):
            img = images[int(torch.randint(len(images), (1,), generator=gen))]
            _, h, w = img.shape
            top = int(torch.randint(h - crop + 1, (1,), generator=gen))
            left = int(torch.randint(w - crop + 1, (1,), generator=gen))
            c = img[:, top : top + crop, left : left + crop]
            flip, rot = torch.randint(2, (1,), generator=gen).item(), torch.randint(4, (1,), generator=gen).item()
            if flip:
                c = c.flip(-1)
            crops.append(torch.rot90(c, int(rot), dims=(1, 2)))
        hr = torch.stack(crops).float() / 127.5 - 1.0
        s = max(1, round(crop / scale))
        return hr, downscale(hr, (s, s)), crop / s


def split_holdout(images: list[Path], n: int, folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(training images, the last ``n`` held out for validation); ValueError when too few are left."""
    if not n:
        return images, []
    if len(images) <= n:
        raise ValueError(
            f"{folder} has {len(images)} usable images: too few to hold out {n} for validation and "
            f"train on the rest; hold out fewer (--set val_holdout={max(len(images) - 1, 0)}; 0: no "
            "validation) or validate on another folder (--val-data DIR)"
        )
    return images[:-n], images[-n:]


def describe_split(train: int, held_out: int, data: str | Path, val_data: str | Path | None) -> list[str]:
    """The start-up lines saying what a run trains and validates on, and how to change it; a warning line
    first when validation keeps more than a quarter of the images from training."""
    if val_data:
        return [f"data: training on {train} images of {data}; validation on {held_out} of {val_data} (--val-data)"]
    lines = [
        f"data: training on {train} of the {train + held_out} usable images in {data}; validation on the last "
        f"{held_out} (val_holdout={held_out}; --set val_holdout=N changes it, 0 turns validation off; --val-data "
        "DIR validates on another folder)"
    ]
    if held_out > (train + held_out) / 4:
        lines.insert(
            0, f"warning: {held_out} of the {train + held_out} images are held out for validation, not trained on"
        )
    return lines


def sample_scale(
    step: int, max_scale: float, fixed_steps: int, gen: torch.Generator, sampling: str = "uniform"
) -> float:
    """The paper's two stages: the largest scale M until ``fixed_steps``, then s ~ U(1, M] (``"uniform"``), or
    log-uniform on (1, M] (``"log"``: every octave as often, so 2x-4x as often as 4x-8x)."""
    if step < fixed_steps:
        return max_scale
    u = float(torch.rand((), generator=gen))
    if sampling == "log":
        return max_scale ** (1.0 - u)
    return max_scale - u * (max_scale - 1.0) if max_scale > 1 else max_scale


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Central size x size window of a (C, H, W) image, cut to a multiple of 8 when smaller."""
    _, h, w = img.shape
    s = min(size, h, w) // 8 * 8
    top, left = (h - s) // 2, (w - s) // 2
    return img[:, top : top + s, left : left + s]


__all__ = [
    "scan_folder",
    "FolderScan",
    "PairSampler",
    "split_holdout",
    "describe_split",
    "sample_scale",
    "load_rgb",
    "center_crop",
]
