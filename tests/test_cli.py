"""The command line as a user runs it: files, folders, globs, bad files, overwrite rules, help."""

from __future__ import annotations

import argparse
import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import idm_rt
import idm_rt.file_jobs

from .helpers import ROOT, pil_image, safetensors_no_space


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "idm_rt", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


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


@pytest.mark.slow
def test_folder_glob_and_a_broken_file(setup):
    tmp, src = setup
    out = tmp / "out"
    r = run(
        "upscale",
        str(src),
        str(src / "sub" / "*.png"),
        "-o",
        str(out),
        "--scale",
        "2.5",
        "--steps",
        "2",
        "--model",
        str(tmp / "model"),
        "--seed",
        "1",
    )
    assert r.returncode == 1, r.stderr
    assert "broken.png" in r.stderr and "cannot read" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert Image.open(out / "a.png").size == (25, 20)
    assert Image.open(out / "b.png").mode == "L"


@pytest.mark.slow
def test_never_overwrites_without_the_flag(setup):
    tmp, src = setup
    target = tmp / "one.png"
    target.write_bytes(b"keep me")
    args = (
        "upscale",
        str(src / "a.png"),
        "-o",
        str(target),
        "--size",
        "20x16",
        "--steps",
        "1",
        "--model",
        str(tmp / "model"),
    )
    r = run(*args)
    assert r.returncode == 1 and "--overwrite" in r.stderr and target.read_bytes() == b"keep me"
    r = run(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert Image.open(target).size == (20, 16)
    assert not [p for p in tmp.iterdir() if p.name.startswith(".one")]  # no temp file left behind


@pytest.mark.parametrize("scale", ["0.5", "1", "nan", "inf", "x", "1_5"])
def test_a_bad_scale_is_an_argument_error_before_any_work(setup, scale, capsys):
    from idm_rt.cli import main

    tmp, src = setup
    with pytest.raises(SystemExit) as e:
        main(["upscale", str(src / "a.png"), "-o", str(tmp / "x.png"), "--scale", scale, "--model", str(tmp / "nope")])
    assert e.value.code == 2 and "--scale: must be a number > 1" in capsys.readouterr().err
    assert not (tmp / "x.png").exists()


def test_overwrite_never_replaces_an_input(setup, capsys):
    from idm_rt.cli import main

    tmp, src = setup
    before = (src / "a.png").read_bytes()
    assert (
        main(
            [
                "upscale",
                str(src / "a.png"),
                "-o",
                str(src / "sub" / ".." / "a.png"),
                "--scale",
                "2",
                "--steps",
                "1",
                "--overwrite",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 1
    )
    assert "is an input" in capsys.readouterr().err and (src / "a.png").read_bytes() == before


def test_memory_sizes_take_the_usual_units():
    from idm_rt.options import OPTIONS

    size = OPTIONS["max_memory"].from_text
    assert size("1G") == size("1GiB") == size("1Gi") == 2**30 and size("500MB") == 500 * 10**6
    assert size("2048m") == size("2048Mi") == 2**31
    for bad in ("1_000M", "0x10M", "1K", "2PiB", "lots"):  # a digit separator, as a typo makes it; out of range
        with pytest.raises(argparse.ArgumentTypeError, match="a number of bytes from 1 MiB"):
            size(bad)


@pytest.mark.slow
def test_missing_inputs_and_model(setup):
    tmp, _ = setup
    r = run("upscale", str(tmp / "nope.png"), "-o", str(tmp / "o"), "--scale", "2", "--model", str(tmp / "model"))
    assert r.returncode == 1 and "no such file" in r.stderr
    r = run("upscale", str(tmp / "in" / "a.png"), "-o", str(tmp / "o"), "--scale", "2", "--model", str(tmp / "x.pth"))
    assert r.returncode == 1 and "no checkpoint at" in r.stderr


def test_help_explains_every_option():
    r = run("upscale", "--help")
    assert r.returncode == 0
    for opt in (
        "--scale",
        "--size",
        "--steps",
        "--sampler",
        "--seed",
        "--tile",
        "--device",
        "--model",
        "--overwrite",
        "examples:",
    ):
        assert opt in r.stdout


@pytest.mark.slow
def test_same_stem_inputs_get_distinct_outputs_and_jpeg_drops_alpha(setup):
    tmp, src = setup
    Image.fromarray(np.zeros((6, 6, 4), np.uint8)).save(src / "a.webp")  # same stem as a.png, with alpha
    out = tmp / "o2"
    r = run(
        "upscale",
        str(src / "a.png"),
        str(src / "a.webp"),
        str(src / "a.png"),
        "-o",
        str(out),
        "--scale",
        "2",
        "--steps",
        "1",
        "--model",
        str(tmp / "model"),
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png.png", "a.webp.png"]
    r = run(
        "upscale",
        str(src / "a.webp"),
        "-o",
        str(tmp / "x.jpg"),
        "--scale",
        "2",
        "--steps",
        "1",
        "--model",
        str(tmp / "model"),
    )
    assert r.returncode == 0 and "cannot store mode RGBA" in r.stdout + r.stderr
    assert Image.open(tmp / "x.jpg").mode == "RGB"


def test_unknown_output_type_is_refused(setup):
    tmp, src = setup
    r = run("upscale", str(src / "a.png"), "-o", str(tmp / "y.xyz"), "--scale", "2", "--model", str(tmp / "model"))
    assert r.returncode == 1 and "unknown output image type" in r.stderr and not (tmp / "y.xyz").exists()


def test_same_named_files_from_two_folders_do_not_overwrite_each_other(setup, capsys):
    from idm_rt.cli import main

    tmp, src = setup
    for folder in ("d1", "d2"):
        (tmp / folder).mkdir()
        Image.open(src / "a.png").save(tmp / folder / "x.png")
    out = tmp / "o3"
    assert (
        main(
            [
                "upscale",
                str(tmp / "d1"),
                str(tmp / "d2"),
                "-o",
                str(out),
                "--scale",
                "2",
                "--steps",
                "1",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["x.png-2.png", "x.png.png"]


def test_outputs_keep_what_their_format_can_hold(setup, capsys):
    from idm_rt.cli import main

    tmp, src = setup
    ramp = (np.linspace(0.2, 0.8, 8 * 10).reshape(8, 10) * 65535).astype(np.uint16)
    Image.fromarray(ramp).save(src / "g16.png")
    Image.fromarray(ramp.astype(np.float32) / 65535, mode="F").save(src / "f.tif")
    base = ["--scale", "2", "--steps", "1", "--model", str(tmp / "model"), "-o"]
    for inp, out, mode in (
        ("g16.png", "g.webp", "RGB"),
        ("g16.png", "g.bmp", "L"),
        ("f.tif", "f.png", "I;16"),
        ("g16.png", "g.png", "I;16"),
    ):
        assert main(["upscale", str(src / inp), *base, str(tmp / out)]) == 0, capsys.readouterr().err
        with Image.open(tmp / out) as im:
            assert im.mode == mode
            mean = np.asarray(im, dtype=np.float64).mean() / (65535 if mode == "I;16" else 255)
        assert 0.3 < mean < 0.7, (out, mean)  # the ramp's level, not flat white or black


def test_exif_orientation_is_applied(setup):
    from idm_rt.cli import main

    tmp, src = setup
    im = Image.fromarray((np.random.default_rng(1).random((6, 10, 3)) * 255).astype(np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # stored 10x6, shown 6 wide and 10 high
    im.save(src / "phone.jpg", exif=exif)
    assert (
        main(
            [
                "upscale",
                str(src / "phone.jpg"),
                "-o",
                str(tmp / "p.png"),
                "--scale",
                "2",
                "--steps",
                "1",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 0
    )
    assert Image.open(tmp / "p.png").size == (12, 20)


def test_damaged_models_and_bad_paths_are_clear_errors(setup, capsys):
    from idm_rt.cli import main

    tmp, src = setup
    upscale = ["upscale", str(src / "a.png"), "-o", str(tmp / "z.png"), "--scale", "2", "--model"]
    (tmp / "bad").mkdir()
    (tmp / "bad" / "config.json").write_text("{}")
    (tmp / "bad" / "model.safetensors").write_bytes(b"")
    assert main([*upscale, str(tmp / "bad")]) == 1
    assert "is not an idm-rt model config" in capsys.readouterr().err
    assert main([*upscale, str(src / "a.png")]) == 1
    assert "is not a torch checkpoint file" in capsys.readouterr().err
    weights = tmp / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main([*upscale, str(tmp / "model")]) == 1
    assert "cannot be read" in capsys.readouterr().err
    (tmp / "file").write_text("")
    assert main(["convert", str(src / "a.png"), str(tmp / "file"), "--max-scale", "4"]) == 1
    assert "is not a torch checkpoint file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*upscale, str(tmp / "model"), "--max-pixels", "lots"])
    assert "--max-pixels" in capsys.readouterr().err


def test_max_pixels_accepts_the_written_default(setup):
    from idm_rt.cli import build_parser

    args = build_parser().parse_args(["upscale", "x.png", "-o", "y.png", "--scale", "2", "--max-pixels", "64e6"])
    assert args.max_pixels == 64_000_000


def test_convert_says_when_it_cannot_write(setup, monkeypatch, capsys, tiny_model):
    from idm_rt import checkpoints
    from idm_rt.cli import main

    tmp, src = setup
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: tiny_model)  # any readable checkpoint
    (tmp / "file").write_text("")
    assert main(["convert", str(src / "a.png"), str(tmp / "file" / "sub"), "--max-scale", "4"]) == 1
    assert "cannot write" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["upscale", "x.png", "-o", "y.png", "--scale", "2", "--max-pixels", "inf"])


def test_a_bad_max_scale_is_not_blamed_on_the_config(setup):
    tmp, _ = setup
    with pytest.raises(ValueError, match="max_scale") as e:
        idm_rt.load_model(tmp / "model", max_scale=0.5)
    assert "config" not in str(e.value)


API_MODES = [
    "L",
    "LA",
    "La",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "I",
    "I;16",
    "I;16L",
    "I;16B",
    "I;16N",
    "F",
]  # every mode Upscaler.upscale gives PIL images back in


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tif"])
@pytest.mark.parametrize("mode", API_MODES)
def test_every_mode_the_api_returns_is_saved_in_every_format(tmp_path, mode, suffix, capsys):
    from idm_rt.image_files import save_image

    image = pil_image(mode)
    save_image(image, tmp_path / f"x{suffix}")
    with Image.open(tmp_path / f"x{suffix}") as saved:
        assert saved.size == image.size
        assert np.asarray(saved, dtype=np.float64).std() > 0  # the picture, not a flat fill
    note = capsys.readouterr().err
    assert ("cannot store mode" in note) == (mode not in CAN_STORE[suffix]), note


CAN_STORE = {
    ".png": ["L", "LA", "RGB", "RGBA", "I;16", "I;16B"],
    ".jpg": ["L", "RGB", "RGBX", "CMYK", "YCbCr"],
    ".webp": ["RGB", "RGBA"],
    ".bmp": ["L", "RGB"],  # Pillow reads its own RGBA BMPs back as RGB
    ".tif": ["L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "I", "I;16", "I;16L", "I;16B", "F"],
}


@pytest.mark.parametrize(
    "mode,fmt,want",
    [
        ("La", "PNG", "LA"),
        ("La", "BMP", "L"),
        ("La", "JPEG", "L"),
        ("LA", "WEBP", "RGBA"),
        ("L", "WEBP", "RGB"),
        ("RGBa", "PNG", "RGBA"),
        ("RGBa", "JPEG", "RGB"),
        ("RGBX", "PNG", "RGB"),
        ("CMYK", "JPEG", "CMYK"),
        ("CMYK", "PNG", "RGB"),
        ("YCbCr", "JPEG", "YCbCr"),
        ("LAB", "TIFF", "LAB"),
        ("LAB", "PNG", "RGB"),
        ("HSV", "TIFF", "RGB"),
        ("I;16N", "PNG", "I;16"),
        ("I;16B", "PNG", "I;16B"),
        ("I;16L", "TIFF", "I;16L"),
        ("F", "PNG", "I;16"),
        ("I", "JPEG", "L"),
        ("F", "WEBP", "RGB"),
        ("I;16", "BMP", "L"),
    ],
)
def test_modes_a_format_cannot_store_are_saved_in_the_nearest_one(mode, fmt, want):
    from idm_rt.image_files import save_mode

    assert save_mode(mode, fmt) == want


def test_a_cmyk_jpeg_is_upscaled_to_png_and_to_jpeg(setup):
    from idm_rt.cli import main

    tmp, src = setup
    Image.open(src / "a.png").convert("CMYK").save(src / "print.jpg")
    base = ["--scale", "2", "--steps", "1", "--model", str(tmp / "model"), "-o"]
    assert main(["upscale", str(src / "print.jpg"), *base, str(tmp / "print.png")]) == 0
    assert Image.open(tmp / "print.png").mode == "RGB"
    assert main(["upscale", str(src / "print.jpg"), *base, str(tmp / "print_x2.jpg")]) == 0
    assert Image.open(tmp / "print_x2.jpg").mode == "CMYK"


def test_the_cli_and_the_api_give_the_same_output_for_a_rotated_photo(setup):
    from idm_rt.cli import main

    tmp, src = setup
    im = Image.fromarray((np.random.default_rng(1).random((6, 10, 3)) * 255).astype(np.uint8))
    exif = im.getexif()
    exif[0x0112] = 8  # shown rotated by 90 degrees
    im.save(src / "phone.png", exif=exif)
    assert (
        main(
            [
                "upscale",
                str(src / "phone.png"),
                "-o",
                str(tmp / "p.png"),
                "--scale",
                "2",
                "--steps",
                "1",
                "--seed",
                "3",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 0
    )
    api = idm_rt.Upscaler.from_pretrained(tmp / "model").upscale(
        Image.open(src / "phone.png"), scale=2, steps=1, seed=3, progress=False
    )
    assert api.size == (12, 20)
    assert np.array_equal(np.asarray(Image.open(tmp / "p.png")), np.asarray(api))


def test_half_precision_on_a_cpu_is_refused_before_any_work(setup, capsys):
    from idm_rt.cli import main

    tmp, src = setup
    assert (
        main(
            [
                "upscale",
                str(src / "a.png"),
                "-o",
                str(tmp / "h.png"),
                "--scale",
                "2",
                "--precision",
                "fp16",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 1
    )
    assert "error: precision='fp16' is autocast for GPUs" in capsys.readouterr().err
    assert not (tmp / "h.png").exists()


def test_several_inputs_and_an_output_file_name_are_refused(setup, capsys):
    from idm_rt.cli import main

    tmp, src = setup
    assert (
        main(
            [
                "upscale",
                str(src / "a.png"),
                str(src / "sub" / "c.png"),
                "-o",
                str(tmp / "single.png"),
                "--scale",
                "2",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 1
    )
    assert "2 input images need an output folder, not the file name" in capsys.readouterr().err
    assert not (tmp / "single.png").exists()


def _no_space(state, path, *args, **kwargs):
    Path(path).write_bytes(b"partly written")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", [_no_space, safetensors_no_space])
def test_convert_on_a_full_disk_is_one_line_and_leaves_nothing_behind(setup, monkeypatch, capsys, tiny_model, writer):
    from idm_rt import checkpoints
    from idm_rt.cli import main

    tmp, src = setup
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: tiny_model)  # any readable checkpoint
    monkeypatch.setattr(checkpoints, "save_file", writer)
    target = tmp / "new" / "face8x"
    assert main(["convert", str(src / "a.png"), str(target), "--max-scale", "4"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: cannot write {target}: [Errno 28] No space left on device"
        if writer is _no_space
        else f"error: cannot write {target}: Error while serializing: I/O error: No space left on device (os error 28)"
    )
    assert not (tmp / "new").exists()  # the folders it made are gone again
    before = {p.name: p.read_bytes() for p in (tmp / "model").iterdir()}
    assert main(["convert", str(src / "a.png"), str(tmp / "model"), "--max-scale", "4", "--overwrite"]) == 1
    assert {p.name: p.read_bytes() for p in (tmp / "model").iterdir()} == before  # the old model, whole


def test_a_file_made_while_the_output_was_computed_is_kept(setup, monkeypatch, capsys):
    from idm_rt import cli

    tmp, src = setup
    target = tmp / "race.png"
    real = idm_rt.Upscaler.upscale

    def upscale_then_someone_writes(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        target.write_bytes(b"the user's file")  # appears after the exists() check, before the output is placed
        return result

    monkeypatch.setattr(idm_rt.Upscaler, "upscale", upscale_then_someone_writes)
    assert (
        cli.main(
            [
                "upscale",
                str(src / "a.png"),
                "-o",
                str(target),
                "--scale",
                "2",
                "--steps",
                "1",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 1
    )
    assert "race.png exists" in capsys.readouterr().err and target.read_bytes() == b"the user's file"
    assert not [p for p in tmp.iterdir() if p.name.startswith(".race")]  # no temp file left behind


def test_too_large_an_output_is_refused_before_the_input_is_decoded(setup, capsys):
    from idm_rt.cli import main

    tmp, src = setup
    whole = (src / "a.png").read_bytes()
    (src / "cut.png").write_bytes(whole[:60])  # the header says 10x8; decoding it would fail
    assert (
        main(
            [
                "upscale",
                str(src / "cut.png"),
                "-o",
                str(tmp / "o.png"),
                "--scale",
                "4",
                "--max-pixels",
                "1000",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "output 40x32 has 1280 pixels, above the limit of 1000" in err and "cannot read" not in err


def test_a_bad_seed_or_tile_is_said_once_before_any_image(setup, capsys):
    from idm_rt.cli import main

    tmp, src = setup
    common = [
        "upscale",
        str(src / "a.png"),
        str(src / "sub" / "c.png"),
        "-o",
        str(tmp / "out"),
        "--scale",
        "2",
        "--model",
        str(tmp / "model"),
    ]
    for option, message in (
        (["--seed", "-1"], "--seed: must be an integer in [0, 2**63), got '-1'"),
        (["--tile", "-8"], "--tile: must be an integer >= 0, got '-8'"),
    ):
        with pytest.raises(SystemExit) as exit_:  # argument errors
            main([*common, *option])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count(message) == 1, err
    assert main([*common, "--tile", "1"]) == 1  # too small for this model: said once, before any image
    err = capsys.readouterr().err
    assert err.count("tile must be at least") == 1 and "input(s) failed" not in err, err
    assert not (tmp / "out").exists()


def test_an_output_ending_in_a_slash_is_a_folder(setup, capsys):
    from idm_rt.cli import main

    tmp, src = setup
    for name in ("2024.01.05/", "new.png/"):
        assert (
            main(
                [
                    "upscale",
                    str(src / "a.png"),
                    "-o",
                    f"{tmp}/{name}",
                    "--scale",
                    "2",
                    "--steps",
                    "1",
                    "--model",
                    str(tmp / "model"),
                ]
            )
            == 0
        ), capsys.readouterr().err
        assert Image.open(tmp / name / "a.png").size == (20, 16)


def test_max_memory_reaches_engine_runs(setup, monkeypatch):
    from idm_rt.cli import build_parser, load_upscaler

    seen = {}
    monkeypatch.setattr(idm_rt.Upscaler, "from_engines", classmethod(lambda cls, *a, **kw: seen.update(kw)))
    monkeypatch.setattr(idm_rt.Upscaler, "from_pretrained", classmethod(lambda cls, *a, **kw: seen.update(kw)))
    for extra in (["--engines", "eng"], ["--backend", "onnxruntime"]):
        seen.clear()
        args = build_parser().parse_args(
            ["upscale", "x.png", "-o", "y.png", "--scale", "2", "--max-memory", "64M", *extra]
        )
        try:
            load_upscaler(args)
        except AttributeError:  # the stand-in returns no Upscaler
            pass
        assert seen["max_memory"] == 64 * 2**20


def test_outputs_keep_the_colour_profile_and_lossy_ones_their_detail(setup, capsys):
    from PIL import ImageCms

    from idm_rt.cli import main

    tmp, src = setup
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.open(src / "a.png").save(src / "icc.png", icc_profile=icc)
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    out = tmp / "out"
    for name in ("icc.png", "icc.jpg", "icc.webp", "icc.tif"):
        assert (
            main(
                [
                    "upscale",
                    str(src / "icc.png"),
                    "-o",
                    str(out / name),
                    "--scale",
                    "2",
                    "--steps",
                    "1",
                    "--model",
                    str(tmp / "model"),
                ]
            )
            == 0
        )
        assert Image.open(out / name).info.get("icc_profile") == icc, name
    assert Image.open(out / "icc.jpg").quantization[0][0] <= 3  # quality 95 (Pillow's default 75 gives 8)
    Image.open(src / "icc.png").convert("RGBA").save(src / "icc_rgba.png", icc_profile=icc)
    assert (
        main(
            [
                "upscale",
                str(src / "icc_rgba.png"),
                str(src / "anim.gif"),
                "-o",
                str(out / "bmp"),
                "--scale",
                "2",
                "--steps",
                "1",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 0
    )
    Path(out / "bmp").mkdir(exist_ok=True)
    err = capsys.readouterr().err
    assert "BMP" not in err  # PNG outputs in a folder
    assert (
        main(
            [
                "upscale",
                str(src / "icc_rgba.png"),
                "-o",
                str(out / "x.bmp"),
                "--scale",
                "2",
                "--steps",
                "1",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "BMP cannot store mode RGBA; saving x.bmp as RGB; its colour profile is dropped" in err
    assert Image.open(out / "x.bmp").mode == "RGB"
    assert (
        main(
            [
                "upscale",
                str(src / "anim.gif"),
                "-o",
                str(out / "anim.png"),
                "--scale",
                "2",
                "--steps",
                "1",
                "--model",
                str(tmp / "model"),
            ]
        )
        == 0
    )
    assert "anim.gif holds 3 frames or pages; only the first is upscaled" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_written_is_said_before_any_work(setup, capsys, monkeypatch):
    from idm_rt import cli

    tmp, src = setup
    (tmp / "plainfile").write_bytes(b"mine")
    monkeypatch.setattr(cli, "load_upscaler", lambda *a: pytest.fail("the model was loaded"))
    assert cli.main(["upscale", str(src / "a.png"), "-o", str(tmp / "plainfile"), "--scale", "2"]) == 1
    assert f"{tmp / 'plainfile'} is a file, not a folder" in capsys.readouterr().err
    assert (
        cli.main(["upscale", str(src / "a.png"), "-o", str(tmp / "plainfile" / "deeper" / "x.png"), "--scale", "2"])
        == 1
    )
    assert "is a file, not a folder" in capsys.readouterr().err and (tmp / "plainfile").read_bytes() == b"mine"
    # as a read-only folder looks to a non-root user
    monkeypatch.setattr(idm_rt.file_jobs.os, "access", lambda path, mode: False)
    assert cli.main(["upscale", str(src / "a.png"), "-o", str(tmp / "ro" / "x.png"), "--scale", "2"]) == 1
    assert f"no permission to write in {tmp}" in capsys.readouterr().err
