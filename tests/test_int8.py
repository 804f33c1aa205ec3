"""``python -m idm_rt.build --engine int8``: the calibration inputs, which convolutions stay in float32,
the quantised graph, parity, the Upscaler on it, reuse and rebuilds, and clear errors."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

import idm_rt
from idm_rt import Upscaler
from idm_rt.backends import load_runner
from idm_rt.backends.engine_dir import graph_inputs, read_manifest
from idm_rt.buckets import Bucket
from idm_rt.build import main
from idm_rt.export import parity, quantize, winograd
from idm_rt.export.graphs import export_graph

TINY = idm_rt.IDMConfig(
    inner_channel=32, channel_multiplier=(1, 2, 4), res_blocks=1, attn_levels=(2,), encoder_blocks=2
)
SAMPLING = idm_rt.SamplingSettings(sampler="dpmpp_2m", steps=3, init="bicubic", init_level=0.9)
UNET = "unet/32x32_b1-2"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = idm_rt.IDM(TINY, max_scale=4.0).eval()
    model.recommended = SAMPLING
    return idm_rt.save_model(model, tmp_path_factory.mktemp("int8") / "model")


@pytest.fixture(scope="module")
def int8_dir(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "int8"
    assert (
        main(
            [
                "--engine",
                "int8",
                "--backend",
                "onnxruntime",
                "--model",
                str(model_dir),
                "--out",
                str(out),
                "--tile",
                "32",
                "--batch",
                "1,2",
                "--calibration",
                "synthetic",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    return out


def _nodes(path):
    return onnx.load(str(path)).graph.node


def test_the_manifest_says_int8_and_only_the_static_unet_is_quantised(int8_dir):
    m = read_manifest(int8_dir)
    assert m.complete and m.precision == "int8" and m.backend == "onnxruntime"
    assert {k: g.precision for k, g in m.graphs.items()} == {
        "encoder": "fp32",
        "encoder_block": "fp32",
        "conditioner": "fp32",
        "unet_dynamic": "fp32",
        UNET: "int8",
    }
    flags = m.build_flags["int8"]
    assert flags["calibration"] == "synthetic" and flags["method"] == "percentile" and flags["activations"] == "uint8"
    ops = {n.op_type for n in _nodes(int8_dir / m.graphs[UNET].onnx)}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DepthToSpace" not in ops
    for key in ("encoder", "encoder_block", "unet_dynamic"):
        assert "DequantizeLinear" not in {n.op_type for n in _nodes(int8_dir / m.graphs[key].onnx)}


def test_the_first_last_and_the_two_finest_decoder_levels_convolutions_stay_float(int8_dir, tmp_path):
    torch.manual_seed(0)
    fp32 = export_graph(idm_rt.IDM(TINY, max_scale=4.0).eval(), "unet", Bucket(32, 32), tmp_path / "unet.onnx")
    paths = quantize.module_paths(onnx.load(str(fp32)))
    named = lambda nodes: {paths.get(n, n) for n in nodes}
    kept = named(quantize.excluded_nodes(onnx.load(str(fp32)), quantize.KEEP_FLOAT, TINY.levels))
    # three levels: the decoder's finest are up.2 and up.1, each two blocks; the implicit up-layers' 1x1 maps have
    # weights folded under the exporter's names, no module path
    blocks = {
        f"unet.up.{level}.blocks.{b}.res.{conv}"
        for level in (1, 2)
        for b in (0, 1)
        for conv in ("block1.conv", "block2.conv", "skip")
    }
    assert kept == {"unet.input_conv", "unet.final.conv", "/unet/upsample/Conv", "/unet/upsample_1/Conv", *blocks}
    nodes = _nodes(int8_dir / read_manifest(int8_dir).graphs[UNET].onnx)
    producers = {o: n.op_type for n in nodes for o in n.output}
    convs = {n.name: producers.get(n.input[1], "initializer") for n in nodes if n.op_type == "Conv"}
    float_convs = named(name for name, weight in convs.items() if weight != "DequantizeLinear")
    assert float_convs == kept and len(convs) > len(kept)


def test_int8_parity_is_within_its_limit_and_above_float32s(int8_dir, model_dir, capsys):
    assert parity.main([str(int8_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{UNET} " in out and "1 x 32x32" in out and "2 x 32x32" in out  # both ends of the batch range
    errors = {key: err for key, _, _, err in parity.graph_errors(load_runner(int8_dir), idm_rt.load_model(model_dir))}
    assert parity.LIMITS["fp32"] < errors[UNET] < parity.LIMITS["int8"]  # quantised: not float32's error
    assert max(errors["unet_dynamic"], errors["encoder"]) < parity.LIMITS["fp32"]


def test_the_upscaler_runs_int8_engines_close_to_float32(int8_dir, model_dir):
    image = np.random.default_rng(0).random((16, 16, 3), dtype=np.float32)  # 32x32 output: the int8 graph
    kw = dict(scale=2, seed=3, progress=False)
    got = Upscaler.from_engines(int8_dir, runner_options={"threads": 1}).upscale(image, **kw)
    want = Upscaler.from_pretrained(model_dir, tile=0).upscale(image, **kw)
    assert got.shape == want.shape == (32, 32, 3)
    assert 0 < np.abs(got - want).mean() < 0.02


def test_a_second_build_reuses_and_other_calibration_images_rebuild_the_unet(int8_dir, model_dir, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(int8_dir, folder)
    args = [
        "--engine",
        "int8",
        "--backend",
        "onnxruntime",
        "--model",
        str(model_dir),
        "--out",
        str(folder),
        "--tile",
        "32",
        "--batch",
        "1,2",
        "--threads",
        "1",
    ]
    capsys.readouterr()
    assert main([*args, "--calibration", "synthetic"]) == 0
    log = capsys.readouterr().out
    assert log.count("reused") == 10 and "calibrated" not in log
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for k in range(7):  # 4 to calibrate on, 3 to check the engine on
        pixels = np.random.default_rng(k).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{k}.png")
    assert main([*args, "--calibration", str(images)]) == 0
    log = capsys.readouterr().out
    assert log.count("ONNX int8 calibrated") == 1 and log.count("ONNX fp32 reused") == 4
    assert read_manifest(folder).build_flags["int8"]["calibration"].startswith(str(images))


def test_calibration_inputs_are_every_unet_call_of_the_sampler_and_seeded(model_dir):
    model = idm_rt.load_model(model_dir)
    images, what = quantize.calibration_images("synthetic", 2, seed=0)
    again, _ = quantize.calibration_images("synthetic", 2, seed=0)
    other, _ = quantize.calibration_images("synthetic", 2, seed=1)
    assert what == "synthetic" and quantize.images_digest(images) == quantize.images_digest(again)
    assert quantize.images_digest(images) != quantize.images_digest(other)
    calls = []
    real = model.denoise
    model.denoise = lambda x, c, g: calls.append(x.clone()) or real(x, c, g)
    feeds = quantize.record_unet_inputs(model, images, Bucket(24, 40), (2.0, 3.0), SAMPLING, progress=False)
    assert len(feeds) == len(calls) == 2 * 2 * 3  # images x scales x steps
    assert all(list(f) == graph_inputs("unet", model.config) for f in feeds)
    assert all(f["x_t"].shape == (1, 3, 24, 40) and f["g"].shape == (1,) for f in feeds)
    assert all(np.array_equal(f["x_t"], x.numpy()) for f, x in zip(feeds, calls))
    assert len({round(float(f["g"][0]), 6) for f in feeds}) == 3  # one noise level per step
    model.denoise = real
    again = quantize.record_unet_inputs(model, images, Bucket(24, 40), (2.0, 3.0), SAMPLING, progress=False)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(feeds, again) for k in a)  # seeded: crops and noise


def test_clear_errors(model_dir, int8_dir, tmp_path, capsys, monkeypatch):
    base = ["--model", str(model_dir), "--out", str(tmp_path / "x"), "--tile", "32"]
    for bad, message in (
        (["--engine", "int8", "--backend", "tensorrt"], "--precision int8 is for --backend onnxruntime"),
        (
            ["--precision", "fp32", "--backend", "onnxruntime", "--calibration", "synthetic"],
            "--calibration is for --precision int8",
        ),
        (["--engine", "int8", "--backend", "onnxruntime", "--conv", "winograd"], "--conv winograd is for"),
    ):
        with pytest.raises(SystemExit) as e:
            main([*base, *bad])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert main([*base, "--engine", "int8", "--backend", "onnxruntime", "--calibration", str(tmp_path / "no")]) == 1
    assert "is not a folder (nor auto, skimage or synthetic)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="calibration method must be one of"):
        quantize.QuantSettings(method="kl")
    monkeypatch.setattr(winograd, "MIN_REDUCED_CHANNELS", 16)  # so that the tiny network has some
    monkeypatch.setattr(winograd, "REDUCED_CHANNELS_TIMES_SIDE", 128)
    torch.manual_seed(0)
    transformed = export_graph(idm_rt.IDM(TINY).eval(), "unet", Bucket(44, 44), tmp_path / "w.onnx", conv="winograd")
    with pytest.raises(ValueError, match="quantise the graph exported with direct ones"):
        quantize.prepare(transformed, tmp_path / "p.onnx")
    manifest = json.loads((int8_dir / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(dict(manifest, backend="tensorrt")))
    with pytest.raises(ValueError, match=r"precision must be one of \('fp16', 'fp32'\) for tensorrt"):
        read_manifest(tmp_path)


def test_the_build_checks_the_engine_it_made_and_says_what_it_calibrated_on(int8_dir):
    """The int8_dir fixture's build ran the check: its result, numbers and verdict, is in the manifest."""
    check = read_manifest(int8_dir).build_flags["int8_check"]
    assert check["passed"] and list(check["graphs"]) == [UNET]
    report = check["report"]
    assert "calibration: synthetic; held-out images: synthetic, seeds 1000+" in report
    assert f"parity {UNET} 1 x 32x32" in report and f"parity {UNET} 2 x 32x32" in report
    assert all(f"images at {s}x" in report for s in (2, 4, 8)) and "FAIL" not in report


