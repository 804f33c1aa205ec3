"""``python -m idm_rt.export.package``: the bundled model's ONNX graphs, shipped in the package so that an install
without torch runs the bundled model with ONNX Runtime (``idm_rt.DEFAULT_ENGINES``).

An ONNX Runtime fp32 build of the bundled model with the U-Net in dynamic sizes only (``--no-static``, direct
convolutions: the static Winograd graph alone is 47 MB), of which only the plain ONNX graphs are kept (ONNX Runtime
optimises them when it loads them): about 22 MB. Rerun it whenever the bundled weights change;
``tests/test_packaging.py`` checks that the graphs were built from the weights beside them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from idm_rt import DEFAULT_ENGINES, DEFAULT_MODEL
from idm_rt.backends.engine_dir import MANIFEST_NAME, read_manifest
from idm_rt.buckets import Bucket

from .builder import BuildOptions, build


def package(model: Path = DEFAULT_MODEL, target: Path = DEFAULT_ENGINES) -> Path:
    """Build ``model``'s shipped graphs into ``target``, replacing only a previous build of this command there."""
    if target.exists() and not (target / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{target} exists and is not an engine directory; move it away (it was left alone)")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        out = Path(tmp) / "engines"
        options = BuildOptions(
            model,
            out,
            "fp32",
            "onnxruntime",
            [Bucket(256, 256)],
            conv="direct",
            static=False,
            command="python -m idm_rt.export.package",
        )
        if build(options, log=lambda msg: print(msg, file=sys.stderr)) != 0:
            raise RuntimeError("the build failed")
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        for entry in manifest["graphs"].values():  # the plain graphs only: ONNX Runtime optimises them at load
            entry.update(engine=None, engine_key=None, engine_bytes=None)
        manifest["model_path"] = "idm_rt/weights/default"  # (not the machine it was built on)
        (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(out / "onnxruntime")
        (out / ".build.lock").unlink(missing_ok=True)
        read_manifest(out)  # still a valid directory
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    # No options: --help says what it does instead of doing it.
    parser = argparse.ArgumentParser(prog="python -m idm_rt.export.package", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    path = package()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"wrote {path} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
