"""What ``pip install idm-rt`` puts into site-packages: one package, ``idm_rt`` (training, export and
kernels as its subpackages), so nothing collides with another distribution's top-level names."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from .helpers import ROOT


def test_the_wheel_holds_no_top_level_module_but_idm_rt(tmp_path):
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "runs", "engines",
                                                                "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, timeout=300, cwd=tmp_path)
    (wheel,) = tmp_path.glob("idm_rt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"idm_rt"}
    for sub in ("training/train.py", "export/builder.py", "kernels/triton_implicit.py", "training/recipes/"):
        assert any(n.startswith(f"idm_rt/{sub}") for n in names), sub
    assert "idm_rt/weights/default/model.safetensors" in names
