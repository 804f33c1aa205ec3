"""The GPU side of the runtime without torch, on a CPU: the TensorRT runner and ONNX Runtime's CUDA path on CuPy
arrays, with fakes for the device calls only (tests/fake_cuda.py: CuPy's memory, streams, events and graphs,
TensorRT's engines, ONNX Runtime's CUDA provider) and the real runners, sampling loop and ONNX graphs. Images are
compared with ONNX Runtime's on the CPU, which runs the same graphs."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import idm_rt
from idm_rt import Upscaler
from idm_rt.backends import load_runner
from idm_rt.backends.engine_dir import MANIFEST_NAME, graph_inputs, graph_key, read_manifest
from idm_rt.backends.onnxruntime import cuda_arrays
from idm_rt.backends.tensorrt import TensorRTRunner
from idm_rt.backends.tensorrt_host import TensorRTHostRunner
from idm_rt.build import main
from idm_rt.export import tensorrt_build
from idm_rt.export.graphs import sample_inputs

from . import fake_cuda
from .fake_cuda import FAKE_TENSORRT_VERSION, installed
from .helpers import ROOT, TINY_32

pytest.importorskip("onnxruntime")
# The module fixture exports and "builds" a directory (about 15 s).
pytestmark = pytest.mark.slow

KW = fake_cuda.main_job()[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(model, engine directory built for TensorRT: fake_cuda's plans of the exported graphs, buckets 32x32 of
    batches 1 to 2)."""
    root = tmp_path_factory.mktemp("tensorrt")
    torch.manual_seed(0)
    model = idm_rt.IDM(TINY_32, max_scale=4.0).eval()
    idm_rt.save_model(model, root / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tensorrt_build, "missing_requirements", lambda: [])
        mp.setattr(tensorrt_build, "identity", lambda: {"tensorrt": FAKE_TENSORRT_VERSION, "gpu": "none (fake)"})
        mp.setattr(tensorrt_build, "build_engine", fake_cuda.fake_build_engine)
        assert (
            main(
                [
                    "--engine",
                    "fp32",
                    "--backend",
                    "tensorrt",
                    "--model",
                    str(root / "model"),
                    "--out",
                    str(root / "engines"),
                    "--tile",
                    "32",
                    "--batch",
                    "1,2",
                ]
            )
            == 0
        )
    return model, root / "engines"


def _images():
    rng = np.random.default_rng(0)
    # two of the bucket's size (its static U-Net at batch 2), one smaller (the dynamic one), one tiled (KW's tile)
    return [rng.random(size, dtype=np.float32) for size in [(16, 16, 3), (16, 16, 3), (13, 11, 3), (16, 24, 3)]]


@pytest.fixture(scope="module")
def reference(built):
    """The images ONNX Runtime gives on the CPU, on numpy arrays; most of their values unclipped, so that they
    tell images apart."""
    images = Upscaler.from_engines(built[1], "cpu", "onnxruntime").upscale(_images(), **KW)
    assert all(((0 < im) & (im < 1)).mean() > 0.5 for im in images)
    return images


def _close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.abs(g - w).max() < 1e-5


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_tensorrt_runner_on_cupy_arrays_gives_onnx_runtimes_images(built, reference, cuda_graph):
    with installed() as state:
        assert cuda_arrays().__name__ == "array_api_compat.cupy"
        up = Upscaler.from_engines(built[1], runner_options={"cuda_graph": cuda_graph})
        _close(up.upscale(_images(), **KW), reference)
        _close(up.upscale(_images(), **KW), reference)  # again: replays of graphs captured in the first call
        captures = [e for e in state.log if e[0] == "begin_capture"]
    runner = up.model
    assert runner.device == idm_rt.devices.Device("cuda", 0)
    if cuda_graph:  # one graph per batch size seen on the bucket's U-Net: 2 (the two 16x16 images) and 1 (the tiles)
        assert sorted(runner._graphs) == [("unet/32x32_b1-2", 1), ("unet/32x32_b1-2", 2)]
        assert len(captures) == 2
    else:
        assert captures == [] and runner._graphs == {}


