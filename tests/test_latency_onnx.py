"""``python -m benchmarks.latency_onnx`` keeps one results file: each run is appended to latency_onnx.json and
latency_onnx.md is rewritten from it (the benchmark itself is too slow for the suite)."""

from __future__ import annotations

import json

from benchmarks.common import RESULTS
from benchmarks.latency_onnx import markdown, run_record, save_run


def result(threads: int, torch_ms: list[float], winograd_ms: list[float]) -> dict:
    """What one run of the benchmark measures, in the shape its main() builds."""
    return {
        "command": f"python -m benchmarks.latency_onnx --threads {threads}",
        "machine": {
            "cpu": "test CPU",
            "cores": 2,
            "torch": "2.x",
            "onnxruntime": "1.x",
            "load_average": [0.5, 0.5, 0.5],
        },
        "preset": "official",
        "tile": 128,
        "batch": 1,
        "threads": threads,
        "weights": "random",
        "cpu": {
            "torch_eager": {"median_ms": torch_ms[1], "all_ms": torch_ms, "speedup_vs_torch_eager": 1.0},
            "ort_cpu_winograd": {"median_ms": winograd_ms[1], "all_ms": winograd_ms, "speedup_vs_torch_eager": 1.5},
        },
        "gpu": None,
    }


def test_runs_are_appended_to_one_summary_with_its_tables(tmp_path):
    path = tmp_path / "latency_onnx.json"
    save_run(run_record(result(2, [400.0, 450.0, 500.0], [300.0, 310.0, 320.0]), "2026-01-01T10:00:00", 3), path)
    save_run(run_record(result(2, [420.0, 460.0, 480.0], [270.0, 280.0, 290.0]), "2026-01-01T11:00:00", 3), path)
    summary = json.loads(path.read_text())
    assert summary["benchmark"] == "python -m benchmarks.latency_onnx"
    runs = summary["runs"]
    assert [r["date"] for r in runs] == ["2026-01-01T10:00:00", "2026-01-01T11:00:00"]
    assert runs[0]["command"] == "python -m benchmarks.latency_onnx --threads 2"
    assert runs[0]["machine"]["cpu"] == "test CPU" and runs[0]["winograd_version"] == 3
    assert runs[0]["cpu"]["torch_eager"] == {"median_ms": 450.0, "rounds": 3, "speedup_vs_torch_eager": 1.0}
    table = (tmp_path / "latency_onnx.md").read_text()
    assert table == markdown(summary)
    assert "| version 3 | official, 128 | 2 | 2 | 450-460 |  | 1.50x (1.50x) |" in table
    assert "| 2026-01-01T11:00:00 | `python -m benchmarks.latency_onnx --threads 2` | 3 | 2 | 3 | 460.0 |" in table


def test_the_committed_tables_are_those_of_the_committed_runs():
    summary = json.loads((RESULTS / "latency_onnx.json").read_text())
    assert (RESULTS / "latency_onnx.md").read_text() == markdown(summary)
    assert all({"date", "command", "machine", "threads", "cpu"} <= set(run) for run in summary["runs"])
