"""The repository passes ``ruff check`` with the rules in pyproject.toml and ``ruff format --check`` (ruff comes with
the dev extra), so the test command CI runs lints and checks formatting too."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from .helpers import ROOT


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed (pip install -e .[dev])")
def test_ruff_check_passes():
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed (pip install -e .[dev])")
def test_ruff_format_leaves_every_file_as_it_is():
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
