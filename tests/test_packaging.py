"""What ``pip install idm-rt`` puts into site-packages: one package, ``idm_rt`` (training, export and
kernels as its subpackages), so nothing collides with another distribution's top-level names."""

from __future__ import annotations

import ast
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
    for sub in ("training/train.py", "export/builder.py", "kernels/triton_implicit.py", "training/recipes/",
                "training/niqe_model.json"):
        assert any(n.startswith(f"idm_rt/{sub}") for n in names), sub
    assert "idm_rt/weights/default/model.safetensors" in names


LAYERS = {"kernels": 0, "idm_rt": 1, "export": 2, "training": 2}  # kernels <- idm_rt <- export, training
ALLOWED_UPWARD = {("idm_rt/upscaler.py", "export"), ("idm_rt/build.py", "export")}  # the lazy engine build, its command


def _layer_of(dotted: list[str]) -> str | None:
    """The source folder an installed module name lives in (``idm_rt.export.cli`` -> "export")."""
    if dotted[0] == "idm_rt":
        return dotted[1] if len(dotted) > 1 and dotted[1] in LAYERS and dotted[1] != "idm_rt" else "idm_rt"
    return dotted[0] if dotted[0] in LAYERS else None


def _imports(path, package: str) -> list[tuple[str, bool]]:
    """(source folder imported, at module level) for each import of a source file that reaches one of the four
    folders, absolutely or relatively (``training/`` installs as ``idm_rt.training``, and so on)."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body} | {id(n) for t in tree.body if isinstance(t, ast.Try) for n in t.body}
    here = ["idm_rt"] + ([] if package == "idm_rt" else [package]) + list(path.relative_to(ROOT / package).parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            module = (node.module or "").split(".") if node.module else []
            names = [base + module + [a.name] for a in node.names]
        else:
            continue
        found += [(layer, id(node) in top) for layer in map(_layer_of, names) if layer]
    return found


def test_imports_point_one_way():
    """kernels <- idm_rt <- export, training: no module imports a higher layer, except the runtime's one lazy
    call that builds engines (and ``python -m idm_rt.build``, which hands over to export's command)."""
    upward = []
    for package, layer in LAYERS.items():
        for path in (ROOT / package).rglob("*.py"):
            for folder, module_level in _imports(path, package):
                rel = str(path.relative_to(ROOT))
                if LAYERS[folder] > layer and (module_level or (rel, folder) not in ALLOWED_UPWARD):
                    upward.append((rel, folder, "module level" if module_level else "in a function"))
    assert not upward


def test_a_checkout_finds_its_subpackages_without_an_editable_install():
    """`python -m idm_rt` run from the repository root imports the checkout's idm_rt, ahead of what pip
    installed; with a plain (not editable) install nothing maps training/, export/ and kernels/ into it, so
    the package must find them beside itself. Simulated by dropping any editable-install finder."""
    code = ("import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()\n"
            "                    and 'editable' not in getattr(f, '__name__', '').lower()]\n"
            "import idm_rt, idm_rt.kernels, idm_rt.training.train, idm_rt.export.builder\n"
            "print(idm_rt.kernels.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(ROOT / "kernels" / "__init__.py")
