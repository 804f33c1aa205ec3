"""Upscaler: output sizes, input kinds, batches, seeds, tiling and error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import idm_rt
from idm_rt.arrays import Noise
from idm_rt.tiling import TilePlan

from .helpers import HIGH_BIT, pil_image


@pytest.fixture
def up(tiny_model):
    return idm_rt.Upscaler(tiny_model, steps=2)


def rgb(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("h,w,s", [(10, 13, 3.3), (7, 20, 2.5), (9, 9, 12.0), (16, 11, 1.05), (6, 5, np.float32(2.5))])
def test_output_size_is_rounded_product(up, h, w, s):
    out = up.upscale(rgb(h, w), scale=s, progress=False)
    assert out.shape == (round(h * s), round(w * s), 3) and out.dtype == np.uint8


def test_explicit_size_is_width_by_height(up):
    out = up.upscale(Image.fromarray(rgb(10, 12)), size=(30, 25), progress=False)
    assert isinstance(out, Image.Image) and out.size == (30, 25) and out.mode == "RGB"


def test_kinds_dtypes_and_channels_round_trip(up):
    gray = up.upscale(rgb(8, 8)[..., 0], scale=2, progress=False)
    assert gray.shape == (16, 16) and gray.dtype == np.uint8
    deep = up.upscale((rgb(8, 8).astype(np.uint16) * 257), scale=2, progress=False)
    assert deep.dtype == np.uint16 and deep.shape == (16, 16, 3)
    f = up.upscale(rgb(8, 8).astype(np.float32) / 255, scale=2, progress=False)
    assert f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1
    t = up.upscale(torch.rand(3, 8, 6), scale=2, progress=False)
    assert isinstance(t, torch.Tensor) and t.shape == (3, 16, 12) and t.dtype == torch.float32
    la = up.upscale(Image.fromarray(rgb(8, 8)[..., :2]), scale=2, progress=False)
    assert la.mode == "LA" and la.size == (16, 16)
    flt = up.upscale(Image.fromarray(rgb(8, 8)[..., 0].astype(np.float32) / 255, mode="F"), scale=2, progress=False)
    assert flt.mode == "F" and flt.size == (16, 16) and 0 <= np.asarray(flt).min() <= np.asarray(flt).max() <= 1


def test_alpha_is_upscaled_separately_with_bicubic(up):
    rgba = np.concatenate([rgb(8, 10), (np.random.default_rng(1).random((8, 10, 1)) * 255).astype(np.uint8)], -1)
    out = up.upscale(rgba, scale=3, progress=False)
    assert out.shape == (24, 30, 4)
    alpha = torch.from_numpy(rgba[..., 3].astype(np.float32) / 255)[None, None]
    want = F.interpolate(alpha, size=(24, 30), mode="bicubic", align_corners=False).clamp(0, 1)[0, 0].numpy()
    assert np.abs(out[..., 3].astype(np.float32) / 255 - want).max() <= 0.5 / 255 + 1e-6


def test_seed_makes_results_repeatable(up):
    a = up.upscale(rgb(8, 8), scale=2, seed=3, progress=False)
    b = up.upscale(rgb(8, 8), scale=2, seed=3, progress=False)
    c = up.upscale(rgb(8, 8), scale=2, seed=4, sampler="ddim", steps=4, eta=1.0, progress=False)
    d = up.upscale(rgb(8, 8), scale=2, seed=5, sampler="ddim", steps=4, eta=1.0, progress=False)
    assert np.array_equal(a, b) and not np.array_equal(c, d)


def test_list_is_a_batch_and_keeps_order(up):
    ims = [rgb(8, 8, 1), rgb(6, 10, 2), rgb(8, 8, 3)]
    outs = up.upscale(ims, scale=2, progress=False, seed=0)
    assert [o.shape for o in outs] == [(16, 16, 3), (12, 20, 3), (16, 16, 3)]
    for im, out in zip(ims, outs):  # with a seed, an image's result does not depend on its batch
        assert np.array_equal(out, up.upscale(im, scale=2, progress=False, seed=0))


def test_a_list_of_seeds_gives_each_image_its_own_result(up):
    ims = [rgb(8, 8, 1), rgb(8, 8, 2), rgb(6, 10, 3), rgb(8, 8, 1)]
    seeds = [5, 6, 7, 8]  # the first and last image are equal, their seeds are not
    outs = up.upscale(ims, scale=2, progress=False, seed=seeds)
    for im, s, out in zip(ims, seeds, outs):
        assert np.array_equal(out, up.upscale(im, scale=2, progress=False, seed=s))
    assert not np.array_equal(outs[0], outs[3])
    assert np.array_equal(up.upscale(ims[0], scale=2, progress=False, seed=[5]), outs[0])
    with pytest.raises(ValueError, match="one seed per image: got 2 seeds for 4 image"):
        up.upscale(ims, scale=2, progress=False, seed=[1, 2])
    with pytest.raises(ValueError, match="seed must be an integer in"):
        up.upscale(ims[:2], scale=2, progress=False, seed=[1, -1])


def test_one_tile_changes_nothing(up):
    a = up.upscale(rgb(12, 10), scale=2, seed=0, tile=0, progress=False)
    b = up.upscale(rgb(12, 10), scale=2, seed=0, tile=64, progress=False)
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scale=1.0), "scale must be a finite number > 1"),
        (dict(scale=0.5), "scale must be a finite number > 1"),
        (dict(scale=float("nan")), "scale must be a finite number > 1"),
        (dict(), "exactly one of scale or size"),
        (dict(scale=2, size=(20, 20)), "exactly one of scale or size"),
        (dict(size=(5, 20)), "must be larger than the input"),
        (dict(scale=2, sampler="euler"), "unknown sampler"),
        (dict(scale=2, steps=-1), r"steps must be an integer in \[0, 2000\]"),
        (dict(scale=2, steps=0, init="noise"), "steps=0 gives the start image itself"),
        (dict(scale=2, tile=6), "tile must be at least"),
        (dict(scale=2, eta=1.5), r"eta must be a number in \[0, 1\]"),
        (dict(scale=2, eta="0.5"), r"eta must be a number in \[0, 1\]"),
        (dict(scale=2, seed=1.5), "seed must be an integer"),
        (dict(scale=2, seed="1"), "seed must be an integer"),
        (dict(scale=2, seed=2**70), "seed must be an integer"),
        (dict(scale=2, init="bicubic", init_level="0.5"), r"init_level must be a number in \(0, 1\)"),
        (dict(scale=2, tile="16"), "tile must be an integer"),
        (dict(size={20, 21}), r"size must be \(width, height\)"),
        (dict(scale=2, steps=True), r"steps must be an integer in \[0, 2000\]"),
        (dict(scale=2, steps=10**9), r"steps must be an integer in \[0, 2000\]"),
        (dict(scale=2, back_projection=10**9), r"back_projection must be an integer in \[0, 100\]"),
        (dict(scale=2, sampler="ddpm", steps=1500, init="bicubic", init_level=0.9), r"ddpm steps must be in 1\.\.\d+"),
        (dict(scale=1.01), "too small to change the size"),
    ],
)
def test_bad_arguments_raise_value_error(up, kwargs, match):
    with pytest.raises(ValueError, match=match):
        up.upscale(rgb(10, 10), progress=False, **kwargs)


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((0, 5, 3), np.uint8), "image too small \\(5x0\\)"),
        (np.zeros((1, 1, 3), np.uint8), "image too small \\(1x1\\): it needs at least 2 pixels"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 3), np.int32), "unsupported image dtype"),
        (np.full((4, 4, 3), 2.0, np.float32), r"must be in \[0, 1\]"),
        (np.zeros((4, 4, 5), np.uint8), "HxW or HxWxC"),
        ("photo.png", "unsupported image type"),
    ],
)
def test_bad_images_raise_value_error(up, image, match):
    with pytest.raises(ValueError, match=match):
        up.upscale(image, scale=2, progress=False)


def test_pixel_limit(tiny_model):
    up = idm_rt.Upscaler(tiny_model, max_pixels=10_000)
    with pytest.raises(ValueError, match="above the limit of 10000"):
        up.upscale(rgb(20, 20), scale=6, progress=False)


def test_too_large_an_output_is_refused_before_a_lazy_image_is_decoded(tiny_model, tmp_path):
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(buffer, format="PNG")
    lazy = Image.open(io.BytesIO(buffer.getvalue()[:80]))  # its header says 30x40; decoding it would fail
    up = idm_rt.Upscaler(tiny_model, max_pixels=10_000)
    with pytest.raises(ValueError, match="output 120x160 has 19200 pixels, above the limit of 10000"):
        up.upscale(lazy, scale=4, progress=False)
    with pytest.raises(ValueError, match=r"scale 1e\+300 gives an output far above the limit"):
        up.upscale(rgb(20, 20), scale=1e300, progress=False)


@pytest.mark.parametrize("value", [4e9, 2**19, True, "4G"])
def test_max_memory_must_be_whole_bytes(tiny_model, value):
    with pytest.raises(ValueError, match=r"max_memory must be a number of bytes from 1 MiB \(2\*\*20\)"):
        idm_rt.Upscaler(tiny_model, max_memory=value)


def test_missing_default_model_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(idm_rt.upscaler, "DEFAULT_MODEL", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no bundled default model"):
        idm_rt.Upscaler.from_pretrained()


def test_bicubic_and_estimate_starts_are_the_diffused_upscale_and_condition_image():
    from idm_rt.diffusion import LinearSchedule, start_timestep
    from idm_rt.pipeline import initial_state

    lr = torch.rand(2, 3, 6, 7) * 2 - 1
    cond = torch.rand(2, 3, 12, 21) * 4 - 2  # an estimate, partly outside [-1, 1]
    settings = idm_rt.SamplingSettings(init="bicubic", init_level=0.7)
    x = initial_state(lr, cond, settings, Noise([0, 1]))
    t = settings.start_timestep
    assert t == start_timestep(0.7) and abs(LinearSchedule().noise_level(t) - 0.7) < 1e-3
    ac = LinearSchedule().ac(t)
    up = F.interpolate(lr, size=(12, 21), mode="bicubic", align_corners=False).clamp(-1, 1)
    z = torch.from_numpy(
        np.stack([np.random.default_rng(seed).standard_normal((3, 12, 21), dtype=np.float32) for seed in (0, 1)])
    )  # one numpy stream per image
    assert torch.allclose(x, ac**0.5 * up + (1 - ac) ** 0.5 * z, atol=1e-5)
    x = initial_state(lr, cond, settings.replace(init="estimate"), Noise([0, 1]))
    assert torch.allclose(x, ac**0.5 * cond.clamp(-1, 1) + (1 - ac) ** 0.5 * z, atol=1e-6)


def test_init_options_are_checked(up):
    out = up.upscale(rgb(8, 8), scale=2, init="bicubic", init_level=0.8, progress=False)
    assert out.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="init must be one of"):
        up.upscale(rgb(8, 8), scale=2, init="zeros", progress=False)
    with pytest.raises(ValueError, match=r"init_level must be a number in \(0, 1\)"):
        up.upscale(rgb(8, 8), scale=2, init="bicubic", init_level=1.5, progress=False)


def test_model_folder_defaults_are_used(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("IDM_RT_CACHE", str(tmp_path / "cache"))
    tiny_model.recommended = idm_rt.SamplingSettings(sampler="ddim", steps=7, init="bicubic", init_level=0.6)
    idm_rt.save_model(tiny_model, tmp_path / "m")
    loaded = idm_rt.Upscaler.from_pretrained(tmp_path / "m")
    assert loaded.sampling == idm_rt.SamplingSettings(sampler="ddim", steps=7, init="bicubic", init_level=0.6)
    assert idm_rt.Upscaler.from_pretrained(tmp_path / "m", steps=3).sampling.steps == 3
    with pytest.raises(TypeError, match=r"unknown options \['stepz'\]"):
        idm_rt.Upscaler.from_pretrained(tmp_path / "m", stepz=3)
    with pytest.raises(TypeError, match=r"unknown options \['engines'\]"):  # before any engine is built
        idm_rt.Upscaler.from_pretrained(tmp_path / "m", backend="onnxruntime", engines="elsewhere")
    assert not (tmp_path / "cache").exists()


def test_bf16_autocast_path_stays_close_to_fp32(tiny_model):
    """The static-buffer denoiser of idm_rt.cuda_graph, run eagerly on the CPU with bf16 autocast (the
    Upscaler's U-Net call on a GPU; it refuses autocast on a CPU)."""
    from idm_rt.cuda_graph import StaticDenoiser
    from idm_rt.pipeline import super_resolve

    lr = torch.from_numpy(rgb(8, 8)).permute(2, 0, 1)[None].float() / 127.5 - 1
    settings = idm_rt.SamplingSettings(steps=3, init="bicubic", init_level=0.9)  # no 1/g amplification
    ref = super_resolve(tiny_model, lr, (16, 16), settings, scale=2.0, noise=Noise([0]))
    out = super_resolve(
        tiny_model,
        lr,
        (16, 16),
        settings,
        scale=2.0,
        noise=Noise([0]),
        denoise=StaticDenoiser(tiny_model, "bf16", graphs=False),
    )
    assert 0 < (out - ref).abs().max() < 0.04  # bf16 keeps ~3 significant digits (0.04 of [-1, 1])
    with pytest.raises(ValueError, match="torch runs in 'fp32', 'fp16' or 'bf16', not 'int8'"):
        idm_rt.Upscaler(tiny_model, precision="int8")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_autocast_is_refused_on_a_cpu(tiny_model, precision):
    with pytest.raises(ValueError, match=f"precision='{precision}' is autocast for GPUs: on a CPU.*use 'fp32'"):
        idm_rt.Upscaler(tiny_model, precision=precision)


def test_tiled_output_follows_the_untiled_one_without_jumps_at_tile_edges(tiny_model):
    up = idm_rt.Upscaler(tiny_model, steps=4)
    small = (np.random.default_rng(0).random((6, 7, 3)) * 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(small).resize((28, 24), Image.BICUBIC)).astype(np.float32) / 255
    kw = dict(scale=2, seed=0, progress=False, init="bicubic", init_level=0.8)
    full, tiled = up.upscale(image, tile=0, **kw), up.upscale(image, tile=24, **kw)
    plan = TilePlan.for_image((48, 56), 24, multiple=tiny_model.config.size_multiple)
    assert len(plan.tiles) == 12  # overlap 12 (32 px, at most half a tile): 3 rows x 4 columns of tiles
    edges = sorted({l for _, l, _, _ in plan.tiles if l > 0} | {l + w for _, l, _, w in plan.tiles if l + w < 56})
    jump = lambda a: np.mean([np.abs(a[:, c] - a[:, c - 1]).mean() for c in edges])
    assert np.abs(tiled - full).max() < 0.02
    assert jump(tiled) < 1.05 * jump(full)


def test_numpy_integers_are_accepted_for_steps_and_seed(up):
    a = up.upscale(rgb(10, 10), scale=2, steps=np.int64(2), seed=np.int64(4), progress=False)
    b = up.upscale(rgb(10, 10), scale=2, steps=2, seed=4, progress=False)
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "defaults, message",
    [
        ({"sampler": "euler", "steps": 3}, "unknown sampler 'euler'"),
        ({"steps": 10**9}, r"steps must be an integer in \[0, 2000\]"),
        ({"device": "cuda", "max_pixels": 10**12}, r"unknown keys \['device', 'max_pixels'\]"),  # not Upscaler options
        (["dpmpp_2m"], "must be a JSON object"),
    ],
)
def test_bad_stored_defaults_are_refused_when_loading(tiny_model, tmp_path, defaults, message):
    import json

    idm_rt.save_model(tiny_model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["defaults"] = defaults
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        idm_rt.Upscaler.from_pretrained(tmp_path / "m")


# The documented policy: PIL mode -> (what it is upscaled as, the mode it comes back in).
PIL_POLICY = {
    "1": ("L", "L"),
    "L": ("L", "L"),
    "LA": ("LA", "LA"),
    "La": ("LA", "La"),
    "P": ("RGB", "RGB"),
    "P+transparency": ("RGBA", "RGBA"),
    "PA": ("RGBA", "RGBA"),
    "RGB": ("RGB", "RGB"),
    "RGBA": ("RGBA", "RGBA"),
    "RGBa": ("RGBA", "RGBa"),
    "RGBX": ("RGB", "RGBX"),
    "CMYK": ("RGB", "CMYK"),
    "YCbCr": ("RGB", "YCbCr"),
    "LAB": ("RGB", "LAB"),
    "HSV": ("RGB", "HSV"),
}


@pytest.mark.parametrize("mode", list(PIL_POLICY))
def test_every_pil_mode_comes_back_in_its_mode_or_the_documented_one(up, mode):
    im = pil_image(mode)
    assert im.mode == mode.split("+")[0]
    read_as, back_as = PIL_POLICY[mode]
    kw = {"scale": 2, "seed": 0, "progress": False}
    out = up.upscale(im, **kw)
    assert out.mode == back_as and out.size == (20, 16)
    # what it must be: the upscale of the image read as read_as, converted to back_as by Pillow
    want = Image.fromarray(up.upscale(np.asarray(im.convert(read_as)), **kw)).convert(back_as)
    assert np.abs(np.asarray(out).astype(int) - np.asarray(want).astype(int)).max() <= 1


@pytest.mark.parametrize("mode", list(HIGH_BIT))
def test_high_bit_pil_modes_keep_their_mode_and_depth(up, mode):
    im = pil_image(mode)
    assert im.mode == mode
    kw = {"scale": 2, "seed": 0, "progress": False}
    out = up.upscale(im, **kw)
    assert out.mode == mode and out.size == (20, 16)
    values = np.asarray(im)
    want = up.upscale(values.astype(np.uint16) if mode == "I" else values, **kw)  # as a 16-bit or float array
    assert np.array_equal(np.asarray(out), want)
    if mode != "F":
        assert np.asarray(out).max() > 255  # still 16-bit, not squeezed to 8


def test_mode_i_outside_the_16_bit_range_is_refused(up):
    with pytest.raises(ValueError, match=r"mode I images must hold values in 0\.\.65535.*\[-5, 70000\]"):
        up.upscale(Image.fromarray(np.array([[-5, 70000], [0, 1]], np.int32)), scale=2, progress=False)


def test_exif_orientation_is_applied_to_pil_inputs(up):
    im = Image.fromarray(rgb(6, 10))
    exif = im.getexif()
    exif[0x0112] = 6  # stored 10x6, shown rotated: 6 wide and 10 high
    im.info["exif"] = exif.tobytes()
    out = up.upscale(im, scale=2, seed=0, progress=False)
    assert out.size == (12, 20)
    shown = Image.fromarray(rgb(6, 10)).transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(out), np.asarray(up.upscale(shown, scale=2, seed=0, progress=False)))


