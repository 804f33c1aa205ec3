"""The command line as a user runs it: files, folders, globs, bad files, overwrite rules, help."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import idm_rt

from .conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "idm_rt", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.fixture
def setup(tiny_model, tmp_path):
    idm_rt.save_model(tiny_model, tmp_path / "model")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((8, 10, 3)) * 255).astype(np.uint8)).save(src / "a.png")
    Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).save(src / "b.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG but not really")
    Image.fromarray((rng.random((5, 7, 3)) * 255).astype(np.uint8)).save(src / "sub" / "c.png")
    return tmp_path, src


def test_folder_glob_and_a_broken_file(setup):
    tmp, src = setup
    out = tmp / "out"
    r = run("upscale", str(src), str(src / "sub" / "*.png"), "-o", str(out), "--scale", "2.5", "--steps", "2",
            "--model", str(tmp / "model"), "--seed", "1")
    assert r.returncode == 1, r.stderr
    assert "broken.png" in r.stderr and "cannot read" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert Image.open(out / "a.png").size == (25, 20)
    assert Image.open(out / "b.png").mode == "L"


def test_never_overwrites_without_the_flag(setup):
    tmp, src = setup
    target = tmp / "one.png"
    target.write_bytes(b"keep me")
    args = ("upscale", str(src / "a.png"), "-o", str(target), "--size", "20x16", "--steps", "1", "--model",
            str(tmp / "model"))
    r = run(*args)
    assert r.returncode == 1 and "--overwrite" in r.stderr and target.read_bytes() == b"keep me"
    r = run(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert Image.open(target).size == (20, 16)
    assert not [p for p in tmp.iterdir() if p.name.startswith(".one")]  # no temp file left behind


def test_bad_scale_is_reported_per_file(setup):
    tmp, src = setup
    r = run("upscale", str(src / "a.png"), "-o", str(tmp / "x.png"), "--scale", "0.5", "--model", str(tmp / "model"))
    assert r.returncode == 1 and "scale must be a finite number > 1" in r.stderr
    assert not (tmp / "x.png").exists()


def test_missing_inputs_and_model(setup):
    tmp, _ = setup
    r = run("upscale", str(tmp / "nope.png"), "-o", str(tmp / "o"), "--scale", "2", "--model", str(tmp / "model"))
    assert r.returncode == 1 and "no such file" in r.stderr
    r = run("upscale", str(tmp / "in" / "a.png"), "-o", str(tmp / "o"), "--scale", "2", "--model", str(tmp / "x.pth"))
    assert r.returncode == 1 and "no checkpoint at" in r.stderr


def test_help_explains_every_option():
    r = run("upscale", "--help")
    assert r.returncode == 0
    for opt in ("--scale", "--size", "--steps", "--sampler", "--seed", "--tile", "--device", "--model", "--overwrite",
                "examples:"):
        assert opt in r.stdout


def test_same_stem_inputs_get_distinct_outputs_and_jpeg_drops_alpha(setup):
    tmp, src = setup
    Image.fromarray(np.zeros((6, 6, 4), np.uint8)).save(src / "a.webp")  # same stem as a.png, with alpha
    out = tmp / "o2"
    r = run("upscale", str(src / "a.png"), str(src / "a.webp"), str(src / "a.png"), "-o", str(out), "--scale", "2",
            "--steps", "1", "--model", str(tmp / "model"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png.png", "a.webp.png"]
    r = run("upscale", str(src / "a.webp"), "-o", str(tmp / "x.jpg"), "--scale", "2", "--steps", "1", "--model",
            str(tmp / "model"))
    assert r.returncode == 0 and "cannot store mode RGBA" in r.stdout + r.stderr
    assert Image.open(tmp / "x.jpg").mode == "RGB"


def test_unknown_output_type_is_refused(setup):
    tmp, src = setup
    r = run("upscale", str(src / "a.png"), "-o", str(tmp / "y.xyz"), "--scale", "2", "--model", str(tmp / "model"))
    assert r.returncode == 1 and "unknown output image type" in r.stderr and not (tmp / "y.xyz").exists()
