"""Engine runners on the CPU: Upscaler from an ONNX Runtime engine directory against the torch
backend (same seed, same tiling) at bucket sizes and at every other size, batching, and clear errors."""

import dataclasses
import importlib.util
import shutil
import threading

import numpy as np
import pytest
import torch

import idm_rt
from idm_rt import Upscaler
from idm_rt.backends import load_runner
from idm_rt.backends.base import bucket_tile, run_batched
from idm_rt.backends.engine_dir import graph_inputs, read_manifest
from idm_rt.build import main
from idm_rt.export import builder, tensorrt_build
from idm_rt.export.graphs import export_graph, sample_inputs

from .helpers import TINY_32

onnxruntime = pytest.importorskip("onnxruntime")

# Every test but test_run_batched_chunks_and_pads_to_the_bucket_range needs the engines the module fixture builds
# (about 11 s), and several build more.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    torch.manual_seed(0)
    model = idm_rt.IDM(TINY_32, max_scale=4.0).eval()
    model.recommended = idm_rt.SamplingSettings(sampler="ddim", steps=5, init="bicubic", init_level=0.7)
    idm_rt.save_model(model, root / "model")
    out = root / "engines"
    assert (
        main(
            [
                "--engine",
                "fp32",
                "--backend",
                "onnxruntime",
                "--model",
                str(root / "model"),
                "--out",
                str(out),
                "--tile",
                "32",
                "--batch",
                "1,2",
            ]
        )
        == 0
    )
    return idm_rt.load_model(root / "model"), out


def _image(h, w, seed):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def test_engine_upscaler_matches_torch_backend_for_the_same_seed(built):
    model, folder = built
    images = [_image(16, 16, 0), _image(16, 16, 1), _image(16, 16, 2)]  # batch 3: chunks of 2 and 1
    kw = dict(scale=2, steps=4, seed=7, progress=False, sampler="dpmpp_2m", init="noise")
    want = Upscaler(model, tile=0).upscale(images, **kw)
    got = Upscaler.from_engines(folder).upscale(images, **kw)
    for g, w in zip(got, want):
        assert g.shape == w.shape == (32, 32, 3)
        assert np.abs(g - w).max() < 2e-3


def test_engine_directory_keeps_the_models_sampling_defaults(built):
    model, folder = built
    up = Upscaler.from_engines(folder)
    assert up.sampling == idm_rt.SamplingSettings(sampler="ddim", steps=5, init="bicubic", init_level=0.7)
    got = up.upscale(_image(16, 16, 5), scale=2, seed=3, progress=False)
    want = Upscaler.from_pretrained(folder.parent / "model", tile=0).upscale(
        _image(16, 16, 5), scale=2, seed=3, progress=False
    )
    assert np.abs(got - want).max() < 2e-3


def test_the_runners_threads_do_not_spin_between_calls(built):
    """Idle ONNX Runtime threads would spin on the cores the sampling loop's numpy work needs between calls."""
    _, folder = built
    runner = load_runner(folder)
    for session in runner._sessions.values():
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_outputs_larger_than_every_bucket_run_as_torch_runs_them(built):
    """Bucket 32x32: ONNX Runtime's dynamic graph takes tiles up to 64 (twice the bucket's side), so a 32x48 output
    runs untiled (one 32x48 call costs fewer pixels than two 32x32 tiles, even at the static graph's speed) and a
    32x96 output in tiles; either computes what torch computes with the same tiling."""
    model, folder = built
    kw = dict(scale=2, steps=3, seed=1, progress=False, sampler="dpmpp_2m", init="noise")
    runner = load_runner(folder)
    assert bucket_tile(runner, (32, 32)) is None and bucket_tile(runner, (32, 48)) is None
    tile = bucket_tile(runner, (32, 96))
    assert tile is not None and 16 <= tile <= 64
    for image, torch_tile in ((_image(16, 24, 3), 0), (_image(16, 48, 3), tile)):
        got = Upscaler.from_engines(folder).upscale(image, **kw)
        want = Upscaler(model).upscale(image, tile=torch_tile, **kw)
        assert np.abs(got - want).max() < 2e-3


