"""CPU threads: as many as this process may really use, for torch and for ONNX Runtime's runners.

torch's default (and ONNX Runtime's) is the machine's core count, blind to the process's CPU affinity and to a
container's CPU quota: in a container limited to 2 CPUs on a 64-core host every call would
oversubscribe. The command lines call :func:`configure_threads`; importing ``idm_rt`` changes
nothing, so library users call ``idm_rt.configure_threads()`` once themselves. Without torch installed only the
runners' count is kept (:func:`threads`).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys

from .cgroups import cpu_quota
from .options import OPTIONS, check

# Most threads asked for (the threads option's bound): more than any machine's cores. torch starts every one of them
# (with its stack) at its first parallel op, so --threads 20000 exhausted memory and 10**10 overflowed inside torch.
MAX_THREADS = int(OPTIONS["threads"].high)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup CPU quota (rounded up); at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks on this platform
        n = os.cpu_count() or 1
    quota = cpu_quota()
    return max(1, min(n, math.ceil(quota)) if quota is not None else n)


def configure_threads(n: int | None = None) -> int:
    """Set torch's CPU threads to ``n``; by default to ``OMP_NUM_THREADS`` when it is set (torchrun sets
    it per process), else to :func:`available_cpus`, fewer on a busy machine (:func:`spare_threads`, said
    on stderr). Returns the count set."""
    if n is None:
        n = _env_threads()
        if n is None:
            n, note = spare_threads(available_cpus())
            if note:
                print(note, file=sys.stderr)
    global _configured
    _configured = check("threads", n, required=True)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(n)
    return n


_configured: int | None = None  # the count configure_threads set last


def threads() -> int:
    """The thread count an ONNX Runtime runner takes by default: what :func:`configure_threads` set, else torch's
    current count when torch is loaded, else :func:`available_cpus`."""
    if _configured is not None:
        return _configured
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    return available_cpus()


def spare_threads(threads: int) -> tuple[int, str | None]:
    """(``threads``, None), or on a machine whose load leaves fewer free cores than that (one-minute load
    average against the machine's CPUs), (the free cores, at least 1; a note saying so). Every parallel
    region waits for its slowest thread, and a thread that other work keeps off its core stalls the others:
    on a busy 2-core VM the README's main command took 45-95 s with 2 threads and 18-21 s with one
    (``benchmarks/results/busy_threads.json``)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return threads, None
    cores = os.cpu_count() or 1
    if threads < 2 or load + threads <= cores + 0.5:
        return threads, None
    spare = max(1, min(threads - 1, math.floor(cores - load + 0.5)))
    return spare, (
        f"note: this machine is busy (load average {load:.1f} over the last minute on {cores} CPUs): "
        f"{spare} torch thread{'s' * (spare > 1)} instead of {threads}, which can run several times "
        "slower while other work holds the cores (--threads N chooses)"
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--threads N`` option of every command line."""
    OPTIONS["threads"].add_to(parser)


def _env_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive integer up to :data:`MAX_THREADS`, None when unset or not one."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and 0 < int(value) <= MAX_THREADS else None
