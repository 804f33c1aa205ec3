"""The training data folder (idm_rt.training.data): validation up front, images read as the Upscaler reads
them, broken and truncated files skipped with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from idm_rt.training.data import scan_folder

from .helpers import make_folder


def test_folder_validation(tmp_path):
    scan = scan_folder(make_folder(tmp_path / "data"), min_size=16)
    assert len(scan.images) == 5
    reasons = {p.name: why for p, why in scan.skipped}
    assert "unreadable" in reasons["broken.jpg"] and "too small" in reasons["tiny.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable training image"):
        scan_folder(tmp_path / "empty", 16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_folder(tmp_path / "nowhere", 16)


def test_16_bit_and_rotated_images_load_as_the_upscaler_reads_them(tmp_path):
    from idm_rt.training.data import load_rgb

    ramp = np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    t = load_rgb(tmp_path / "g16.png")
    assert t.shape == (3, 30, 40) and t.min() == 0 and t.max() == 255 and len(t.unique()) > 200
    im = Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotated: shown 20 wide, 30 high
    im.save(tmp_path / "o6.jpg", exif=exif)
    assert load_rgb(tmp_path / "o6.jpg").shape == (3, 30, 20)
    Image.fromarray(np.full((20, 20), 127.0, np.float32), mode="F").save(tmp_path / "f255.tif")  # PIL's 0..255
    assert load_rgb(tmp_path / "f255.tif").float().mean().round() == 127
    Image.fromarray(np.full((20, 20), np.nan, np.float32), mode="F").save(tmp_path / "nan.tif")
    scan = scan_folder(tmp_path, min_size=8)
    assert [p.name for p, _ in scan.skipped] == ["nan.tif"] and "NaN" in scan.skipped[0][1]


@pytest.mark.parametrize("progressive", [False, True])
def test_a_truncated_jpeg_is_skipped_by_the_folder_scan(tmp_path, progressive):
    make_folder(tmp_path / "data", n=2)
    photo = Image.fromarray((np.random.default_rng(0).random((6, 8, 3)) * 255).astype(np.uint8))
    photo.resize((160, 120), Image.BICUBIC).save(tmp_path / "whole.jpg", quality=90, progressive=progressive)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "data" / "cut.jpg").write_bytes(data[: len(data) // 2])  # headers whole, pixel data cut
    scan = scan_folder(tmp_path / "data", min_size=16)
    reasons = {p.name: why for p, why in scan.skipped}
    assert "cut.jpg" not in [p.name for p in scan.images] and "truncated" in reasons["cut.jpg"]
