"""Benchmarks write to a scratch folder unless told to replace the committed results (--replace): a run to try
something left the README's numbers overwritten."""

from __future__ import annotations

import importlib
import json
import pkgutil

import pytest
import torch

import benchmarks
import idm_rt
from benchmarks import common

from .helpers import TINY, make_folder

# Each module with a command line that writes results; gpu_check writes only into the folder it is given (common and
# installs are helpers).
WRITERS = sorted(
    m.name
    for m in pkgutil.iter_modules(benchmarks.__path__)
    if not m.ispkg and m.name not in ("common", "installs", "release_style", "gpu_check")
)


def test_every_benchmark_writing_results_is_listed():
    assert WRITERS == [
        "allocator",
        "busy_threads",
        "detail_measures",
        "engine_sizes",
        "int8_onnx",
        "latency",
        "latency_onnx",
        "model_grids",
        "niqe_variants",
        "quality_cost",
        "quality_steps",
        "serve_faults",
        "serve_load",
        "size_scaling",
        "stage_profile",
        "static_speedup",
        "tile_overlap",
        "torch_free",
        "triton_aot",
    ]


@pytest.mark.parametrize("name", WRITERS)
def test_every_benchmark_has_replace_and_says_where_it_writes_by_default(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    assert "--replace" in capsys.readouterr().out


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "SCRATCH", tmp_path / "scratch")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "quality_steps.json").write_text("committed\n")
    return tmp_path / "results", tmp_path / "scratch"


def test_a_run_writes_to_scratch_and_replaces_the_results_only_when_told(folders, tmp_path):
    from benchmarks.quality_steps import main

    results, scratch = folders
    torch.manual_seed(0)
    idm_rt.save_model(idm_rt.IDM(TINY, max_scale=4.0), tmp_path / "model")
    make_folder(tmp_path / "data", n=1, size=24)
    (tmp_path / "data" / "broken.jpg").unlink()
    (tmp_path / "data" / "tiny.png").unlink()
    args = [
        "--model",
        str(tmp_path / "model"),
        "--data",
        str(tmp_path / "data"),
        "--scales",
        "2",
        "--steps",
        "2",
        "--samplers",
        "ddim",
        "--inits",
        "noise",
        "--crop",
        "16",
    ]
    main(args)
    assert (results / "quality_steps.json").read_text() == "committed\n"
    assert json.loads((scratch / "quality_steps.json").read_text())["curve"]
    main([*args, "--replace"])
    assert json.loads((results / "quality_steps.json").read_text())["curve"]
