"""Fixtures: the golden folder (skipped when ../shared is absent) and a tiny random model. Shared helpers
are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import idm_rt

from .helpers import GOLDEN, TINY, perturbed


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN / "checkpoint.pth").exists():
        pytest.skip(f"golden fixtures not found at {GOLDEN} (they live in ../shared beside the checkout)")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_cases(golden_dir):
    from safetensors.torch import load_file

    return load_file(golden_dir / "cases.safetensors")


@pytest.fixture(scope="session")
def golden_model(golden_dir):
    return idm_rt.load_model(golden_dir / "checkpoint.pth")


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return perturbed(idm_rt.IDM(TINY, max_scale=4.0))
