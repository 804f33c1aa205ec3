"""An install without torch: virtual environments made by the test run holding what ``pip install idm-rt`` (and
``idm-rt[serve]``) installs, linked from this environment's installed distributions (:mod:`benchmarks.installs`: the
closure of pyproject.toml's requirements, which leaves torch out), with the checkout on PYTHONPATH and nothing else of
this environment's; ``import torch`` fails there. They run the bundled model from its shipped ONNX graphs and an engine
directory this (torch) environment built, through the Python API, ``python -m idm_rt upscale`` and ``python -m idm_rt
serve`` (one request to 127.0.0.1), with the torch backend's images within 1/255; and the commands that need torch say
so in one line."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import idm_rt
from benchmarks.installs import clean_env, closure, linked_venv, requirements
from idm_rt.build import main as build
from idm_rt.ray_session import free_port

from .helpers import ROOT, TINY_32, perturbed

pytestmark = pytest.mark.slow

SAMPLE = ROOT / "idm_rt" / "samples" / "chelsea_128.png"
TINY_STEPS = 4
# (name, source, image, scale, size (W, H), seed, tile): the bundled model (its shipped graphs there, its weights
# here) and the tiny engines; untiled, at sizes that are no multiple of 8, and in tiles (of the bucket's exact size:
# the tiny engines' static graph, the others on the dynamic one)
CASES = [
    ("bundled_x2", "bundled", "crop", 2.0, None, 0, 0),
    ("bundled_odd", "bundled", "crop", None, (117, 75), 1, 0),
    ("bundled_tiled", "bundled", "sample", 2.0, None, 2, 128),
    ("engines_x2", "engines", "small", 2.0, None, 0, 0),
    ("engines_bucket", "engines", "small", None, (64, 64), 1, 0),
    ("engines_tiled", "engines", "small", 3.3, None, 2, 64),
]


def run_in(python: Path, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def torch_free_venv(folder: Path, *extras: str) -> Path:
    """The python of a venv holding the install of ``idm-rt[extras]``; skipped when this environment lacks part
    of it."""
    try:
        dists = closure(requirements(*extras))
    except LookupError as e:
        pytest.skip(f"this environment cannot make the install without torch: {e}")
    assert "torch" not in dists, "pyproject.toml's requirements bring torch"
    python = linked_venv(folder, dists)
    done = run_in(python, ["-c", "import torch"], folder)
    assert done.returncode == 1 and "No module named 'torch'" in done.stderr, done.stderr
    return python


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """The python of the base install (no extras)."""
    return torch_free_venv(tmp_path_factory.mktemp("torch_free") / "base")


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    """The python of ``idm-rt[serve]``: the base install and Ray Serve."""
    return torch_free_venv(tmp_path_factory.mktemp("torch_free") / "serve", "serve")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The inputs: a crop of the sample, the sample, and a small smooth image (for the tiny engines)."""
    folder = tmp_path_factory.mktemp("inputs")
    sample = Image.open(SAMPLE).convert("RGB")
    sample.save(folder / "sample.png")
    sample.crop((30, 20, 78, 60)).save(folder / "crop.png")  # 48x40
    small = (np.random.default_rng(0).random((5, 6, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((24, 20), Image.BICUBIC).save(folder / "small.png")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, its ONNX Runtime engine directory): a random network, built by this torch environment as
    ``python -m idm_rt.build`` builds (a static 64x64 bucket, Winograd convolutions there, the dynamic U-Net)."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = idm_rt.save_model(perturbed(idm_rt.IDM(TINY_32, max_scale=4.0)), root / "model")
    engines = root / "engines"
    args = ["--engine", "fp32", "--backend", "onnxruntime", "--model", str(model), "--out", str(engines)]
    assert build([*args, "--tile", "64"]) == 0
    return model, engines


@pytest.fixture(scope="module")
def venv_run(venv, work, tiny, tmp_path_factory) -> Path:
    """The outputs of ``tests/torch_free_run.py`` in the base venv: an image per case."""
    out = tmp_path_factory.mktemp("venv_outputs")
    sources = {"bundled": "bundled", "engines": str(tiny[1])}
    cases = [
        {
            "name": name,
            "source": sources[source],
            "image": str(work / f"{image}.png"),
            "scale": scale,
            "size": size,
            "seed": seed,
            "tile": tile,
            "steps": TINY_STEPS if source == "engines" else None,
        }
        for name, source, image, scale, size, seed, tile in CASES
    ]
    spec = out / "spec.json"
    spec.write_text(json.dumps({"cases": cases}))
    done = run_in(venv, [str(ROOT / "tests" / "torch_free_run.py"), str(spec), str(out)], out)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def torch_upscalers(tiny) -> dict[str, idm_rt.Upscaler]:
    """The torch backend here: the bundled model from its weights, the tiny model the engines were built from."""
    return {
        "bundled": idm_rt.Upscaler.from_pretrained(backend="torch"),
        "engines": idm_rt.Upscaler(idm_rt.load_model(tiny[0])),
    }


def torch_image(up: idm_rt.Upscaler, image: Path, **options) -> np.ndarray:
    out = np.asarray(up.upscale(Image.open(image), progress=False, **options))
    assert out.std() > 5, "a flat image: comparing it would prove little"
    return out


def assert_within_one_level(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape and got.dtype == np.uint8, (what, got.shape, want.shape)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, f"{what}: {int(diff.max())}/255 from the torch backend's ({(diff > 1).sum()} pixels)"


def test_the_base_install_has_no_torch(venv_run):
    report = json.loads((venv_run / "report.json").read_text())
    assert not report["torch_importable"] and not report["torch_loaded"]
    assert set(report["backends"].values()) == {"onnxruntime"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_without_torch_the_images_are_the_torch_backends(case, venv_run, work, torch_upscalers):
    name, source, image, scale, size, seed, tile = case
    want = torch_image(
        torch_upscalers[source],
        work / f"{image}.png",
        scale=scale,
        size=size,
        seed=seed,
        tile=tile,
        steps=TINY_STEPS if source == "engines" else None,
    )
    assert_within_one_level(np.load(venv_run / f"{name}.npy"), want, name)


def test_the_command_line_upscales_without_torch(venv, work, tiny, torch_upscalers, tmp_path):
    """The README's main job (here at 2x on a crop, where both backends run untiled) and ``--engines``."""
    for name, extra, up in (
        ("bundled", [], torch_upscalers["bundled"]),
        ("engines", ["--engines", str(tiny[1]), "--steps", str(TINY_STEPS)], torch_upscalers["engines"]),
    ):
        image = work / ("crop.png" if name == "bundled" else "small.png")
        out = tmp_path / f"{name}.png"
        done = run_in(
            venv,
            [
                "-m",
                "idm_rt",
                "upscale",
                str(image),
                "-o",
                str(out),
                "--scale",
                "2",
                "--seed",
                "0",
                "--threads",
                "1",
                *extra,
            ],
            tmp_path,
        )
        assert done.returncode == 0, done.stderr
        steps = TINY_STEPS if name == "engines" else None
        assert_within_one_level(
            np.asarray(Image.open(out)),
            torch_image(up, image, scale=2, seed=0, steps=steps),
            f"upscale {' '.join(extra) or '(bundled)'}",
        )


def test_the_service_answers_without_torch(serve_venv, work, tiny, torch_upscalers, tmp_path):
    """``python -m idm_rt serve --engines DIR`` on a local Ray: one request, then SIGTERM stops it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in clean_env().items() if k != "RAY_ADDRESS"} | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = [
        str(serve_venv),
        "-m",
        "idm_rt",
        "serve",
        "--engines",
        str(tiny[1]),
        "--port",
        str(port),
        "--address",
        "local",
        "--replica-cpus",
        "0.5",
    ]
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 150
            while proc.poll() is None and time.monotonic() < deadline and http(f"{url}/healthz")[0] != 200:
                time.sleep(0.5)
            query = f"scale=2&seed=3&steps={TINY_STEPS}"
            status, body = http(f"{url}/v1/upscale?{query}", (work / "small.png").read_bytes(), timeout=60)
            model = http(f"{url}/v1/model")[1]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    served = (tmp_path / "serve.log").read_text()[-3000:]
    assert status == 200, served
    assert proc.returncode == 0, served
    assert json.loads(model)["backend"] == "onnxruntime"
    assert_within_one_level(
        np.asarray(Image.open(io.BytesIO(body))),
        torch_image(torch_upscalers["engines"], work / "small.png", scale=2, seed=3, steps=TINY_STEPS),
        "serve --engines",
    )


def http(url: str, body: bytes | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET (or a POST of ``body``); (0, b"") when nothing listens yet."""
    req = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def test_what_needs_torch_says_so_in_one_line(venv, venv_run, work, tiny, tmp_path):
    assert (
        "the torch backend needs torch: pip install 'idm-rt[torch]'"
        in json.loads((venv_run / "report.json").read_text())["torch_backend_error"]
    )
    model = str(tiny[0])
    commands = {
        "build": ["-m", "idm_rt.build", "--model", model, "--out", str(tmp_path / "engines")],
        "train": ["-m", "idm_rt.training.train", "--preset", "small", "--out", str(tmp_path / "run")],
        "evaluate": ["-m", "idm_rt.training.evaluate", "--data", "skimage"],
        "convert": ["-m", "idm_rt", "convert", model, str(tmp_path / "converted"), "--max-scale", "4"],
        "torch backend": [
            "-m",
            "idm_rt",
            "upscale",
            str(work / "small.png"),
            "-o",
            str(tmp_path / "o.png"),
            "--scale",
            "2",
            "--backend",
            "torch",
            "--threads",
            "1",
        ],
        "a model to build engines for": [
            "-m",
            "idm_rt",
            "upscale",
            str(work / "small.png"),
            "-o",
            str(tmp_path / "o.png"),
            "--scale",
            "2",
            "--model",
            model,
            "--threads",
            "1",
        ],
        "serve": ["-m", "idm_rt", "serve", "--model", str(tiny[1]), "--backend", "onnxruntime"],
    }
    for what, args in commands.items():
        done = run_in(venv, args, tmp_path, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, (what, done.stderr)
        need = "pip install 'idm-rt[serve]'" if what == "serve" else "needs torch: pip install 'idm-rt[torch]'"
        assert need in lines[0], (what, lines[0])
    assert not (tmp_path / "engines").exists() and not (tmp_path / "run").exists()
    assert not (tmp_path / "converted").exists() and not (tmp_path / "o.png").exists()