@pytest.mark.slow
def test_an_int8_engine_that_falls_short_is_an_error_naming_the_numbers(model_dir, tmp_path, capsys, monkeypatch):
    # activation ranges that keep only the central half of each tensor's values: a badly calibrated engine
    monkeypatch.setitem(quantize.METHOD_OPTIONS, "percentile", {"percentile": 50.0, "symmetric": False})
    out = tmp_path / "bad"
    args = [
        "--engine",
        "int8",
        "--backend",
        "onnxruntime",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--tile",
        "32",
        "--calibration",
        "synthetic",
        "--threads",
        "1",
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "int8 calibration images: synthetic" in captured.out
    fails = [line for line in captured.out.splitlines() if line.endswith("FAIL")]
    assert any("parity unet/32x32_b1-1 1 x 32x32: relative error" in line for line in fails)
    assert any("images at 4x:" in line and "dB from the float32 image (needed" in line for line in fails)
    assert "falls short of the float32 model" in captured.err and "--engine fp32" in captured.err
    assert not read_manifest(out).build_flags["int8_check"]["passed"]
    assert main(args) == 1  # again: the recorded result, not minutes of calibration and checking
    captured = capsys.readouterr()
    assert "measured before" in captured.out and "calibrated" not in captured.out and "FAIL" in captured.out
    with pytest.warns(UserWarning, match="failed the build's check"):
        load_runner(out)
    assert main([*args, "--skip-int8-check"]) == 0  # kept, to be measured
    assert "int8 check" not in capsys.readouterr().out and "int8_check" not in read_manifest(out).build_flags


def test_the_check_images_are_held_out_from_the_calibration(tmp_path):
    settings = quantize.QuantSettings()
    images, what = quantize.held_out_images("skimage", settings, 3)
    assert (
        what == "skimage: astronaut, coffee, chelsea"
        and not set(quantize.SKIMAGE_HELD_OUT) & set(quantize.SKIMAGE_CALIBRATION)
        and [tuple(i.shape) for i in images][0] == (3, 512, 512)
    )
    from PIL import Image

    for k in range(6):
        Image.fromarray(np.full((40, 48, 3), k * 40, np.uint8)).save(tmp_path / f"{k}.png")
    calibrated, _ = quantize.calibration_images(tmp_path, 4, settings.seed)
    held, what = quantize.held_out_images(tmp_path, settings, 3)  # two left beyond the four calibrated on
    assert len(held) == 2 and "images 5-6 of the seeded draw" in what
    values = {int(i[0, 0, 0]) for i in calibrated}
    assert len(values) == 4 and not values & {int(i[0, 0, 0]) for i in held}
    (tmp_path / "4.png").unlink()
    (tmp_path / "5.png").unlink()
    with pytest.raises(ValueError, match="holds 4 images, all calibrated on"):
        quantize.held_out_images(tmp_path, settings, 3)