def test_the_fakes_catch_a_runner_that_does_not_order_its_streams(built, monkeypatch):
    """What the test above leans on: TensorRT's work queued before the runner's stream waited for the caller's writes
    is a race (raised), and outputs read before the caller's stream waited for TensorRT's are unwritten (NaN)."""
    with installed():
        runner = load_runner(built[1])
        wait = runner._cuda.wait
        monkeypatch.setattr(runner._cuda, "wait", lambda waiter, waited: None)
        with pytest.raises(AssertionError, match="before it waited for the current stream's writes: a race"):
            Upscaler(runner, device=runner.device).upscale(_images()[0], **KW)
        monkeypatch.setattr(
            runner._cuda, "wait", lambda waiter, waited: waiter is runner._stream and wait(waiter, waited)
        )
        with pytest.raises(RuntimeError, match="NaN"):
            Upscaler(runner, device=runner.device).upscale(_images()[0], **KW)


def _unet_inputs(model, runner, batch: int) -> dict:
    """Inputs of the bucket's U-Net for ``batch`` samples, as the runner's arrays."""
    bucket = runner.buckets[0]
    args = sample_inputs(model, "unet", bucket, batch)
    return dict(zip(graph_inputs("unet", model.config), (runner.asarray(a.numpy()) for a in args)))


