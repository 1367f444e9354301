"""torch.compile with inductor's on-disk cache kept apart for each CPU.

Inductor's FX graph cache (torch 2.14) does not key its generated C++ on the CPU's vector width. A graph
generated where ATen runs AVX-512 (16 floats a vector) and found again where it runs AVX2 (8) is rebuilt
with AVX2 flags from C++ written for 16-wide vectors. Measured on a 2-core AVX-512 machine, with one cache
directory shared between ATEN_CPU_CAPABILITY=avx512 and avx2 (which stands in for an AVX2 host): the
Conv's compiled forward returned NaN, the frepo protocol's compiled network trained to NaN (so it would
have scored chance), and the reverse order aborted with "malloc_consolidate(): invalid chunk size". With
ATen's 'default' level, the reused C++ did not compile ("'transpose_mxn' was not declared"). One cache
serves mismatched CPUs wherever a directory outlives or spans machines: a home or /tmp shared by cluster
nodes, a container image built elsewhere, a VM moved to another host.

So every compile in frepo goes through `torch_compile`, which points inductor at a subdirectory named
after this CPU (its ATen capability and a digest of its feature flags) under the directory inductor would
have used (TORCHINDUCTOR_CACHE_DIR, or torch's default). Same CPU, same warm cache; another CPU, its own.
"""

from __future__ import annotations

import hashlib
import os
import platform
from typing import Any

import torch

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
PREFIX = "frepo-cpu-"


def cpu_cache_key() -> str:
    """'<ATen capability>-<digest of the CPU's flags>', e.g. 'avx512-3f2a…': what inductor's C++ depends on.
    The capability honours ATEN_CPU_CAPABILITY, as inductor's choice of vector width does."""
    capability = torch.backends.cpu.get_cpu_capability().lower()
    flags = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            # x86 lists its features as "flags", ARM as "Features"; every core has the same.
            flags += next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:  # not Linux: the machine and the capability are what is known
        pass
    return f"{capability}-{hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def use_cpu_keyed_cache() -> str:
    """Point inductor's cache at this CPU's own subdirectory (idempotent) and return it."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    base = os.path.abspath(os.environ.get(CACHE_ENV) or default_cache_dir())
    if os.path.basename(base).startswith(PREFIX):  # already keyed: this process earlier, or its parent
        base = os.path.dirname(base)
    path = os.path.join(base, PREFIX + cpu_cache_key())
    os.environ[CACHE_ENV] = path
    return path


def torch_compile(fn: Any, **options: Any) -> Any:
    """`torch.compile(fn, **options)` with this CPU's own inductor cache (see the module's docstring)."""
    use_cpu_keyed_cache()
    return torch.compile(fn, **options)
