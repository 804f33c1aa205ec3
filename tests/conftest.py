"""Fixtures: the golden folder (skipped when ../shared is absent), a tiny random model, an idle machine; a
summary line of the skipped tests. Shared helpers are in helpers.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import idm_rt

from .helpers import GOLDEN, TINY, perturbed, skip_summary


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """Every test sees an idle machine: the command lines' thread default and its note on stderr
    (idm_rt.threads.spare_threads) do not depend on what else runs; tests of that set the load themselves."""
    monkeypatch.setattr(idm_rt.threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0), raising=False)


REAL_FIND_SPEC = importlib.util.find_spec


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    """No test leaves a stand-in for importlib.util.find_spec behind once its fixtures are gone (one that hid torch
    made every later test that needs torch fail with "needs torch"): an error at the test that did it."""
    result = yield
    if importlib.util.find_spec is not REAL_FIND_SPEC:
        importlib.util.find_spec = REAL_FIND_SPEC
        raise AssertionError(f"{item.nodeid} left importlib.util.find_spec replaced")
    return result


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN / "checkpoint.pth").exists():
        pytest.skip(
            f"golden fixtures not found at {GOLDEN}: parity with the release not checked (README, "
            "'Release parity', says where they come from; IDM_RT_GOLDEN=DIR points at a copy)"
        )
    return GOLDEN


def pytest_terminal_summary(terminalreporter) -> None:
    """A loud last line when tests were skipped: ``s`` and a count alone hide that a claim went unchecked."""
    reasons = [_skip_reason(report) for report in terminalreporter.stats.get("skipped", [])]
    line = skip_summary(reasons)
    if line:
        terminalreporter.write_line(line, yellow=True, bold=True)


def _skip_reason(report) -> str:
    longrepr = report.longrepr  # (file, line, "Skipped: reason") for skips
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


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