def test_the_tile_rule_weighs_static_graphs_only_where_there_are_some(built):
    """A default ONNX Runtime fp32 build on a CPU has static Winograd graphs, an int8 build static int8 graphs (each
    faster than the float32 dynamic graph); the bundled engines only the dynamic graph, whose tiles all cost alike.
    Both weigh the attention's growth with the tile's area, as the build counted it (idm_rt.cost.stage_flops), and
    reach twice the largest bucket's side."""
    from idm_rt.backends.onnxruntime import INT8_SPEEDUP, WINOGRAD_SPEEDUP, OnnxRuntimeRunner
    from idm_rt.cost import stage_flops
    from idm_rt.upscaler import DEFAULT_ENGINES

    _, folder = built
    runner = load_runner(folder)
    costs = runner.tile_costs()
    assert runner.manifest.build_flags.get("conv") == "winograd" and costs.static_speedup == WINOGRAD_SPEEDUP > 1
    flops = stage_flops(runner.config)
    assert costs.attention == pytest.approx(flops.unet_area / flops.unet) and costs.attention > 0
    assert costs.reach == 2
    assert OnnxRuntimeRunner.static_speedup(False, "int8") == INT8_SPEEDUP > WINOGRAD_SPEEDUP
    assert OnnxRuntimeRunner.static_speedup(False, "fp32") == 1.0
    if (DEFAULT_ENGINES / "manifest.json").exists():
        assert load_runner(DEFAULT_ENGINES).tile_costs().static_speedup == 1.0


@pytest.mark.parametrize(
    "size, scale", [((12, 12), 2), ((10, 9), 3), ((20, 12), 2), ((13, 21), 3), ((16, 16), 2), ((40, 40), 3)]
)
def test_engines_give_the_torch_image_at_every_output_size(built, size, scale):
    """Outputs smaller than the 32x32 bucket (24x24, 30x27: the dynamic graph at their own size), larger than it
    within the dynamic graph's reach of 64 (40x24, 39x63: untiled there too), an exact fit (32x32) and 120x120
    (tiled, with remainders): 8-bit images within 1/255 of the torch backend with the same tiling (the engines'
    choice: a side of at most 64)."""
    model, folder = built
    image = (_image(*size, 11) * 255).round().astype(np.uint8)
    kw = dict(scale=scale, steps=3, seed=5, progress=False, sampler="dpmpp_2m", init="bicubic", init_level=0.8)
    engines = Upscaler.from_engines(folder, runner_options={"threads": 1})
    got = engines.upscale(image, **kw)
    tile = engines.choose_tile((round(size[0] * scale), round(size[1] * scale)))
    assert (tile is None) == (max(size) * scale <= 64) and (tile is None or tile <= 64)
    want = Upscaler(model).upscale(image, tile=tile or 0, **kw)
    assert got.shape == want.shape == (round(size[0] * scale), round(size[1] * scale), 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_the_encoder_runs_in_pieces_bounded_whatever_the_image(built):
    """An LR image wider than a feature tile (530 > 512) to a condition image of 600 x 1060: the torch
    encoder's, while the features graph is never given more than 512 + 2 x 6 (its six convolutions' reach)
    LR pixels a side, nor the block graph more than 256 + 2 (halo) HR pixels, or feature rows or columns."""
    model, folder = built
    runner = load_runner(folder)
    features, blocks = [], []
    run_graph = runner.run_graph

    def spy(key, inputs):
        if key == "encoder":
            features.append(tuple(inputs["lr"].shape[-2:]))
        if key == "encoder_block":
            blocks.append((*inputs["feat"].shape[-2:], len(inputs["rows"]), len(inputs["cols"])))
        return run_graph(key, inputs)

    runner.run_graph = spy
    lr = torch.rand(2, 3, 150, 530) * 2 - 1
    with torch.no_grad():
        got, want = torch.from_numpy(runner.encode(lr.numpy(), (600, 1060))), model.encode(lr, (600, 1060))
    assert got.shape == want.shape == (2, 3, 600, 1060)
    # float32 ONNX Runtime against torch, summed differently through the encoder: 1.05e-4 measured at worst
    assert (got - want).abs().max() < 2e-4, float((got - want).abs().max())
    assert features == [(150, 518), (150, 24)] * 2  # two tiles per image, each with its 6-pixel margin
    assert len(blocks) == 2 * 3 * 5 and max(max(b) for b in blocks) == 258


def test_the_implicit_encoder_through_engines_is_the_torch_encoders(tmp_path):
    """The bundled model's kind of encoder (relative coordinates, cell size, bicubic term) through the
    runner, the LR wider than a feature tile and the output several blocks each way; and an output
    smaller than the LR, which a block's profile cannot hold, refused with a message."""
    torch.manual_seed(2)
    model = idm_rt.IDM(dataclasses.replace(TINY_32, encoder_upsampler="implicit"), max_scale=4.0).eval()
    idm_rt.save_model(model, tmp_path / "model")
    assert (
        main(
            [
                "--engine",
                "fp32",
                "--backend",
                "onnxruntime",
                "--model",
                str(tmp_path / "model"),
                "--out",
                str(tmp_path / "engines"),
                "--tile",
                "32",
            ]
        )
        == 0
    )
    runner = load_runner(tmp_path / "engines")
    lr = torch.rand(1, 3, 70, 530) * 2 - 1
    with torch.no_grad():
        got, want = torch.from_numpy(runner.encode(lr.numpy(), (300, 1100))), model.encode(lr, (300, 1100))
    assert got.shape == want.shape == (1, 3, 300, 1100)
    # float32 ONNX Runtime against torch, summed differently through the encoder: 1.05e-4 measured at worst
    assert (got - want).abs().max() < 2e-4, float((got - want).abs().max())
    runner._io_binding = True  # the CUDA provider's path, here with the CPU's: the block's rel_* and cell inputs
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(runner.encode(lr.numpy(), (300, 1100))), got)
    with pytest.raises(ValueError, match="output .1100x60. is smaller than the LR image .530x70."):
        runner.encode(lr.numpy(), (60, 1100))


