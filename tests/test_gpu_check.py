"""The engine section of ``python -m benchmarks.gpu_check`` dry-run on the CPU, with ONNX Runtime's CPU
provider standing in for the GPU backends and wall-clock time for CUDA events (the GPU run itself needs
an NVIDIA GPU)."""

import time

import pytest

import idm_rt
from benchmarks.gpu.engines import check_engines
from benchmarks.gpu.report import markdown

from .helpers import TINY


def wall_ms(fn, reps, warmup=0):
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


@pytest.mark.slow
def test_engine_section_builds_checks_and_times_each_variant():
    results = {"checks": [], "engines": []}
    model = idm_rt.IDM(TINY, max_scale=4.0).eval()
    check_engines(results, model, 32, 1, device="cpu", variants=[("onnxruntime", "fp32", {"threads": 1})],
                  timer=wall_ms)
    names = [c["name"] for c in results["checks"]]
    assert all(c["ok"] for c in results["checks"]), results["checks"]
    # the encoder's two graphs, the conditioner and the dynamic U-Net at two sizes each, the bucket's U-Net at batch 1
    assert sum("(export.parity)" in n for n in names) == 9
    assert "onnxruntime fp32: 32x32 output vs torch backend (max abs)" in names  # the bucket's static graph
    assert "onnxruntime fp32: 26x22 output vs torch backend (max abs)" in names  # the dynamic graph
    assert [r["variant"] for r in results["engines"]] == ["onnxruntime fp32"] and results["engines"][0]["ms"] > 0
    assert "| 32 | onnxruntime fp32 |" in markdown({**results, "device": "cpu", "torch": "", "triton": "",
                                                    "preset": "tiny", "levels": [], "unet": [], "image": []})
