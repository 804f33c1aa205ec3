"""``python -m benchmarks.gpu_check --dry-run``: every section's plumbing on the CPU at tiny sizes, each in
its own process as on a GPU (the kernels under Triton's interpreter, CUDA graphs off, ONNX Runtime's CPU
provider for the engines), so the GPU run cannot fail on plumbing; and how a failing variant is recorded."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.gpu.common import Run
from benchmarks.gpu_check import SECTIONS, verdict

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_dry_run_runs_every_section_and_writes_a_complete_verdict(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", str(tmp_path), "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "plan (expected seconds" in run.stdout
    results = json.loads((tmp_path / "gpu_check_cpu_dry_run.json").read_text())
    assert results["verdict"] == "PASS"
    assert list(results["sections"]) == list(SECTIONS)
    assert all(s["status"] == "ok" and s["wall_s"] > 0 for s in results["sections"].values())
    assert {v["section"] for v in results["variants"]} == set(SECTIONS)
    assert all(v["status"] == "ok" for v in results["variants"]), results["variants"]
    names = [c["name"] for c in results["checks"]]
    assert sum("(config " in n for n in names) == 3  # a kernel case per config index 0, 1, 2
    fp32 = [c for c in results["checks"] if "budget" in c]  # float32 checks carry their derived TF32 budget
    assert len(fp32) == 5 and all(c["budget"]["errors"]["nearest"]["a"] > 0 for c in fp32)
    assert sum("(export.parity)" in n for n in names) == 9  # encoder x2, its blocks x2, conditioner x2, U-Nets x3
    assert any("compiled + CUDA graph fp16" in n for n in names)
    unet = {r["variant"] for r in results["unet"]}
    assert {"release eager fp32", "ours eager fp32", "ours CUDA graph fp16", "ours compile + CUDA graph fp16"} <= unet
    image = {r["variant"] for r in results["image"]}
    assert {"release eager fp32", "ours graphed DDIM fp16", "Upscaler release eager fp32"} <= image
    assert results["engines"][0]["variant"] == "onnxruntime fp32"
    md = (tmp_path / "gpu_check_cpu_dry_run.md").read_text()
    assert "**Verdict: PASS**" in md and "| 16 | release eager fp32 | " in md and " 1.00x |" in md


def test_a_failing_variant_is_recorded_with_its_traceback_and_the_section_goes_on(tmp_path):
    path = tmp_path / "r.json"
    results = {"checks": [], "variants": []}
    run = Run(path, results, "demo", None, True, "dry", 16, 1, time.monotonic() + 60)

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access")

    assert run.variant("broken", broken) is None
    assert run.variant("fine", lambda: 7) == 7
    assert run.variant("too long", lambda: 7, expected_s=120) is None
    saved = json.loads(path.read_text())["variants"]
    assert [v["status"] for v in saved] == ["failed", "ok", "skipped"]
    assert "illegal memory access" in saved[0]["error"] and "in broken" in saved[0]["traceback"]
    assert "expected 120 s" in saved[2]["reason"]
    assert verdict({"checks": [], "variants": saved, "sections": {}}).startswith("INCOMPLETE")
    assert verdict({"checks": [{"ok": False}], "variants": [], "sections": {}}).startswith("FAIL")
    assert verdict({"checks": [{"ok": True}], "variants": saved[1:2], "sections": {"demo": {"status": "ok"}}}) == "PASS"


def test_without_a_gpu_it_says_so_and_writes_nothing(tmp_path, capsys):
    import torch

    from benchmarks.gpu_check import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main([str(tmp_path / "out")]) == 2
    assert "no CUDA device visible to torch" in capsys.readouterr().err and not (tmp_path / "out").exists()
