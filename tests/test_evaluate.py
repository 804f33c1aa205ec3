"""The evaluation command (idm_rt.training.evaluate): its table and JSON, grids, bad options, images too small
for a scale."""

from __future__ import annotations

import pytest
import torch

import idm_rt

from .helpers import make_folder


@pytest.mark.slow
def test_evaluate_cli_writes_a_table_and_json(tmp_path, tiny_model, capsys):
    import json

    from idm_rt.training import evaluate

    idm_rt.save_model(tiny_model, tmp_path / "m")
    make_folder(tmp_path / "data", n=2)
    assert (
        evaluate.main(
            [
                "--model",
                str(tmp_path / "m"),
                "--data",
                str(tmp_path / "data"),
                "--scales",
                "2,3",
                "--steps",
                "2",
                "--crop",
                "24",
                "--json",
                str(tmp_path / "r.json"),
                "--save-dir",
                str(tmp_path / "grids"),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    table = captured.out
    assert "| 2x |" in table and "| 3x |" in table and "bicubic" in table
    assert "skipped tiny: 8x8 is too small to evaluate at 2x" in captured.err and "broken.jpg" in captured.err
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["scale"] for r in rows] == [2.0, 3.0] and all(r["images"] == 2 for r in rows)
    assert "| detail ours |" in table and "| NIQE HR |" in table
    for r in rows:  # 24 px crops: detail measured, NIQE (96 px patches) not, said so, and JSON's null
        assert 0 <= r["detail_corr_bic"] <= r["detail_bic"] and 0 <= r["detail_corr"] <= r["detail"]
        assert r["niqe"] is None and r["niqe_bic"] is None and r["niqe_hr"] is None
    assert "NIQE not measured on img0, img1: smaller than its 96x96 patch" in captured.err
    assert (tmp_path / "grids" / "x2" / "img0_grid.png").exists()
    base = ["--model", str(tmp_path / "m"), "--data", str(tmp_path / "data")]
    for bad, message in (
        (["--scales", "1"], "scales must be"),
        (["--scales", "nan"], "scales must be"),
        (["--steps", "-1"], "--steps: must be an integer in [0, 2000]"),
        (["--init", "bicubic", "--init-level", "2"], "--init-level: must be a number in (0, 1)"),
        (["--tile", "5"], "--tile must be"),
        (["--scales", "8", "--crop", "16"], "no image is large enough"),
    ):
        try:  # argparse refuses some itself (exit status 2 as well)
            status = evaluate.main([*base, *bad])
        except SystemExit as e:
            status = e.code
        assert status == 2
        assert message in capsys.readouterr().err


def test_evaluate_skips_images_an_integer_scale_crops_below_the_ssim_window(tmp_path, capsys):
    from idm_rt.training.evaluate import large_enough

    images = [("a", torch.zeros(3, 19, 19, dtype=torch.uint8)), ("b", torch.zeros(3, 20, 20, dtype=torch.uint8))]
    assert [n for n, _ in large_enough(images, [4])] == ["b"]  # 19 -> 16 - 2 x 4 = 8 < 11; 20 -> 12
    assert "skipped a: 19x19 is too small to evaluate at 4x" in capsys.readouterr().err


def test_evaluate_reports_median_detail_and_niqe_of_ours_bicubic_and_the_hr(tiny_model):
    """Each row's detail fractions and NIQE are the medians of the per-image values, measured on the 8-bit images."""
    import numpy as np

    from idm_rt.sampling import SamplingSettings
    from idm_rt.training.evaluate import detail_and_naturalness, evaluate
    from idm_rt.training.metrics import bicubic, make_pair
    from idm_rt.training.niqe import FEATURES, NIQEModel

    niqe = NIQEModel(np.zeros(FEATURES), np.eye(FEATURES), patch=8)
    gen = torch.Generator().manual_seed(0)
    images = [(f"i{k}", (torch.rand(3, 32, 32, generator=gen) * 255).to(torch.uint8)) for k in range(3)]
    (row,) = evaluate(tiny_model, images, [2.0], SamplingSettings(steps=1), niqe=niqe)
    want = []
    for _, img in images:
        hr, lr = make_pair(img, 2.0)
        want.append(detail_and_naturalness(bicubic(lr, tuple(hr.shape[-2:])), hr, 2.0, niqe))
        assert detail_and_naturalness(hr, hr, 2.0, niqe)["detail"] == pytest.approx(1.0)
    for key in ("detail", "detail_corr", "niqe"):
        assert row[key + "_bic"] == pytest.approx(np.median([w[key] for w in want]))
    assert row["niqe_hr"] > 0 and row["niqe"] > 0 and row["detail"] >= row["detail_corr"] >= 0


def test_seed_and_device_say_what_they_do(capsys):
    from idm_rt.training.evaluate import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED seed of the sampler's noise, the same for every image and scale" in text
    assert "--device DEVICE where the model runs: cpu (default), cuda or cuda:N" in text


def test_grids_name_their_columns_in_a_header_row(tmp_path):
    import numpy as np
    from PIL import Image

    from idm_rt.training.visual import LABEL_HEIGHT, save_grid

    rows = [[torch.full((3, 20, 30), 0.5), torch.full((3, 20, 30), 0.5)]]
    save_grid(rows, tmp_path / "plain.png")
    save_grid(rows, tmp_path / "named.png", labels=["bicubic", "ours"])
    plain, named = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("plain", "named"))
    assert named.shape[0] == plain.shape[0] + LABEL_HEIGHT and named.shape[1] == plain.shape[1]
    assert np.array_equal(named[LABEL_HEIGHT:], plain)  # the images where they were, one row lower
    header = named[:LABEL_HEIGHT].min(axis=(0, 2))  # darkest value of each pixel column
    assert header[4:34].min() < 128 and header[38:68].min() < 128  # text above each column
    assert (plain[:4] == 255).all()


def test_evaluate_takes_the_models_presets(tmp_path, tiny_model, capsys):
    """--quality names one of the model's stored presets (it knew only 'default'); its settings are the ones
    evaluated, and --steps still changes one of them."""
    import json

    from idm_rt.training import evaluate

    tiny_model.presets = {"fast": idm_rt.SamplingSettings(steps=0, init="bicubic", init_level=0.5)}
    idm_rt.save_model(tiny_model, tmp_path / "m")
    make_folder(tmp_path / "data", n=1)
    common = ["--model", str(tmp_path / "m"), "--data", str(tmp_path / "data"), "--scales", "2", "--crop", "24"]
    assert evaluate.main([*common, "--quality", "fast", "--json", str(tmp_path / "fast.json")]) == 0
    assert evaluate.main([*common, "--quality", "fast", "--steps", "1", "--json", str(tmp_path / "one.json")]) == 0
    fast, one = (json.loads((tmp_path / name).read_text()) for name in ("fast.json", "one.json"))
    assert fast["steps"] == 0 and one["steps"] == 1 and one["init"] == fast["init"] == "bicubic"
    assert evaluate.main([*common, "--quality", "sharpest"]) == 2
    assert "unknown sampling preset 'sharpest'; this model has: default, fast" in capsys.readouterr().err