@pytest.mark.parametrize("channels", [2, 4])
def test_tensors_that_require_grad_are_detached(up, channels):
    image = torch.rand(channels, 8, 8, requires_grad=True)
    out = up.upscale(image, scale=2, seed=0, progress=False)
    assert out.shape == (channels, 16, 16) and not out.requires_grad
    assert torch.equal(out, up.upscale(image.detach(), scale=2, seed=0, progress=False))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: torch.empty(3, 8, 8, device="meta"), "meta tensor has no values"),
        (lambda: torch.rand(3, 8, 8).to_sparse(), "must be dense, got a torch.sparse_coo tensor"),
        (lambda: torch.rand(8, 8).to_sparse_csr(), "must be dense, got a torch.sparse_csr tensor"),
        (lambda: torch.nested.nested_tensor([torch.rand(3, 8, 8)]), "must be dense, got a nested tensor"),
        (lambda: torch.quantize_per_tensor(torch.rand(3, 8, 8), 0.1, 0, torch.quint8), "quantized image tensors"),
        (lambda: torch.rand(3, 8, 8, dtype=torch.complex64), "unsupported image dtype torch.complex64"),
        (lambda: torch.ones(3, 8, 8, dtype=torch.bool), "unsupported image dtype torch.bool"),
        (lambda: torch.ones(3, 8, 8, dtype=torch.int32), "unsupported image dtype torch.int32"),
        (lambda: torch.rand(8, 8, 3), r"channels first.*got shape \(8, 8, 3\)"),
        (lambda: torch.rand(1, 1, 3, 8, 8), r"got shape \(1, 1, 3, 8, 8\)"),
        (lambda: torch.rand(2, 5, 8, 8), r"got shape \(5, 8, 8\)"),
        (lambda: torch.empty(0, 3, 8, 8), "no image given"),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's notes on prototype and deprecated layouts
