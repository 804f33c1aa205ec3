"""Run inside the torch-free virtual environment of ``tests/test_torch_free.py`` (not a test module itself):
``python torch_free_run.py SPEC.json OUT`` upscales the cases of SPEC with the Python API, writing each output as
``OUT/<name>.npy`` and what it saw as ``OUT/report.json``; the test compares them with the torch backend's images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import idm_rt


def upscaler(source: str) -> idm_rt.Upscaler:
    """The bundled model (its shipped graphs, chosen because torch is missing) or an engine directory."""
    options = {"runner_options": {"threads": 1}}
    return (
        idm_rt.Upscaler.from_pretrained(**options)
        if source == "bundled"
        else idm_rt.Upscaler.from_engines(source, **options)
    )


def main(spec_path: str, out: str) -> int:
    spec, out = json.loads(Path(spec_path).read_text()), Path(out)
    report: dict = {}
    try:
        import torch  # noqa: F401

        report["torch_importable"] = True
    except ImportError:
        report["torch_importable"] = False
    loaded: dict[str, idm_rt.Upscaler] = {}
    for case in spec["cases"]:
        if case["source"] not in loaded:
            loaded[case["source"]] = upscaler(case["source"])
        up = loaded[case["source"]]
        image = Image.open(case["image"])
        result = up.upscale(
            image,
            scale=case.get("scale"),
            size=case.get("size"),
            seed=case["seed"],
            tile=case["tile"],
            steps=case.get("steps"),
            progress=False,
        )
        np.save(out / f"{case['name']}.npy", np.asarray(result))
    report["backends"] = {source: up.model.backend for source, up in loaded.items()}
    try:
        idm_rt.Upscaler.from_pretrained(backend="torch")
        report["torch_backend_error"] = None
    except ImportError as e:
        report["torch_backend_error"] = str(e)
    report["torch_loaded"] = "torch" in sys.modules
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
