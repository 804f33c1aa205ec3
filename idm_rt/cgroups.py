"""The limits a Linux container puts on this process (cgroups v2 and v1): its CPU quota and its memory.

Each limit is the tightest one set on the process's own cgroup or any parent; none means unlimited (or
not Linux).
"""

from __future__ import annotations

from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")  # where cgroups are mounted (v2: unified; v1: one folder per controller)
PROC_SELF_CGROUP = Path("/proc/self/cgroup")  # this process's cgroup in each hierarchy


def cpu_quota() -> float | None:
    """CPUs' worth of time the process's cgroup may use (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``): the tightest limit of its cgroup and their parents; None when unlimited."""
    paths = own_cgroups()
    folders = with_parents(CGROUP, paths.get("", "/"))
    for mount in (CGROUP / "cpu", CGROUP / "cpu,cpuacct"):
        folders += with_parents(mount, paths.get("cpu", "/"))
    limits = [q for q in map(_quota, folders) if q is not None]
    return min(limits, default=None)


def memory_limit() -> int | None:
    """Bytes the process's cgroup may hold (v2 ``memory.max``, v1 ``memory.limit_in_bytes``), the tightest
    limit of its cgroup and their parents; None when unlimited."""
    paths = own_cgroups()
    folders = with_parents(CGROUP, paths.get("", "/")) + with_parents(CGROUP / "memory", paths.get("memory", "/"))
    return min((r for r in map(_limit, folders) if r is not None), default=None)


def own_cgroups() -> dict[str, str]:
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


def with_parents(root: Path, path: str) -> list[Path]:
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


def _limit(folder: Path) -> int | None:
    """The memory limit of one cgroup folder (v2 or v1 file), None without one or when unreadable."""
    for name in ("memory.max", "memory.limit_in_bytes"):
        try:
            limit = (folder / name).read_text().strip()
        except OSError:
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:  # v1 writes a huge number for "none"
            return None
        return int(limit)
    return None
