"""torch's CPU threads: as many as this process may really use.

torch's default is the machine's core count, blind to the process's CPU affinity and to a
container's CPU quota: in a container limited to 2 CPUs on a 64-core host every call would
oversubscribe. The command lines call :func:`configure_threads`; importing ``idm_rt`` changes
nothing, so library users call ``idm_rt.configure_threads()`` once themselves.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch

CGROUP = Path("/sys/fs/cgroup")  # where cgroups are mounted (v2: unified; v1: one folder per controller)
PROC_SELF_CGROUP = Path("/proc/self/cgroup")  # this process's cgroup in each hierarchy
# Most threads asked for: more than any machine's cores. torch starts every one of them (with its stack) at its
# first parallel op, so --threads 20000 exhausted memory and 10**10 overflowed inside torch.
MAX_THREADS = 1024


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup CPU quota (rounded up); at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks on this platform
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(n, math.ceil(quota)) if quota is not None else n)


def configure_threads(n: int | None = None) -> int:
    """Set torch's CPU threads to ``n``; by default to ``OMP_NUM_THREADS`` when it is set (torchrun sets
    it per process), else to :func:`available_cpus`. Returns the count set."""
    if n is None:
        n = _env_threads() or available_cpus()
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_THREADS:
        raise ValueError(f"threads must be a positive integer up to {MAX_THREADS}, got {n!r}")
    torch.set_num_threads(n)
    return n


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--threads N`` option of every command line."""
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="torch CPU threads (default: the CPUs this process may use, from its CPU affinity and "
                             "cgroup CPU quota, or OMP_NUM_THREADS when set)")


def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the process's cgroup may use (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``): the tightest limit of its cgroup and their parents; None when unlimited."""
    paths = _own_cgroups()
    folders = _with_parents(CGROUP, paths.get("", "/"))
    for mount in (CGROUP / "cpu", CGROUP / "cpu,cpuacct"):
        folders += _with_parents(mount, paths.get("cpu", "/"))
    limits = [q for q in map(_quota, folders) if q is not None]
    return min(limits, default=None)


def _own_cgroups() -> dict[str, str]:
    """Controller name -> this process's cgroup path ("" names cgroup v2's unified hierarchy)."""
    paths: dict[str, str] = {}
    try:
        lines = PROC_SELF_CGROUP.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        for controller in controllers.split(","):
            paths[controller] = path
    return paths


def _with_parents(root: Path, path: str) -> list[Path]:
    """``root/path`` and its parents down to ``root``: a limit on any of them holds."""
    folder = root / path.strip("/")
    return [folder, *(p for p in folder.parents if p.is_relative_to(root))]


def _quota(folder: Path) -> float | None:
    """The CPU quota set in one cgroup folder (v2 or v1 files), None without one or when unreadable."""
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text().split()[:2]  # "max 100000" or "200000 100000"
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()  # -1: no limit
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota == "max" or int(quota) <= 0 or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):  # no such files here, or not numbers
        return None


def _env_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive integer up to :data:`MAX_THREADS`, None when unset or not one."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and 0 < int(value) <= MAX_THREADS else None


def _positive_int(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be a positive integer up to {MAX_THREADS}, got {text!r}")
    return int(text)
