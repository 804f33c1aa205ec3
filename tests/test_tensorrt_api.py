"""The TensorRT Python API this project uses, checked against NVIDIA's own bindings of every accepted major
without a GPU: the ``tensorrt-cu12-bindings`` wheel (pip download, no dependencies) imports with stub
libraries standing in for libnvinfer, libnvinfer_plugin and libnvonnxparser (its only imports from them
are nine C entry points; the classes, methods and enums are the bindings' own), and every attribute the
runner and the builder use must exist there. Needs pip with network access (or the wheels cached) and a
C compiler; skips without them."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from idm_rt.backends import tensorrt as trt_backend

ROOT = Path(__file__).resolve().parent.parent
USERS = [
    ROOT / f"{module}.py"
    for module in ("idm_rt/backends/tensorrt", "idm_rt/backends/tensorrt_host", "export/tensorrt_build")
]
# The oldest and newest 10.x and the newest 11.x on the package index when this was written.
VERSIONS = ["10.0.1", "10.16.1.11", "11.4.0.106"]
# Everything the runner and the builder call, by owner, written from the TensorRT Python API documentation;
# "name(arg)" also checks that the method takes a keyword argument of that name.
API = {
    "": [
        "Builder",
        "OnnxParser",
        "Runtime",
        "Logger",
        "BuilderFlag",
        "MemoryPoolType",
        "NetworkDefinitionCreationFlag",
        "TensorIOMode",
        "float32",
        "float16",
        "int32",
        "int64",
        "__version__",
    ],
    "Logger": ["WARNING"],
    "BuilderFlag": ["TF32"],
    "MemoryPoolType": ["WORKSPACE"],
    "NetworkDefinitionCreationFlag": ["STRONGLY_TYPED"],
    "TensorIOMode": ["INPUT"],
    "Builder": ["create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network"],
    "OnnxParser": ["parse_from_file", "get_error", "num_errors"],
    "IBuilderConfig": [
        "set_memory_pool_limit",
        "clear_flag",
        "add_optimization_profile",
        "create_timing_cache",
        "set_timing_cache(ignore_mismatch)",
        "get_timing_cache",
    ],
    "IOptimizationProfile": ["set_shape"],
    "ITimingCache": ["serialize"],
    "Runtime": ["deserialize_cuda_engine"],
    "ICudaEngine": [
        "num_io_tensors",
        "get_tensor_name",
        "get_tensor_mode",
        "get_tensor_dtype",
        "get_tensor_profile_shape",
        "create_execution_context",
    ],
    "IExecutionContext": ["set_input_shape", "set_tensor_address", "get_tensor_shape", "execute_async_v3"],
}
# Attribute names in those modules that TensorRT classes happen to have too, used there on other objects.
NOT_TENSORRT = {
    "levels",
    "precision",  # the build options' (tensorrt_build.manifest_flags, write_engine)
    "name",
    "shape",
    "dtype",
    "device",
    "index",
    "type",
    "split",
    "get",
    "items",
    "engine",
    "exists",
    "read_bytes",
    "write_bytes",
    "config",
    "backend",
    "append",
    "clone",
    "node",
    "itemsize",
    "nbytes",
    "data",
    "update",
}  # (numpy's arrays, dtypes and ctypes; dicts)

CHECK = r"""
import json, sys
import tensorrt_bindings as trt
api = json.loads(sys.argv[1])
missing = []
for owner, names in api.items():
    obj = getattr(trt, owner) if owner else trt
    for name in names:
        attr, _, kw = name.partition("(")
        if not hasattr(obj, attr):
            missing.append(f"{owner}.{attr}")
        elif kw and kw.rstrip(")") + ":" not in (getattr(obj, attr).__doc__ or ""):
            missing.append(f"{owner}.{attr} keyword {kw.rstrip(')')}")
names = set()
for value in vars(trt).values():
    if isinstance(value, type):
        names |= {n for n in dir(value) if not n.startswith("_")}
print(json.dumps({"version": trt.__version__, "missing": missing, "names": sorted(names)}))
"""

STUB = "\n".join(
    f"void *{name}(void) {{ return 0; }}"
    for name in (
        "createInferBuilder_INTERNAL",
        "createInferRefitter_INTERNAL",
        "createInferRuntime_INTERNAL",
        "createNvOnnxParserRefitter_INTERNAL",
        "createNvOnnxParser_INTERNAL",
        "getBuilderPluginRegistry",
        "getNvOnnxParserVersion",
        "getPluginRegistry",
        "initLibNvInferPlugins",
    )
)


def _cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "idm_rt-tests" / "tensorrt-bindings"


def _bindings(version: str, tmp: Path) -> Path:
    """The unpacked bindings wheel of ``version`` (downloaded once into the cache)."""
    cache = _cache() / version
    wheels = list(cache.glob("*.whl"))
    if not wheels:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "-d",
                str(cache),
                f"tensorrt-cu12-bindings=={version}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        wheels = list(cache.glob("*.whl"))
        if run.returncode != 0 or not wheels:
            pytest.skip(f"pip could not download tensorrt-cu12-bindings=={version}: {run.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(tmp / "site")
    return tmp / "site"


def _stubs(major: str, tmp: Path) -> Path:
    """Empty libnvinfer, libnvinfer_plugin and libnvonnxparser of ``major`` (their sonames)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the stub libraries")
    src, out = tmp / "stub.c", tmp / "stubs"
    src.write_text(STUB + "\n")
    out.mkdir()
    for lib in ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser"):
        name = f"{lib}.so.{major}"
        subprocess.run(
            [compiler, "-shared", "-fPIC", f"-Wl,-soname,{name}", "-o", str(out / name), str(src)],
            check=True,
            capture_output=True,
        )
    return out


def _used_attributes() -> set[str]:
    names = set()
    for path in USERS:
        names |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
    return names


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_every_tensorrt_attribute_used_exists_in_the_bindings(version, tmp_path):
    major = version.split(".")[0]
    assert int(major) in trt_backend.TENSORRT_MAJORS
    site, stubs = _bindings(version, tmp_path), _stubs(major, tmp_path)
    env = {**os.environ, "LD_LIBRARY_PATH": str(stubs), "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(API)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout)
    assert found["version"] == version
    assert found["missing"] == []
    listed = {name.partition("(")[0] for names in API.values() for name in names}
    # every method or property of a TensorRT class that the two modules use is one API lists (and so checked)
    assert (_used_attributes() & set(found["names"])) - listed - NOT_TENSORRT == set()
    assert listed <= _used_attributes()  # and API lists nothing they no longer use


@pytest.mark.parametrize(
    "version,ok",
    [("10.0.1", True), ("10.16.1.11", True), ("11.4.0.106", True), ("9.3.0", False), ("12.0.0", False), ("rc", False)],
)
def test_import_tensorrt_accepts_the_majors_it_is_written_for(version, ok, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    if ok:
        assert trt_backend.import_tensorrt().__version__ == version
    else:
        with pytest.raises(ImportError, match=r"written for TensorRT 10\.x or 11\.x"):
            trt_backend.import_tensorrt()
