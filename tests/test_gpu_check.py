"""The engine section of ``benchmarks/gpu_check.py`` dry-run on the CPU with ONNX Runtime's CPU
provider standing in for the GPU backends (the GPU run itself needs an NVIDIA GPU)."""

import time

import idm_rt

from benchmarks import gpu_check

from .conftest import TINY


def test_engine_section_builds_checks_and_times_each_variant(monkeypatch):
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_check, "engine_variants", lambda: [("onnxruntime", "fp32", {"threads": 1})])

    def wall_ms(fn, reps, warmup=0):
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)

    monkeypatch.setattr(gpu_check, "median_ms", wall_ms)
    results = {"checks": [], "engines": []}
    model = idm_rt.IDM(TINY, max_scale=4.0).eval()
    gpu_check.check_engines(results, model, 32, 1)
    names = [c["name"] for c in results["checks"]]
    assert all(c["ok"] for c in results["checks"]), results["checks"]
    # encoder, conditioner and dynamic U-Net at two sizes each, the bucket's U-Net at batch 1
    assert sum("(export.parity)" in n for n in names) == 7 and any("image vs torch backend" in n for n in names)
    assert [r["variant"] for r in results["engines"]] == ["onnxruntime fp32"] and results["engines"][0]["ms"] > 0
    assert "| 32 | onnxruntime fp32 |" in gpu_check.markdown({**results, "device": "cpu", "torch": "", "triton": "",
                                                               "preset": "tiny", "levels": [], "unet": [], "image": []})
