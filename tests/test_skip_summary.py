"""The test run's closing line about skipped tests: a clone without the golden fixtures is told, in one line,
that parity with the release went unchecked and why."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .helpers import ROOT, skip_summary


def test_skip_summary_counts_each_reason_once():
    assert skip_summary([]) is None
    line = skip_summary(["no fixtures at X", "no GPU", "no fixtures at X"])
    assert line == "NOT CHECKED: 3 tests skipped: 2 x no fixtures at X; 1 x no GPU"


@pytest.mark.slow
def test_a_run_without_the_golden_fixtures_ends_with_a_line_saying_so(tmp_path):
    env = {**os.environ, "IDM_RT_GOLDEN": str(tmp_path / "nowhere")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_golden.py",
            "-k",
            "config_inferred or ddpm_step",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("NOT CHECKED"))
    assert line.startswith("NOT CHECKED: 5 tests skipped: 5 x golden fixtures not found at ")
    assert str(tmp_path / "nowhere") in line and "Release parity" in line