def test_tensors_without_plain_pixel_values_are_refused(up, make, match):
    with pytest.raises(ValueError, match=match):
        up.upscale(make(), scale=2, progress=False)


def test_uint16_and_bfloat16_tensors_keep_their_dtype(up):
    image = torch.from_numpy(rgb(8, 8).astype(np.int32) * 257).permute(2, 0, 1).to(torch.uint16)
    out = up.upscale(image, scale=2, seed=0, progress=False)
    assert out.dtype == torch.uint16 and out.shape == (3, 16, 16)
    want = up.upscale(rgb(8, 8).astype(np.uint16) * 257, scale=2, seed=0, progress=False)
    assert np.array_equal(out.permute(1, 2, 0).to(torch.int32).numpy(), want.astype(np.int32))
    assert up.upscale(torch.rand(3, 8, 8).bfloat16(), scale=2, progress=False).dtype == torch.bfloat16


def test_a_batch_tensor_is_upscaled_as_a_batch(up):
    batch = torch.rand(3, 4, 8, 10)
    out = up.upscale(batch, scale=2, seed=1, progress=False)
    assert out.shape == (3, 4, 16, 20) and out.dtype == torch.float32
    for image, result in zip(batch, out):  # each as alone, to float rounding (one network batch)
        assert torch.allclose(result, up.upscale(image, scale=2, seed=1, progress=False), atol=1e-5)
    as_bytes = (batch * 255).to(torch.uint8)
    out8 = up.upscale(as_bytes, scale=2, seed=1, progress=False)
    assert out8.dtype == torch.uint8 and out8.shape == (3, 4, 16, 20)
    last = up.upscale(batch.to(memory_format=torch.channels_last), scale=2, seed=1, progress=False)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, out)


