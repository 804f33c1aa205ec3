"""What a device has (idm_rt.memory, idm_rt.cgroups) and the allocator setting the command lines make."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from idm_rt import cgroups, memory


@pytest.fixture
def fake_cgroups(tmp_path, monkeypatch):
    """A cgroup tree under tmp_path and this process placed in it: (v2 root, v1 memory root, own-cgroup file)."""
    monkeypatch.setattr(cgroups, "CGROUP", tmp_path / "cg")
    monkeypatch.setattr(cgroups, "PROC_SELF_CGROUP", tmp_path / "self_cgroup")
    return tmp_path / "cg", tmp_path / "cg" / "memory", tmp_path / "self_cgroup"


def test_the_tightest_memory_limit_of_the_cgroup_and_its_parents(fake_cgroups):
    v2, _, own = fake_cgroups
    own.write_text("0::/pod/app\n")
    (v2 / "pod" / "app").mkdir(parents=True)
    (v2 / "pod" / "app" / "memory.max").write_text("max\n")
    assert cgroups.memory_limit() is None
    (v2 / "pod" / "memory.max").write_text(f"{3 * 2**30}\n")
    assert cgroups.memory_limit() == 3 * 2**30  # a parent's limit holds for its children
    (v2 / "pod" / "app" / "memory.max").write_text(f"{2**30}\n")
    assert cgroups.memory_limit() == 2**30


def test_cgroup_v1_limits_and_its_no_limit_number(fake_cgroups):
    _, v1, own = fake_cgroups
    own.write_text("5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    (v1 / "docker" / "abc").mkdir(parents=True)
    (v1 / "docker" / "abc" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert cgroups.memory_limit() is None
    (v1 / "docker" / "abc" / "memory.limit_in_bytes").write_text("536870912\n")
    assert cgroups.memory_limit() == 2**29


def test_device_memory_is_the_machines_capped_by_the_cgroup(fake_cgroups, tmp_path, monkeypatch):
    v2, _, own = fake_cgroups
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:          100 kB\nMemAvailable:     200 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", str(meminfo))
    own.write_text("0::/\n")
    v2.mkdir()
    assert memory.device_memory(torch.device("cpu")) == 16384000 * 1024  # the total, not what is free now
    (v2 / "memory.max").write_text(f"{2**30}\n")
    assert memory.device_memory(torch.device("cpu")) == 2**30


CHILD = """
import resource, sys, torch
import idm_rt
if sys.argv[1] == "1":
    assert idm_rt.configure_allocator()
def touch():
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
    del x
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_allocator_setting_keeps_freed_memory_for_the_next_call():
    """Without it every 64 MiB block is mapped again and faults in page by page (16384 pages each, six
    times); with it the freed block is reused (at most one block's pages fault in once, as the heap grows)."""
    faults = [
        int(
            subprocess.run(
                [sys.executable, "-c", CHILD, flag], capture_output=True, text=True, check=True, timeout=120
            ).stdout
        )
        for flag in ("0", "1")
    ]
    assert faults[0] > 6 * 16384 * 0.9 and faults[1] < 1.5 * 16384, faults