def test_io_binding_path_sizes_every_output_of_every_graph_kind(built):
    """The IO-binding path the CUDA provider takes (outputs preallocated, so sized before the run), run
    here with the CPU provider: every graph (encoder, encoder_block, conditioner, the dynamic U-Net at
    two sizes, the bucket's U-Net at each end of its batch range) gives the plain run's outputs, and a
    whole image is the plain path's. The conditioner's outputs are sized h_1, w_1, ..., which no input
    has (they once raised KeyError('h_1'))."""
    model, folder = built
    plain, bound = load_runner(folder), load_runner(folder)
    bound._io_binding = True
    kinds = set()
    for key in bound.manifest.graphs:
        kind, _, name = key.partition("/")
        bucket = next((b for b in bound.buckets if b.name == name), None)
        for batch, size in [(1, (40, 24)), (2, (13, 57))] if bucket is None else [(1, None), (2, None)]:
            args = sample_inputs(model, kind, bucket, batch if kind.startswith("unet") else 1, size=size)
            feeds = dict(zip(graph_inputs(kind, model.config), (a.numpy() for a in args)))  # the runner's arrays
            want, got = plain.run_graph(key, feeds), bound.run_graph(key, feeds)
            assert [g.shape for g in got] == [w.shape for w in want], key
            assert all(np.array_equal(g, w) for g, w in zip(got, want)), key
        kinds.add(kind)
    assert kinds == {"encoder", "encoder_block", "conditioner", "unet_dynamic", "unet"}
    kw = dict(scale=2, steps=2, seed=1, progress=False, sampler="ddim", init="noise")
    images = [_image(13, 11, 0), _image(16, 16, 1)]  # the dynamic U-Net, then the bucket's static one
    got = Upscaler(bound, device="cpu").upscale(images, **kw)
    for g, w in zip(got, Upscaler(plain, device="cpu").upscale(images, **kw)):
        assert g.shape == w.shape and np.array_equal(g, w)


def test_from_pretrained_with_an_engine_backend(built, tmp_path):
    model, folder = built
    up = Upscaler.from_pretrained(folder, backend="onnxruntime")
    assert up.model.config == model.config and up.model.max_scale == model.max_scale
    with pytest.raises(ValueError, match="unknown backend"):
        Upscaler.from_pretrained(folder, backend="openvino")


