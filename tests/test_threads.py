"""CPU threads: the default follows the CPU affinity and the cgroup quota; every command line has --threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import idm_rt
from idm_rt import cgroups, threads

from .helpers import ROOT, TINY_SET, make_folder


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fake idle 64-CPU machine whose cgroup files live under tmp_path; returns a writer for them."""
    monkeypatch.setattr(cgroups, "CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(cgroups, "PROC_SELF_CGROUP", tmp_path / "proc_self_cgroup")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 64)  # idle (conftest's idle_machine)
    (tmp_path / "proc_self_cgroup").write_text("0::/\n")

    def write(path: str, text: str) -> None:
        (tmp_path / "cgroup" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cgroup" / path).write_text(text)

    return write


@pytest.mark.parametrize(
    "files,proc,cpus",
    [
        ({}, "0::/\n", 64),  # no cgroup files: the affinity mask
        ({"cpu.max": "max 100000\n"}, "0::/\n", 64),  # v2, unlimited
        ({"cpu.max": "200000 100000\n"}, "0::/\n", 2),  # v2: 2 CPUs' worth
        ({"cpu.max": "150000 100000\n"}, "0::/\n", 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "20000 100000\n"}, "0::/\n", 1),  # a fifth of a CPU: still one thread
        ({"job.slice/cpu.max": "300000 100000\n", "job.slice/run/cpu.max": "max 100000\n"}, "0::/job.slice/run\n", 3),
        ({"cpu.max": "800000 100000\n", "job/cpu.max": "400000 100000\n"}, "0::/job\n", 4),  # the tightest
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/\n", 4),  # v1
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
            "4:cpu,cpuacct:/docker/abc\n",
            1,
        ),  # v1 in a container: its cgroup at the mount's root
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/\n", 64),  # v1, unlimited
        ({"cpu.max": "lots of CPUs\n"}, "0::/\n", 64),  # unreadable: ignored
        ({"cpu.max": "0 100000\n"}, "garbage\n", 64),
    ],
)
def test_available_cpus_follow_the_cgroup_quota(machine, tmp_path, files, proc, cpus):
    (tmp_path / "proc_self_cgroup").write_text(proc)
    for path, text in files.items():
        machine(path, text)
    assert threads.available_cpus() == cpus


def test_available_cpus_follow_the_affinity_mask(machine, monkeypatch):
    machine("cpu.max", "800000 100000\n")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {3, 5}, raising=False)
    assert threads.available_cpus() == 2


def test_configure_threads(machine, monkeypatch):
    machine("cpu.max", "300000 100000\n")
    assert threads.configure_threads() == 3 and torch.get_num_threads() == 3
    assert idm_rt.configure_threads(1) == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit choice (torchrun sets it per process) is kept
    assert threads.configure_threads() == 2 and torch.get_num_threads() == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"threads must be an integer in \[1, 1024\]"):
            threads.configure_threads(bad)


def test_importing_idm_rt_leaves_torch_threads_alone():
    code = (
        "import torch; n = torch.get_num_threads(); "
        "import idm_rt, idm_rt.training.train, idm_rt.training.evaluate; "
        "assert torch.get_num_threads() == n, (n, torch.get_num_threads())"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert r.returncode == 0, r.stderr


@pytest.fixture
def model(tiny_model, tmp_path):
    idm_rt.save_model(tiny_model, tmp_path / "model")
    Image.fromarray((np.random.default_rng(0).random((8, 10, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    return tmp_path / "model"


def test_upscale_threads_flag_and_default(machine, model, tmp_path):
    from idm_rt.cli import main

    args = ["upscale", str(tmp_path / "a.png"), "--scale", "2", "--steps", "1", "--model", str(model), "-o"]
    assert main([*args, str(tmp_path / "b.png"), "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    machine("cpu.max", "200000 100000\n")
    assert main([*args, str(tmp_path / "c.png")]) == 0
    assert torch.get_num_threads() == 2  # the container's quota, not the 64 CPUs
    with pytest.raises(SystemExit):
        main([*args, str(tmp_path / "d.png"), "--threads", "0"])


def test_build_threads_flag(machine, model, capsys):
    from idm_rt.build import main

    assert main(["--model", str(model), "--explain", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    machine("cpu.max", "300000 100000\n")
    assert main(["--model", str(model), "--explain"]) == 0
    assert torch.get_num_threads() == 3


@pytest.mark.slow
def test_train_threads_flag_is_the_threads_option(machine, tmp_path):
    from idm_rt.training.train import main

    make_folder(tmp_path / "data")
    out = tmp_path / "run"
    set_ = [s for s in TINY_SET if not s.startswith("threads=")]
    assert (
        main(["--data", str(tmp_path / "data"), "--out", str(out), "--steps", "1", "--threads", "1", "--set", *set_])
        == 0
    )
    assert torch.get_num_threads() == 1 and json.loads((out / "train_config.json").read_text())["threads"] == 1
    machine("cpu.max", "200000 100000\n")
    assert main(["--resume", "--out", str(out), "--steps", "2", "--set", "threads=0"]) == 0
    assert torch.get_num_threads() == 2  # 0: the CPUs available


def test_evaluate_threads_flag(machine, model, tmp_path):
    from idm_rt.training import evaluate

    make_folder(tmp_path / "data", n=1)
    args = ["--model", str(model), "--data", str(tmp_path / "data"), "--scales", "2", "--steps", "1", "--crop", "24"]
    assert evaluate.main([*args, "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    machine("cpu.max", "200000 100000\n")
    assert evaluate.main(args) == 0
    assert torch.get_num_threads() == 2


def _count_in_a_new_thread() -> int:
    """torch's thread count as a thread started now sees it (the count torch gives threads it has not met)."""
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


@pytest.mark.parametrize(
    "load,cpus,n,spare",
    [
        (1.0, 2, 2, 1),  # one busy process on 2 CPUs: one of our 2 threads would have no free core
        (0.2, 2, 2, 2),  # idle
        (1.0, 2, 1, 1),  # one thread cannot stall another
        (9.5, 2, 2, 1),  # at least one
        (4.0, 8, 8, 4),  # the free cores
        (30.0, 64, 2, 2),  # a 2-CPU container on a 64-CPU host half busy: cores to spare
        (63.0, 64, 2, 1),
    ],
)
def test_a_busy_machine_gets_its_free_cores_with_a_note(monkeypatch, load, cpus, n, spare):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cpus)
    got, note = threads.spare_threads(n)
    assert got == spare and (note is None) == (spare == n)
    if note:
        assert f"load average {load:.1f} over the last minute on {cpus} CPUs" in note
        assert f"{spare} torch thread{'s' * (spare > 1)} instead of {n}" in note and "--threads N" in note


def test_the_default_thread_count_on_a_busy_machine(machine, monkeypatch, capsys):
    machine("cpu.max", "200000 100000\n")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    assert threads.configure_threads() == 1 and torch.get_num_threads() == 1
    assert "note: this machine is busy" in capsys.readouterr().err
    assert threads.configure_threads(2) == 2  # a count given: the user's choice, kept without a note
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.configure_threads() == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (_ for _ in ()).throw(OSError("no load average")))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.configure_threads() == 2 and capsys.readouterr().err == ""
