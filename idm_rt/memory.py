"""Memory: how much a device has to plan a call with, and the allocator setting that keeps freed
memory for the next call.

Every large activation of a CPU forward pass is a fresh block from glibc's ``malloc``, which serves
blocks above its mmap threshold with ``mmap`` and returns them to the kernel when freed: each call then
pays page faults again for every page it touches (millions for one 512x512 upscale, seconds of kernel
time). :func:`configure_allocator` makes glibc keep freed memory in the process instead. The command
lines call it; importing ``idm_rt`` changes nothing in the process, so library users call
``idm_rt.configure_allocator()`` once themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

from .cgroups import memory_limit

# mallopt parameters of glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MEMINFO = "/proc/meminfo"
KEEP_BYTES = 2**31 - 1  # free memory at the top of the heap glibc keeps before it trims (mallopt takes an int)


def device_memory(device: Any) -> int:
    """Bytes ``device`` has: a GPU's total memory; on the CPU the machine's (MemTotal), capped by the
    process's cgroup limit. The total, not what is free at the moment: plans made from it, such as the
    tile an output is denoised in, and so the image, do not change with what other processes hold."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(torch.device(str(device))).total_memory
    sizes = [r for r in (_mem_total(), memory_limit()) if r is not None]
    return min(sizes) if sizes else 8 * 2**30  # unknown (not Linux): assume a modest machine


def _mem_total() -> int | None:
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def configure_allocator() -> bool:
    """Keep freed memory in the process for the next call: glibc serves large blocks from its heap, not
    with mmap, and trims the heap only above 2 GiB free (``mallopt``, the in-process form of
    ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...``). Peak resident memory
    grows by what the largest call frees (about 40 % for a 512x512 upscale); a call no longer pays page
    faults for memory the one before it used. Returns whether it was applied (glibc on Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