def test_from_pretrained_builds_a_models_engines_once_in_the_cache(built, tmp_path, monkeypatch):
    model, folder = built
    monkeypatch.setenv("IDM_RT_CACHE", str(tmp_path))
    exported = []
    monkeypatch.setattr(builder, "export_graph", lambda *a: exported.append(a[1]) or export_graph(*a))
    up = Upscaler.from_pretrained(folder.parent / "model", backend="onnxruntime", runner_options={"threads": 1})
    engines = up.model.folder
    assert engines.parent == tmp_path / "engines"
    assert sorted(exported) == ["conditioner", "encoder", "encoder_block", "unet", "unet", "unet_dynamic"]
    manifest = read_manifest(engines)
    assert manifest.complete and manifest.precision == "fp32" and manifest.build_flags["conv"] == "winograd"
    assert [b.name for b in manifest.buckets] == ["256x256_b1-1", "280x280_b1-1"]  # the default buckets
    kw = dict(scale=2, steps=2, seed=5, progress=False, sampler="dpmpp_2m", init="noise")  # the dynamic graph
    got, want = up.upscale(_image(64, 64, 6), **kw), Upscaler(model, tile=0).upscale(_image(64, 64, 6), **kw)
    assert np.abs(got - want).max() < 2e-3
    again = Upscaler.from_pretrained(folder.parent / "model", backend="onnxruntime")
    assert again.model.folder == engines and len(exported) == 6  # reused, nothing exported again


def test_from_pretrained_with_an_engine_backend_refuses_what_it_cannot_build(built, tmp_path, monkeypatch):
    _, folder = built
    monkeypatch.setenv("IDM_RT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tensorrt_build, "missing_requirements", lambda: ["an NVIDIA GPU visible to torch"])
    with pytest.raises(RuntimeError, match="lacks an NVIDIA GPU visible to torch.*backend='onnxruntime'"):
        Upscaler.from_pretrained(folder.parent / "model", backend="tensorrt")
    assert not (tmp_path / "cache").exists()  # refused before exporting anything
    with pytest.raises(ValueError, match="'fp32', 'fp16' or 'int8', not 'bf16'"):
        Upscaler.from_pretrained(folder.parent / "model", backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="convert the checkpoint"):
        Upscaler.from_pretrained(folder.parent / "model", backend="onnxruntime", max_scale=8)
    with pytest.raises(FileNotFoundError, match="no model or engine directory"):
        Upscaler.from_pretrained(tmp_path / "nowhere", backend="onnxruntime")
    with pytest.raises(FileNotFoundError, match="needs both model.safetensors and config.json"):
        Upscaler.from_pretrained(tmp_path, backend="onnxruntime")
    with pytest.raises(ValueError, match="holds fp32 engines, not fp16"):
        Upscaler.from_pretrained(folder, backend="onnxruntime", precision="fp16")
    with pytest.raises(ValueError, match="engines record it when built"):
        Upscaler.from_pretrained(folder, backend="onnxruntime", max_scale=8)
    monkeypatch.setattr(tensorrt_build, "missing_requirements", lambda: [])
    with pytest.raises(ValueError, match="runs on a CUDA device, not cpu"):
        Upscaler.from_pretrained(folder.parent / "model", backend="tensorrt", device="cpu")
    assert not (tmp_path / "cache").exists()


def test_clear_errors_for_missing_directories_and_devices(built, tmp_path):
    _, folder = built
    with pytest.raises(FileNotFoundError, match="not an engine directory"):
        Upscaler.from_engines(tmp_path)
    with pytest.raises(ValueError, match="unknown backend 'tvm'; choose from"):
        load_runner(folder, backend="tvm")
    with pytest.raises(ValueError, match="torch runs a model, not engines"):
        load_runner(folder, backend="torch")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeError, match="no CUDAExecutionProvider here"):
            load_runner(folder, device="cuda")
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(ImportError, match="TensorRT 10"):
            load_runner(folder, backend="tensorrt")


def test_a_tile_beyond_the_dynamic_graphs_reach_is_refused(built):
    _, folder = built  # bucket 32x32: ONNX Runtime's dynamic graph takes tiles up to 64x64
    with pytest.raises(ValueError, match="HR tile of 72x32 .* up to 64x64; use a tile of at most 64"):
        Upscaler.from_engines(folder).upscale(_image(16, 40, 5), scale=2, steps=2, tile=72, progress=False)


def test_run_batched_chunks_and_pads_to_the_bucket_range():
    seen = []

    def run(part):
        seen.append(part["x"][:, 0].tolist())
        return [part["x"] * 10]

    x = torch.arange(5.0).view(5, 1)
    out = run_batched(run, {"x": x}, max_batch=2, min_batch=2)[0]
    assert seen == [[0.0, 1.0], [2.0, 3.0], [4.0, 4.0]]  # last chunk padded by repeating its sample
    assert out.view(-1).tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]


