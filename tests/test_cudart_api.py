"""The CUDA runtime API of cuda-python that the tensorrt_host runner uses, checked against NVIDIA's own bindings
without a GPU: the ``cuda-bindings`` wheel (pip download) imports on a machine without a driver, and its calls then
return an error code instead of raising. Every ``cuda...`` name the runner uses, and every one the fake of
tests/fake_cuda.py provides, must exist there; the runner's device check must turn the real bindings' answer on this
machine into its one-line error (or, on a machine with a GPU, pick a device). Needs pip with network access (or the
wheels cached); skips without them."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from . import fake_cuda

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "idm_rt/backends/tensorrt_host.py"
# The oldest release with cuda.bindings (what the gpu extra asks for) and the newest 12.x when this was written.
VERSIONS = ["12.8.0", "12.9.10"]

CHECK = r"""
import json, sys
from cuda.bindings import runtime as rt
from idm_rt.backends.tensorrt_host import CudaRuntime

names = json.loads(sys.argv[1])
owners = [rt, rt.cudaError_t, rt.cudaMemcpyKind]
missing = [n for n in names if not any(hasattr(owner, n) for owner in owners)]
# The runner's calls with arguments of the types it passes (ints for addresses, its stream object): without a
# driver each returns an error code, or raises RuntimeError (12.8), but arguments it cannot take raise TypeError.
stream, kind = rt.cudaStream_t(), rt.cudaMemcpyKind.cudaMemcpyHostToDevice
calls = {"cudaMalloc": (256,), "cudaFree": (0,), "cudaSetDevice": (0,), "cudaGetDevice": (),
         "cudaStreamCreateWithFlags": (rt.cudaStreamNonBlocking,), "cudaStreamSynchronize": (stream,),
         "cudaStreamDestroy": (stream,), "cudaMemcpyAsync": (1 << 20, 2 << 20, 256, kind, stream),
         "cudaGetErrorName": (rt.cudaError_t.cudaErrorNoDevice,)}
rejected = []
for name, args in calls.items():
    try:
        getattr(rt, name)(*args)
    except TypeError as e:
        rejected.append(f"{name}: {e}")
    except RuntimeError:
        pass
try:
    outcome = {"device": CudaRuntime(rt).device(None)}
except RuntimeError as e:
    outcome = {"error": str(e)}
print(json.dumps({"missing": missing, "rejected": rejected, "stream": int(stream), **outcome}))
"""


def _site(version: str, tmp: Path) -> Path:
    """cuda-bindings ``version`` and its dependencies, unpacked (downloaded once into the cache)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = base / "idm_rt-tests" / "cuda-bindings" / version
    if not list(cache.glob("cuda_bindings-*.whl")):
        run = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(cache),
             f"cuda-bindings=={version}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if run.returncode != 0 or not list(cache.glob("cuda_bindings-*.whl")):
            pytest.skip(f"pip could not download cuda-bindings=={version}: {run.stderr.strip()[-300:]}")
    for wheel in cache.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp / "site")
    return tmp / "site"


def _used_names() -> set[str]:
    """Every attribute named ``cuda...`` in the runner's module (the runtime's functions, enums and their members)."""
    tree = ast.parse(RUNNER.read_text())
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("cuda")}


def _fake_names() -> set[str]:
    names = {n for n in vars(fake_cuda.CUDART) if n.startswith("cuda")}
    for enum in ("cudaError_t", "cudaMemcpyKind"):
        names |= set(vars(getattr(fake_cuda.CUDART, enum)))
    return names


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_the_cuda_runtime_calls_used_and_faked_exist_in_cuda_python(version, tmp_path):
    used = _used_names()
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaStreamSynchronize", "cudaMemcpyHostToDevice"} <= used
    assert used <= _fake_names()  # the tests run every call the runner makes through the fake
    site = _site(version, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    run = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(sorted(_fake_names()))],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout)
    assert found["missing"] == [] and found["rejected"] == [] and found["stream"] == 0  # (int(stream): its handle)
    if "error" in found:  # no GPU or no driver here: the runtime's own error, named in one line
        # (12.9.10: cudaErrorInsufficientDriver; 12.8.0 raises RuntimeError: "Failed to dlopen libcuda.so.1", then
        # 'Function "cuInit" not found')
        prefix = "the tensorrt_host backend needs a CUDA device, and the CUDA runtime finds none ("
        assert found["error"].startswith(prefix) and found["error"].endswith(")"), found["error"]
    else:
        assert isinstance(found["device"], int)