@pytest.mark.parametrize("dtype", [">u2", ">f4", ">f8", "<f2"])
def test_any_byte_order_is_accepted_and_kept(up, dtype):
    native = np.dtype(dtype).newbyteorder("=")
    values = rgb(8, 8).astype(np.uint16) * 257 if native.kind == "u" else rgb(8, 8) / 255
    kw = {"scale": 2, "seed": 0, "progress": False}
    out = up.upscale(values.astype(dtype), **kw)
    assert out.dtype == np.dtype(dtype)
    assert np.array_equal(out.astype(native), up.upscale(values.astype(native), **kw))


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_strided_read_only_and_subclassed_arrays_are_read_as_their_values(up):
    kw = {"scale": 2, "seed": 0, "progress": False}
    image = rgb(8, 12)
    read_only = image.copy()
    read_only.setflags(write=False)
    for view in (image[::-1, ::-1], image[:, ::2], np.asfortranarray(image), read_only):
        assert np.array_equal(up.upscale(view, **kw), up.upscale(np.ascontiguousarray(view), **kw))
    matrix = up.upscale(np.matrix(image[..., 0]), **kw)
    assert type(matrix) is np.ndarray and np.array_equal(matrix, up.upscale(image[..., 0].copy(), **kw))


@pytest.mark.parametrize("h,w", [(1, 10), (10, 1), (1, 2), (2, 300)])
def test_thin_images_upscale(up, h, w):
    out = up.upscale(rgb(h, w), scale=2, progress=False)
    assert out.shape == (2 * h, 2 * w, 3)


