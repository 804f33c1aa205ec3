"""What an install of idm-rt brings, from the distributions of this environment: the closure of pyproject.toml's
requirements (base, or with extras), its size in site-packages, and a virtual environment holding exactly that
closure as links to this environment's installed files (no download, no copy: seconds to make).

Such an environment sees nothing else of this one (it is made without ``--system-site-packages`` and its processes
run without PYTHONPATH but the checkout), so a package outside the closure, torch for the base install, does not
import there.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"]).resolve()


def requirements(*extras: str) -> list[str]:
    """pyproject.toml's ``project.dependencies`` and those of ``extras``; LookupError before Python 3.11."""
    try:
        import tomllib
    except ImportError:
        raise LookupError("reading pyproject.toml needs tomllib (Python 3.11 and later)") from None
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(reqs: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions ``reqs`` need, directly or through theirs (markers evaluated here, extras
    followed), by normalised name; LookupError naming a requirement this environment does not have."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(r), "") for r in reqs]
    done: set[tuple[str, str]] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = _name(req.name)
        for want in [""] + sorted(req.extras):
            if (name, want) in done:
                continue
            done.add((name, want))
            try:
                dist = found.get(name) or metadata.distribution(req.name)
            except metadata.PackageNotFoundError:
                raise LookupError(f"{req} is not installed in {sys.prefix}") from None
            found[name] = dist
            todo += [(Requirement(r), want) for r in dist.requires or []]
    return found


def installed_files(dist: metadata.Distribution) -> list[Path]:
    """The files ``dist`` installed into site-packages (its RECORD), scripts and data elsewhere left out."""
    out = []
    for f in dist.files or []:
        path = Path(dist.locate_file(f)).resolve()
        if path.is_relative_to(SITE) and path.is_file():
            out.append(path)
    return out


def closure_bytes(dists: dict[str, metadata.Distribution]) -> dict[str, int]:
    """Bytes each distribution installed into site-packages (the apparent sizes of its files)."""
    return {name: sum(p.stat().st_size for p in installed_files(d)) for name, d in dists.items()}


def linked_venv(folder: Path, dists: dict[str, metadata.Distribution]) -> Path:
    """A virtual environment in ``folder`` (no pip) whose site-packages links to the top-level entries ``dists``
    installed (packages, modules, .libs folders, .dist-info, .pth files); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, capture_output=True)
    python = folder / ("Scripts" if os.name == "nt" else "bin") / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    tops = {path.relative_to(SITE).parts[0] for d in dists.values() for path in installed_files(d)}
    for top in sorted(tops):
        if not (target / top).exists():
            (target / top).symlink_to(SITE / top)
    return python


def clean_env(extra_path: Path | None = ROOT) -> dict[str, str]:
    """The environment of a process in such a venv: nothing of this environment's Python paths (only
    ``extra_path``, by default the checkout, on PYTHONPATH), no user site-packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return env | {"PYTHONNOUSERSITE": "1", **({"PYTHONPATH": str(extra_path)} if extra_path else {})}
