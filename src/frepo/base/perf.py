"""Process-level CPU tuning that changes speed, never results.

PyTorch's CPU allocator is glibc malloc. Every tensor above malloc's mmap threshold (at most 32 MB)
gets fresh pages from the kernel and returns them on free, so each step of a distillation pays
page faults for every large activation again. Keeping freed memory in the heap instead (no mmap,
a high trim threshold) made the outer step 1.2-1.35x faster on a 2-core machine at about the same
peak memory for the CIFAR settings and ~7% more for MNIST (docs/benchmarks.md). A large support set
pays in memory: CIFAR-100 IPC 50 (5 000 images) ran 1.36x faster at 70% more peak RSS, 8.6 GB against
5.1 (docs/peers.md, "The allocator"). The CLI calls this once at start; library users may too.
FREPO_TUNE_ALLOCATOR=0 keeps glibc's default behaviour.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # return freed heap memory to the kernel only beyond 1 GiB of slack


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap (Linux only). True if applied."""
    if not sys.platform.startswith("linux") or os.environ.get("FREPO_TUNE_ALLOCATOR", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