@pytest.mark.parametrize(
    "image,match",
    [
        (np.array(3, np.uint8), r"HxW or HxWxC with C in 1\.\.4, got shape \(\)"),
        (np.zeros((1, 1, 4, 4, 3), np.uint8), r"got shape \(1, 1, 4, 4, 3\)"),
        (np.zeros((4, 4, 3), bool), "unsupported image dtype bool"),
        (np.zeros((4, 4, 3), np.int64), "unsupported image dtype int64"),
        (np.zeros((4, 4, 3), object), "unsupported image dtype object"),
        (np.zeros((4, 4, 3), np.complex64), "unsupported image dtype complex64"),
        (np.full((4, 4), 1e300), "float images must be in"),
        (Image.new("F", (4, 4), 255.0), r"float images must be in \[0, 1\]"),
    ],
)
def test_odd_arrays_are_refused_by_name(up, image, match):
    with pytest.raises(ValueError, match=match):
        up.upscale(image, scale=2, progress=False)


def test_masked_arrays_are_refused_rather_than_read_without_their_mask(up):
    with pytest.raises(TypeError, match="masked arrays are not supported"):
        up.upscale(np.ma.masked_array(np.zeros((4, 4, 3), np.uint8)), scale=2, progress=False)


def test_the_estimate_start_needs_an_encoder_trained_as_one(tiny_model):
    """init='estimate' starts from the condition image, an HR estimate only for implicit encoders: refused for
    others wherever settings meet a model (the Upscaler, a call, a training recipe), before any work."""
    from idm_rt.training.config import TrainConfig

    assert tiny_model.config.encoder_upsampler == "nearest"
    with pytest.raises(ValueError, match="encoder_upsampler='implicit'"):
        idm_rt.Upscaler(tiny_model, init="estimate")
    up = idm_rt.Upscaler(tiny_model, steps=2, init="bicubic", init_level=0.9)
    with pytest.raises(ValueError, match="use init='bicubic'"):
        up.upscale(np.zeros((8, 8, 3), np.uint8), scale=2, init="estimate", progress=False)
    with pytest.raises(ValueError, match="encoder_upsampler='implicit'"):
        TrainConfig.from_dict({"val_sampling": {"init": "estimate", "init_level": 0.9}})
    TrainConfig.from_dict(
        {"network": {"encoder_upsampler": "implicit"}, "val_sampling": {"init": "estimate", "init_level": 0.9}}
    )
    implicit = idm_rt.IDM(idm_rt.IDMConfig(**{**tiny_model.config.to_dict(), "encoder_upsampler": "implicit"}))
    out = idm_rt.Upscaler(implicit, steps=2, init="estimate", init_level=0.9).upscale(
        np.zeros((8, 8, 3), np.uint8), scale=2, progress=False
    )
    assert out.shape == (16, 16, 3)
