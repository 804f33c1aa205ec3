"""The Triton kernels compiled ahead of time for NVIDIA GPUs (A100's sm_80, H100's sm_90) on this
machine, without one: a representative few of the launches and autotune configs the layer makes, down
to a cubin, with their shared memory against the card's limit. The whole sweep, every specialisation
and config: ``python -m benchmarks.triton_aot`` (benchmarks/results/triton_aot.json)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idm_rt import kernels

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(not kernels.triton_available(), reason="triton is not installed")
def test_each_kernel_compiles_for_sm80_and_sm90_within_the_shared_memory_of_the_card():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # test_kernels sets it for its process
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.triton_aot", "--ci"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    rows = result["rows"]
    assert {(r["kernel"], r["capability"]) for r in rows} == {
        ("_mlp_kernel", 90),
        ("_mlp_kernel", 80),
        ("_map_kernel", 80),
        ("_gather_kernel", 90),
    }
    assert {r["case"]["dtype"] for r in rows} == {"float32", "float16", "bfloat16"}
    for r in rows:
        assert r["ok"] and r["fits"], r
        assert r["shared_bytes"] <= result["shared_limit_bytes"][str(r["capability"])]
    # the fused MLP keeps its hidden activations on chip: it does use shared memory, the gather none
    assert next(r for r in rows if r["kernel"] == "_mlp_kernel")["shared_bytes"] > 0
    assert result["variants"] == 4 * 2 + 4 + 3  # mlp: 3 dtypes + TF32, ReLU or not; map: 4; gather: 3 dtypes


@pytest.mark.skipif(not kernels.triton_available(), reason="triton is not installed")
def test_configs_over_a_cards_shared_memory_are_never_tried():
    """Every config the committed sweep found over an A100's or an H100's shared memory is one the tuning
    run prunes for that dtype (so a GPU never compiles it only to fail loading it)."""
    import torch

    from idm_rt.kernels import triton_implicit as ti

    rows = json.loads((ROOT / "benchmarks/results/triton_aot.json").read_text())["rows"]
    over = [r for r in rows if r["ok"] and not r["fits"]]
    assert over, "the sweep recorded no config over a limit: the rule may be obsolete"
    for r in over:
        config = getattr(ti, r["kernel"]).configs[r["config"]]
        x = torch.zeros(1, dtype=getattr(torch, r["case"]["dtype"]))
        assert ti._over_shared_memory(config, {"x_ptr": x}), r
    assert all(r["ok"] for r in rows)
