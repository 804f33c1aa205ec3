"""What ``pip install idm-rt`` puts into site-packages: one package, ``idm_rt`` (training, export and
kernels as its subpackages), so nothing collides with another distribution's top-level names."""

from __future__ import annotations

import ast
import dataclasses
import shutil
import subprocess
import sys
import zipfile

from idm_rt import DEFAULT_ENGINES, DEFAULT_MODEL
from idm_rt.backends.engine_dir import artifact, read_manifest
from idm_rt.checkpoints import load_model, model_hash
from idm_rt.cost import stage_flops
from idm_rt.export.builder import onnx_key

from .helpers import ROOT


def test_the_wheel_holds_no_top_level_module_but_idm_rt(tmp_path):
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "runs", "engines", "__pycache__", ".pytest_cache"),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("idm_rt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"idm_rt"}
    for sub in (
        "training/train.py",
        "export/builder.py",
        "kernels/triton_implicit.py",
        "training/recipes/",
        "training/niqe_model.json",
    ):
        assert any(n.startswith(f"idm_rt/{sub}") for n in names), sub
    assert "idm_rt/weights/default/model.safetensors" in names
    shipped = ["manifest.json", *read_manifest(DEFAULT_ENGINES).graph_files()]  # the bundled model without torch
    assert {f"idm_rt/weights/default/onnxruntime/{f}" for f in shipped} <= set(names)
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [
        line.split(":", 1)[1].strip()
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    base = [r for r in requires if "extra ==" not in r]
    assert "onnxruntime" in base and not [r for r in base if r.startswith("torch")], base
    with_torch = [r.split(";")[0].strip() for r in requires if 'extra == "torch"' in r]
    assert {"torch", "onnx", "safetensors"} <= set(with_torch), requires  # the backend, builds, training


def test_the_shipped_graphs_are_those_of_the_shipped_model():
    """The bundled model's ONNX graphs, which an install without torch runs, are what ``python -m
    idm_rt.export.package`` makes of the weights and settings beside them with this version of the export: a
    retrained bundled model, new recommended settings or a changed export without running it again fail here."""
    manifest = read_manifest(DEFAULT_ENGINES)
    model = load_model(DEFAULT_MODEL)
    again = "run python -m idm_rt.export.package again"
    assert manifest.model_hash == model_hash(model), f"the shipped graphs are another model's: {again}"
    assert manifest.network == model.config.to_dict() and manifest.max_scale == model.max_scale
    assert manifest.defaults == model.recommended.to_dict(), f"the shipped graphs sample otherwise: {again}"
    assert manifest.stage_flops == dataclasses.asdict(stage_flops(model.config)), again
    assert manifest.complete and not manifest.static and manifest.backend == "onnxruntime"
    for key, entry in manifest.graphs.items():  # (dynamic graphs only: each graph's key is its kind)
        assert entry.onnx_key == onnx_key(manifest.model_hash, key, None, entry.precision), (
            f"{key} was exported by another version of the export: {again}"
        )
        artifact(DEFAULT_ENGINES, entry.onnx, entry.onnx_bytes)  # there, at the size its build wrote


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
            base = here[: len(here) - node.level + 1] if node.level else []
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
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()\n"
        "                    and 'editable' not in getattr(f, '__name__', '').lower()]\n"
        "import idm_rt, idm_rt.kernels, idm_rt.training.train, idm_rt.export.builder\n"
        "print(idm_rt.kernels.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(ROOT / "kernels" / "__init__.py")
