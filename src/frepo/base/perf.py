"""Process-level CPU tuning that changes speed, never results.

PyTorch's CPU allocator is glibc malloc. Every tensor above malloc's mmap threshold (at most 32 MB)
gets fresh pages from the kernel and returns them on free, so each step of a distillation pays
page faults for every large activation again. Keeping freed memory in the heap instead (no mmap,
a high trim threshold) made the outer step 1.2-1.55x faster on a 2-core machine (docs/benchmarks.md,
docs/peers.md). It costs memory where the step's blocks fragment the heap: about the same peak for
CIFAR-10 IPC 10, ~7% more for MNIST, but 1.6x the peak for CIFAR-100 IPC 50 and 1.85x with flip
(10.2 GiB against 5.5; the step's own growth above the data 2.1x). Mapping afresh only the blocks above
64 or 256 MB kept neither the speed nor the memory (docs/benchmarks.md, "The CPU allocator").

So the choice is made per run, from memory (`AllocatorPolicy`): the CLI keeps freed memory from the
start (evaluations, data preparation); a CPU distillation in a process that asked for tuning (the CLI's)
gives it back for its first outer step, measures that step's peak, and keeps freed memory for the rest
of the run only where that peak with the heap's growth (`HEAP_GROWTH` times the step's own) fits in
`MEMORY_SHARE` of the memory it can have.
FREPO_TUNE_ALLOCATOR=1 (on) always keeps freed memory (the default until 2026-12-05); FREPO_TUNE_ALLOCATOR=0
(off) never touches glibc's settings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # return freed heap memory to the kernel only beyond 1 GiB of slack
# Giving freed memory back: glibc's settings as its own adaptation leaves them in a long run (its mmap
# threshold rises with each freed mapped block up to 32 MB, the trim threshold to twice that). mallopt
# switches that adaptation off, so it is set where it would end.
GLIBC_MMAP_THRESHOLD = 32 << 20
GLIBC_TRIM_THRESHOLD = 64 << 20
GLIBC_MMAP_MAX = 65536
HEAP_GROWTH = 2.5  # the step's growth in RSS with freed memory kept, over glibc's: measured up to 2.14
MEMORY_SHARE = 0.8  # of the memory this process can have: what a kept heap may fill at most


_MODES = {"0": "0", "off": "0", "false": "0", "no": "0", "1": "1", "on": "1", "true": "1", "yes": "1", "auto": "auto"}


def _mode() -> str:
    """FREPO_TUNE_ALLOCATOR: 0 (off, false, no) never keeps freed memory, 1 (on, true, yes) always does, auto
    (or unset) decides by memory. Any other value is auto too, with a warning once."""
    value = os.environ.get("FREPO_TUNE_ALLOCATOR", "auto").strip().lower() or "auto"
    if value not in _MODES:
        _warn_unknown_mode(value)
    return _MODES.get(value, "auto")


@functools.cache  # once per value and process
def _warn_unknown_mode(value: str) -> None:
    log.warning(f"frepo: FREPO_TUNE_ALLOCATOR={value!r} is not one of 0, 1, auto (off/on, false/true): using auto")


@functools.cache  # find_library runs ldconfig: once per process
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (musl or another libc lacks them: nothing to tune)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(keep: bool) -> bool:
    """Keep freed memory in glibc's heap (True), or give it back to the kernel as glibc does (False: blocks
    over 32 MB mapped afresh, and the heap's free pages returned now). True if applied: Linux with glibc,
    and FREPO_TUNE_ALLOCATOR not 0 (which leaves glibc's settings untouched)."""
    libc = _libc()
    if libc is None or _mode() == "0":
        return False
    settings = (
        ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        if keep
        else (
            (M_MMAP_MAX, GLIBC_MMAP_MAX),
            (M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD),
        )
    )
    applied = all([bool(libc.mallopt(option, value)) for option, value in settings])
    if not keep:
        libc.malloc_trim(0)
    return applied


_opted_in = False  # whether this process asked for allocator tuning (`tune_cpu_allocator`): the CLI does


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap (Linux only), unless FREPO_TUNE_ALLOCATOR=0. True if applied.
    The CLI calls this once at start; benchmarks too, to time the tuned step. Only a process that did
    lets a distillation's `AllocatorPolicy` change glibc's settings: a library caller's stay its own."""
    global _opted_in
    _opted_in = keep_freed_memory(True)
    return _opted_in


def release_free_heap() -> bool:
    """Give the free pages that the kept heap holds back to the kernel now (glibc's malloc_trim), and keep
    freed memory from here on as before: between the distillations of one process (continual learning's
    tasks, the privacy experiment's sets), whose heap would otherwise hold the last run's GBs through the
    evaluations that follow. ~20-30 ms for 1-1.5 GB. Only in a process that asked for tuning (the CLI's);
    True if done."""
    libc = _libc()
    if libc is None or not _opted_in or _mode() == "0":
        return False
    libc.malloc_trim(0)
    return True


def _proc_kib_bytes(path: str, key: str) -> int | None:
    """A "key:  N kB" line of a /proc file (meminfo, self/status) in bytes; None where it is missing."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limit_bytes(proc: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """This process's cgroup memory limit (v2 memory.max, or v1 limit_in_bytes): the smallest on the way from
    its cgroup up to the root (a batch system limits the job, above the step's cgroup; a container sees its
    own cgroup as the root). None if unlimited."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            base, name = root, "memory.max"
        elif "memory" in parts[1].split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = Path(base, parts[2].lstrip("/"))
        for level in (folder, *folder.parents):
            try:
                text = (level / name).read_text().strip()
            except OSError:
                text = ""
            if text.isdigit() and int(text) < 1 << 60:  # v1 writes a huge number for "no limit"
                limits.append(int(text))
            if level == base:
                break
    return min(limits) if limits else None


def rss_bytes() -> int:
    """This process's resident memory now."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_peak_floor = 0  # the process's peak before the last `reset_peak()`, which lowers the kernel's own


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started (a `reset_peak()` does not lower it)."""
    return max(_peak_floor, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB


def reset_peak() -> bool:
    """Measure a new peak (`recent_peak_bytes`) from now on: Linux's clear_refs 5 resets the process's
    high-water mark (and with it ru_maxrss, so `peak_rss_bytes` keeps the old peak apart). False where the
    kernel does not allow it; the recent peak is then the process's."""
    global _peak_floor
    floor = peak_rss_bytes()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    _peak_floor = floor
    return True


def recent_peak_bytes() -> int:
    """The peak resident memory since the last `reset_peak()` (VmHWM), or since the start."""
    recent = _proc_kib_bytes("/proc/self/status", "VmHWM")
    return peak_rss_bytes() if recent is None else recent


def memory_within_reach() -> int | None:
    """The memory this process can grow to: its RSS and its share of what the system can still give (of
    MemAvailable, which counts reclaimable caches, and of its cgroup's limit): the processes torchrun
    started on this machine (LOCAL_WORLD_SIZE) share both. None where /proc says nothing."""
    available = _proc_kib_bytes("/proc/meminfo", "MemAvailable")
    if available is None:
        return None
    try:
        sharers = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        sharers = 1
    reach = rss_bytes() + available // sharers
    limit = _cgroup_limit_bytes()
    return min(reach, limit // sharers) if limit is not None else reach


def kept_heap_fits(before: int, peak: int, reach: int | None) -> bool:
    """Whether a step whose RSS went from `before` to `peak` under glibc's default would, with freed memory
    kept, stay within MEMORY_SHARE of `reach` (bytes; None: unknown, so no)."""
    if reach is None:
        return False
    return before + HEAP_GROWTH * max(peak - before, 0) <= MEMORY_SHARE * reach


@dataclass
class AllocatorPolicy:
    """For a CPU distillation: `before_first_step()` gives freed memory back (glibc's default) and notes the
    RSS; `after_first_step()` measures that step and keeps freed memory for the rest of the run where it
    fits (`kept_heap_fits`). FREPO_TUNE_ALLOCATOR=0 or 1 fix the choice instead. `kept` is the choice."""

    rss_before: int = 0
    kept: bool | None = None

    def before_first_step(self) -> None:
        if _opted_in and _mode() == "auto":
            keep_freed_memory(False)
            self.rss_before = rss_bytes()
            reset_peak()  # the step's own peak: not the data preparation's or a resumed checkpoint's load

    def after_first_step(self) -> bool | None:
        mode = _mode()
        if _libc() is None or not _opted_in:  # no glibc, or a library caller's settings: nothing to choose
            self.kept = False
            return self.kept
        if mode != "auto":
            self.kept = keep_freed_memory(True) if mode == "1" else False
            return self.kept
        peak, reach = recent_peak_bytes(), memory_within_reach()
        if kept_heap_fits(self.rss_before, peak, reach):
            self.kept = keep_freed_memory(True)
        else:
            self.kept = False
            need = self.rss_before + HEAP_GROWTH * max(peak - self.rss_before, 0)
            log.info(
                f"frepo: freed memory goes back to the system in this run: keeping it (faster on a CPU) could "
                f"take ~{need / 2**30:.1f} GB, over {MEMORY_SHARE:.0%} of the "
                f"{'unknown' if reach is None else f'{reach / 2**30:.1f} GB'} within reach "
                "(FREPO_TUNE_ALLOCATOR=1 keeps it anyway)"
            )
        return self.kept