def test_onnxruntime_threads_follow_the_configured_count_unless_given(built):
    """The command lines set the process's threads (--threads, or the CPUs the process may use); ONNX Runtime's own
    default, every core of the machine, ignored both."""
    _, folder = built
    before = torch.get_num_threads()
    try:
        idm_rt.configure_threads(1)
        counts = {key: s.get_session_options().intra_op_num_threads for key, s in load_runner(folder)._sessions.items()}
        assert set(counts.values()) == {1}
        idm_rt.configure_threads(2)
        runner = load_runner(folder, threads=3)
        assert {s.get_session_options().intra_op_num_threads for s in runner._sessions.values()} == {3}
        runner = load_runner(folder)
        assert {s.get_session_options().intra_op_num_threads for s in runner._sessions.values()} == {2}
    finally:
        idm_rt.configure_threads(before)


def test_onnxruntime_runners_in_several_python_threads_leave_torchs_thread_count_as_it_was(built):
    """Runners sample on numpy arrays and never touch torch's thread count (a process-wide pin per runner, saved
    and restored without a lock, once left every later thread at 1)."""
    model, folder = built
    runners = [load_runner(folder) for _ in range(3)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    errors, seen = [], []

    def upscale(runner):
        try:
            for _ in range(3):
                idm_rt.pipeline.super_resolve(
                    runner, np.zeros((1, 3, 16, 16), np.float32), (32, 32), idm_rt.SamplingSettings(steps=2)
                )
        except Exception as e:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(e)

    workers = [threading.Thread(target=upscale, args=(r,)) for r in runners]
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # what a later thread starts with
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        fresh.start()
        fresh.join()
        assert not errors and torch.get_num_threads() == 2 and seen == [2]
    finally:
        torch.set_num_threads(before)


def test_cli_upscales_with_an_engine_directory(built, tmp_path, capsys):
    from PIL import Image

    from idm_rt.cli import main as cli

    model, folder = built
    src = tmp_path / "in.png"
    Image.fromarray((_image(16, 16, 4) * 255).round().astype(np.uint8)).save(src)
    args = ["upscale", str(src), "--scale", "2", "--seed", "0", "--steps", "2"]
    assert cli([*args, "-o", str(tmp_path / "out.png"), "--engines", str(folder)]) == 0
    with Image.open(src) as im:
        want = Upscaler.from_engines(folder).upscale(im, scale=2, seed=0, steps=2, progress=False)
    with Image.open(tmp_path / "out.png") as got:
        assert got.size == (32, 32) and np.array_equal(np.asarray(got), np.asarray(want))
    assert cli([*args, "-o", str(tmp_path / "b.png"), "--engines", str(folder), "--precision", "fp16"]) == 1
    assert "fixed when engines are built" in capsys.readouterr().err
    assert cli([*args, "-o", str(tmp_path / "c.png"), "--engines", str(tmp_path / "absent")]) == 1
    assert "absent" in capsys.readouterr().err and not (tmp_path / "c.png").exists()
    with pytest.raises(SystemExit):
        cli([*args, "-o", str(tmp_path / "d.png"), "--engines", str(folder), "--model", "m"])
    assert cli([*args, "-o", str(tmp_path / "e.png"), "--engines", str(folder), "--backend", "torch"]) == 1
    assert "--backend torch is for --model" in capsys.readouterr().err


def test_cli_backend_builds_the_models_engines_into_the_cache(built, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from idm_rt.cli import main as cli

    _, folder = built
    monkeypatch.setenv("IDM_RT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "in.png"
    Image.fromarray((_image(64, 64, 4) * 255).round().astype(np.uint8)).save(src)
    args = ["upscale", str(src), "--scale", "2", "--seed", "0", "--steps", "2", "--model", str(folder.parent / "model")]
    assert cli([*args, "-o", str(tmp_path / "out.png"), "--backend", "onnxruntime"]) == 0
    (engines,) = (tmp_path / "cache" / "engines").iterdir()
    with Image.open(src) as im:
        want = Upscaler.from_engines(engines).upscale(im, scale=2, seed=0, steps=2, progress=False)
    with Image.open(tmp_path / "out.png") as got:
        assert got.size == (128, 128) and np.array_equal(np.asarray(got), np.asarray(want))
    assert cli([*args, "-o", str(tmp_path / "b.png"), "--backend", "onnxruntime", "--precision", "bf16"]) == 1
    assert "'fp32', 'fp16' or 'int8', not 'bf16'" in capsys.readouterr().err and not (tmp_path / "b.png").exists()


def test_torch_backend_options_are_refused_with_engines(built):
    _, folder = built
    with pytest.raises(ValueError, match=r"fixed when it is built \(this one: fp32\)"):
        Upscaler.from_engines(folder, precision="fp16")
    with pytest.raises(ValueError, match="for the torch backend"):
        Upscaler.from_engines(folder, compile=True)


def test_tile_0_runs_engines_untiled_and_says_when_no_bucket_covers(built):
    _, folder = built
    up = Upscaler.from_engines(folder)
    assert up.upscale(_image(16, 16, 0), scale=2, steps=2, tile=0, progress=False).shape == (32, 32, 3)
    assert up.upscale(_image(16, 32, 0), scale=2, steps=2, tile=0, progress=False).shape == (32, 64, 3)  # reach
    with pytest.raises(ValueError, match="no engine bucket covers an HR tile of 80x32"):
        up.upscale(_image(16, 40, 5), scale=2, steps=2, tile=0, progress=False)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
    reason="checks the message of an ONNX Runtime without CUDA",
)
def test_a_cuda_device_without_cuda_is_refused_before_building(built, tmp_path, monkeypatch):
    _, folder = built
    monkeypatch.setenv("IDM_RT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="ONNX Runtime has no CUDAExecutionProvider here"):
        Upscaler.from_pretrained(folder.parent / "model", backend="onnxruntime", device="cuda")
    assert not (tmp_path / "cache").exists()


def test_missing_or_damaged_engine_files_are_named(built, tmp_path):
    _, folder = built
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    encoder = copy / read_manifest(copy).graphs["encoder"].engine
    encoder.write_bytes(b"\0" * encoder.stat().st_size)  # same size, not a graph
    with pytest.raises(RuntimeError, match="(?s)ONNX Runtime cannot load .*encoder.onnx.*--force"):
        load_runner(copy)
    encoder.unlink()
    with pytest.raises(FileNotFoundError, match="encoder.onnx, listed in .*manifest.json, is missing"):
        Upscaler.from_engines(copy)
    with pytest.raises(FileNotFoundError, match="is an engine directory, not a model"):
        Upscaler.from_pretrained(folder)
    with pytest.raises(
        FileNotFoundError, match="needs both model.safetensors and config.json .it holds: .*manifest.json"
    ):
        idm_rt.load_model(folder)


def test_worker_resources_come_from_the_registry():
    """A service or batch worker takes a GPU for GPU-only backends (tensorrt_host as tensorrt) or a CUDA device,
    and gives its CPUs as threads only to runners that take a count."""
    from idm_rt.backends.registry import runner_threads, worker_gpus

    assert worker_gpus("tensorrt", None) == worker_gpus("tensorrt_host", None) == worker_gpus("torch", "cuda:1") == 1
    assert worker_gpus("onnxruntime", "cpu") == worker_gpus(None, None) == 0
    assert runner_threads("onnxruntime", 2.4) == {"threads": 2} and runner_threads("onnxruntime", 0.2) == {"threads": 1}
    assert all(runner_threads(name, 4) is None for name in ("torch", "tensorrt", None))


def test_training_evaluate_measures_an_engine_runner_as_it_measures_the_torch_model(built):
    """evaluate() hands each model its own kind of array (numpy for a runner, as benchmarks.int8_onnx does), and the
    scores of the engines' images are the torch model's (the same computation)."""
    from idm_rt.training.evaluate import evaluate

    model, folder = built
    image = torch.from_numpy(_image(32, 32, 3)).permute(2, 0, 1).contiguous()
    settings = model.recommended
    ours = evaluate(load_runner(folder), [("a", image)], [2.0], settings)[0]
    reference = evaluate(model, [("a", image)], [2.0], settings)[0]
    assert abs(ours["psnr"] - reference["psnr"]) < 0.05 and ours["psnr"] != ours["psnr_bic"]
