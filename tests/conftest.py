"""Shared fixtures: the golden folder (skipped when ../shared is absent) and tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import idm_rt

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / "shared" / "golden" / "official_small"
TRAIN_DATA = ROOT.parent / "shared" / "datasets" / "train"


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


TINY = idm_rt.IDMConfig(inner_channel=8, channel_multiplier=(1, 2, 2), res_blocks=1, attn_levels=(2,), norm_groups=4,
                        encoder_blocks=1, encoder_feats=8, implicit_hidden=16)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter re-drawn (zero biases and unit scales exercised too), small enough to stay tame."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return perturbed(idm_rt.IDM(TINY, max_scale=4.0))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