def test_views_are_bound_through_dense_aligned_copies(built):
    """Inputs that are strided views or start off TensorRT's 256-byte alignment (the fake engine refuses such
    addresses, as TensorRT does) give what dense copies of them give."""
    model, folder = built
    with installed():
        runner = load_runner(folder)
        key = "unet/32x32_b1-2"
        dense = _unet_inputs(model, runner, 2)
        xp = runner._cuda.xp
        wide = {k: xp.concat([v, v], axis=-1) if v.ndim == 4 else v for k, v in dense.items()}
        strided = {k: v[..., : v.shape[-1] // 2] if v.ndim == 4 else v for k, v in wide.items()}
        shifted = {k: xp.concat([v[:1], v])[1:] if v.ndim == 1 else v for k, v in dense.items()}  # g, 4 bytes in
        assert any(s.__cuda_array_interface__["strides"] is not None for s in strided.values())
        assert shifted["g"].__cuda_array_interface__["data"][0] % 256
        want = runner.run_graph(key, dense)[0].get()
        assert np.isfinite(want).all()
        for inputs in (strided, shifted):
            assert np.array_equal(runner.run_graph(key, inputs)[0].get(), want)


def test_a_replayed_graph_gives_each_call_outputs_of_its_own(built):
    """A graph's outputs are its static buffers, which the next replay overwrites: each call's are copied out; a
    replay with new inputs gives what a plain run gives."""
    model, folder = built
    key = "unet/32x32_b1-2"
    with installed() as state:
        graphed, plain = load_runner(folder, cuda_graph=True), load_runner(folder)
        first = _unet_inputs(model, graphed, 1)
        second = dict(first, x_t=first["x_t"] * 2.0)
        a = graphed.run_graph(key, first)[0]  # run, then captured
        a_host = a.get()
        b = graphed.run_graph(key, second)[0]  # replayed
        assert [e[0] for e in state.log].count("begin_capture") == 1 and state.log[-2][1] == "graph of 1 ops"
        assert np.array_equal(a.get(), a_host) and not np.array_equal(b.get(), a_host)
        assert np.array_equal(b.get(), plain.run_graph(key, second)[0].get())


def test_shapes_outside_an_engines_profile_are_named(built):
    model, folder = built
    with installed():
        runner = load_runner(folder)
        with pytest.raises(
            ValueError,
            match=r"unet/32x32_b1-2: input \w+ of shape \(3,[^)]*\) is outside what its "
            r"engine was built for, \(1,[^)]*\) to \(2,[^)]*\)",
        ):
            runner.run_graph("unet/32x32_b1-2", _unet_inputs(model, runner, 3))


def test_a_second_gpu_runs_everything_there(built, reference):
    """cuda:1: the runner's arrays, engines and stream are on device 1, and the sampling loop runs with it current (the
    fake, like CuPy, refuses to compute on arrays of a device other than the current one)."""
    with installed(devices=2):
        up = Upscaler.from_engines(built[1], "cuda:1", runner_options={"cuda_graph": True})
        assert up.model.asarray(np.zeros(2, np.float32)).device.id == 1
        assert {e.device for e in up.model._engines.values()} == {1}
        _close(up.upscale(_images(), **KW), reference)


def test_onnx_runtime_on_cuda_without_torch_keeps_its_arrays_in_cupy(built, reference):
    """ONNX Runtime's CUDA path picks CuPy when torch is absent and binds device memory (the fake provider checks every
    address it is given is live memory of the device); torch's arrays where torch is installed."""
    assert cuda_arrays().__name__ == "array_api_compat.torch"
    with installed():
        up = Upscaler.from_engines(built[1], "cuda", "onnxruntime")
        assert up.model._cuda.__name__ == "array_api_compat.cupy"
        _close(up.upscale(_images(), **KW), reference)


def test_clear_errors_where_the_tensorrt_runner_cannot_run(built, tmp_path):
    _, folder = built
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    with installed() as state:
        with pytest.raises(ValueError, match="runs on a CUDA device, not cpu"):
            load_runner(folder, device="cpu")
        with pytest.raises(ValueError, match="there is no CUDA device cuda:3; CuPy finds 1"):
            load_runner(folder, device="cuda:3")
        state.devices = 0
        with pytest.raises(RuntimeError, match="needs a CUDA device, and CuPy finds none"):
            load_runner(folder)
        state.devices = 1
        manifest = json.loads((copy / MANIFEST_NAME).read_text())
        manifest["identity"]["tensorrt"] = "10.0.1"
        (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
        with pytest.raises(RuntimeError, match="built with TensorRT 10.0.1, this is 10.9.0.34; rebuild"):
            load_runner(copy)
        manifest["identity"]["tensorrt"] = FAKE_TENSORRT_VERSION
        (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
        plan = copy / read_manifest(copy).graphs["encoder"].engine
        plan.write_bytes(b"\0" * plan.stat().st_size)
        with pytest.raises(RuntimeError, match="could not deserialize tensorrt/encoder.plan"):
            load_runner(copy)
        with fake_cuda.absent("cupy"):
            with pytest.raises(
                ImportError, match=r"the tensorrt backend needs torch or cupy: pip install 'idm-rt\[gpu\]'"
            ):
                load_runner(folder, "tensorrt")  # (by default, tensorrt_host: see below)


def test_the_gpu_path_runs_where_torch_cannot_be_imported(built, reference, tmp_path):
    """A process in which ``import torch`` fails (each attempt recorded) upscales with the TensorRT runner (CUDA
    graphs on) and with ONNX Runtime on "cuda", on fake CuPy arrays, with the tensorrt_host runner (numpy arrays,
    fake cuda-python), and on the CPU: the images of this process's ONNX Runtime, no torch module loaded, no import of
    one tried."""
    run = subprocess.run(
        [sys.executable, "-m", "tests.fake_cuda", str(built[1]), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == {"modules": [], "attempts": [], "launches": report["launches"]} and report["launches"] > 0
    images = np.load(tmp_path / "images.npz")
    image, kw = fake_cuda.main_job()
    want = Upscaler.from_engines(built[1], "cpu", "onnxruntime").upscale(image, **kw)
    for name in ("tensorrt", "tensorrt_host", "onnxruntime_cuda", "onnxruntime_cpu"):
        _close([images[name]], [want])


# -- tensorrt_host: numpy arrays, device memory and the stream from cuda-python ------------------------------------


def _host_runner(folder, **kw):
    return load_runner(folder, "tensorrt_host", **kw)


def test_tensorrt_host_runner_gives_onnx_runtimes_images_on_numpy_arrays(built, reference):
    with installed() as state:
        up = Upscaler.from_engines(built[1], backend="tensorrt_host")
        assert isinstance(up.model, TensorRTHostRunner) and up.model.device == idm_rt.devices.Device("cuda", 0)
        assert isinstance(up.model.asarray(np.zeros(2, np.float32)), np.ndarray)
        _close(up.upscale(_images(), **KW), reference)
        allocated = len(state.allocations)
        _close(up.upscale(_images(), **KW), reference)
        assert len(state.allocations) == allocated  # the buffers of the first call, reused


def _buffer_bytes(runner, key: str) -> dict[str, int]:
    """Bytes of device memory behind each tensor of graph ``key`` (the fake's record of cudaMalloc)."""
    return {name: fake_cuda.STATE.allocations[address].nbytes for name, address in runner._graphs[key][1].items()}


def test_tensorrt_host_buffers_are_sized_for_the_manifests_largest_tile_and_batch(built):
    """Each graph's buffers, allocated on its first call, hold its largest input and output: for the U-Net, the
    largest batch at the bucket's size (static graph) or at the largest bucket extents (dynamic graph), whatever the
    size of the call that allocated them."""
    model, folder = built
    manifest = read_manifest(folder)
    bucket = manifest.buckets[0]
    with installed():
        runner = _host_runner(folder)
        key = graph_key("unet", bucket)
        runner.run_graph(key, _unet_inputs(model, runner, 1))  # batch 1 of 1..2
        sizes = _buffer_bytes(runner, key)
        n = bucket.max_batch
        assert sizes["x_t"] == sizes["eps"] == n * 3 * bucket.height * bucket.width * 4  # float32 RGB
        assert sizes["g"] == n * 4
        runner._prepared("unet_dynamic")
        sizes = _buffer_bytes(runner, "unet_dynamic")
        n = max(b.max_batch for b in manifest.buckets)
        height, width = max(b.height for b in manifest.buckets), max(b.width for b in manifest.buckets)
        assert sizes["x_t"] == sizes["eps"] == n * 3 * height * width * 4


def test_tensorrt_host_copies_in_runs_copies_out_and_waits_on_one_stream(built, monkeypatch):
    """A call queues its inputs' copies, the engine and its outputs' copies on the runner's stream, in that order, and
    synchronises it before the outputs are read; without the wait they would be unwritten (NaN in the fake). A failed
    launch still waits for the copies queued before it."""
    model, folder = built
    key = "unet/32x32_b1-2"
    with installed() as state:
        runner = _host_runner(folder)
        inputs = {k: v.get() for k, v in _unet_inputs(model, load_runner(folder), 2).items()}
        want = load_runner(folder).run_graph(key, _unet_inputs(model, load_runner(folder), 2))[0].get()
        state.log.clear()
        got = runner.run_graph(key, inputs)[0]
        assert isinstance(got, np.ndarray) and np.array_equal(got, want)
        stream = int(runner._stream)
        calls = [e for e in state.log if e[0] != "cudaMalloc"]
        assert [e[0] for e in calls] == ["run"] * (len(inputs) + 2) + ["synchronize"]
        assert [e[1] for e in calls[:-1]] == (
            ["copy to the device"] * len(inputs) + [calls[len(inputs)][1]] + ["copy to the host"]
        )
        assert calls[len(inputs)][1].endswith(" run") and {e[-1] for e in calls} == {stream}
        monkeypatch.setattr(fake_cuda.CUDART, "cudaStreamSynchronize", lambda stream: (fake_cuda._SUCCESS,))
        assert np.isnan(runner.run_graph(key, inputs)[0]).all()
        monkeypatch.undo()
        ctx = runner._graphs[key][0]
        monkeypatch.setattr(ctx, "execute_async_v3", lambda handle: False)
        with pytest.raises(RuntimeError, match="TensorRT failed to run unet/32x32_b1-2"):
            runner.run_graph(key, inputs)
        assert state.log[-1] == ("synchronize", stream) and not runner._stream.pending  # the copies in done first


def test_tensorrt_host_names_shapes_outside_the_profile_before_copying(built):
    model, folder = built
    with installed() as state:
        runner = _host_runner(folder)
        inputs = {k: v.get() for k, v in _unet_inputs(model, load_runner(folder), 3).items()}
        state.log.clear()
        with pytest.raises(
            ValueError,
            match=r"unet/32x32_b1-2: input \w+ of shape \(3,[^)]*\) is outside what its "
            r"engine was built for, \(1,[^)]*\) to \(2,[^)]*\)",
        ):
            runner.run_graph("unet/32x32_b1-2", inputs)
        assert not [e for e in state.log if e[0] == "run"]


def test_tensorrt_host_on_a_second_gpu_and_its_memory_freed_with_it(built, reference):
    """cuda:1: engines, stream and memory on device 1 (the fake checks each address and stream against the current
    device); the memory and stream freed when the runner is collected."""
    with installed(devices=2) as state:
        up = Upscaler.from_engines(built[1], "cuda:1", "tensorrt_host")
        assert {e.device for e in up.model._engines.values()} == {1}
        _close(up.upscale(_images()[2:3], **KW), reference[2:3])
        assert state.allocations
        del up
        gc.collect()
        assert state.allocations == {}


def test_clear_errors_where_the_tensorrt_host_runner_cannot_run(built, monkeypatch):
    _, folder = built
    with installed() as state:
        with pytest.raises(ValueError, match="the tensorrt_host backend runs on a CUDA device, not cpu"):
            _host_runner(folder, device="cpu")
        with pytest.raises(ValueError, match="there is no CUDA device cuda:3; the CUDA runtime finds 1"):
            _host_runner(folder, device="cuda:3")
        state.devices = 0
        with pytest.raises(
            RuntimeError,
            match=r"needs a CUDA device, and the CUDA runtime finds none "
            r"\(cudaErrorNoDevice\)",
        ):
            _host_runner(folder)
        state.devices = 1
        monkeypatch.setattr(
            fake_cuda.CUDART, "cudaMalloc", lambda n: (fake_cuda._CUDART_ERRORS.cudaErrorInvalidValue, 0)
        )
        runner = _host_runner(folder)
        with pytest.raises(RuntimeError, match="CUDA cudaMalloc failed: cudaErrorInvalidValue"):
            runner.run_graph("conditioner", {"cond": np.zeros((1, 3, 8, 8), np.float32), "p": np.zeros(1, np.float32)})
        for absent, message in (
            ("cuda", r"needs cuda.bindings: pip install 'cuda-python>=12.8,<13'"),
            ("tensorrt", r"needs tensorrt: pip install 'idm-rt\[gpu\]'"),
        ):
            with fake_cuda.absent(absent), pytest.raises(ImportError, match=f"the tensorrt_host backend {message}"):
                _host_runner(folder)


def test_a_tensorrt_directory_runs_on_tensorrt_host_by_default_without_torch_or_cupy(built):
    _, folder = built
    with installed():
        assert isinstance(load_runner(folder), TensorRTRunner)
        with fake_cuda.absent("cupy"):
            assert isinstance(load_runner(folder), TensorRTHostRunner)
            assert isinstance(load_runner(folder, "tensorrt_host"), TensorRTHostRunner)
            with pytest.raises(ImportError, match="the tensorrt backend needs torch or cupy"):
                load_runner(folder, "tensorrt")  # asked for by name: no fallback


def test_the_upscale_command_runs_a_tensorrt_directory_without_torch_or_cupy(built, tmp_path):
    """``python -m idm_rt upscale IN -o OUT --engines DIR``, no --backend or --device, with neither torch nor CuPy: the
    tensorrt_host runner on cuda, the PNG of ONNX Runtime's on the CPU within one level."""
    from PIL import Image

    from idm_rt.cli import main as cli

    _, folder = built
    Image.fromarray((fake_cuda.main_job()[0] * 255).round().astype(np.uint8)).save(tmp_path / "in.png")
    common = [str(tmp_path / "in.png"), "--scale", "2", "--steps", "2", "--seed", "3", "--tile", "32"]
    common += ["--engines", str(folder)]
    cpu = ["-o", str(tmp_path / "cpu.png"), "--backend", "onnxruntime", "--device", "cpu"]
    assert cli(["upscale", *common, *cpu]) == 0
    with installed() as state:
        with fake_cuda.absent("cupy"):
            assert cli(["upscale", *common, "-o", str(tmp_path / "gpu.png")]) == 0
            assert any(e[0] == "cudaMalloc" for e in state.log)  # (the fake's cuda-python ran it)
    got, want = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=np.int16) for n in ("gpu", "cpu"))
    assert got.shape == want.shape == (32, 48, 3) and np.abs(got - want).max() <= 1
