"""frepo.base.compiler: inductor's cache is kept apart for each CPU, so C++ generated for one vector width
never runs on another (the module's docstring has the failure this guards against)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import needs_cxx

from frepo.base.compiler import CACHE_ENV, PREFIX, cpu_cache_key, use_cpu_keyed_cache

NATIVE = torch.backends.cpu.get_cpu_capability()
# ATEN_CPU_CAPABILITY below this CPU's own stands in for another CPU sharing the cache directory.
OTHER = {"AVX512": "avx2", "AVX2": "default"}.get(NATIVE)

# Trains the frepo protocol's network eagerly and compiled from the same seeds and prints, for each tensor,
# how far the compiled one ended from the eager one against how far training moved it.
TRAIN = """
import dataclasses, json, torch
from frepo.eval.protocol import ReferenceTraining
from frepo.eval.protocols.frepo import train_reference_model
from frepo.models import build_model
gen = torch.Generator().manual_seed(0)
images, labels = torch.randn(12, 3, 8, 8, generator=gen), torch.arange(12) % 3
targets = torch.nn.functional.one_hot(labels, 3).float() - 1 / 3
training = ReferenceTraining(num_classes=3, steps=3, ops=("flip", "crop"), device=torch.device("cpu"), width=8)
eager = train_reference_model(images, targets, training, torch.Generator().manual_seed(1))
compiled = train_reference_model(
    images, targets, dataclasses.replace(training, compile=True), torch.Generator().manual_seed(1)
)
start = build_model("conv", (3, 8, 8), 3, generator=torch.Generator().manual_seed(1), width=8).state_dict()
print(json.dumps({name: [float((compiled.state_dict()[name] - a).norm()), float((a - start[name]).norm())]
                  for name, a in eager.state_dict().items()}))
"""


def test_the_cache_is_this_cpus_subdirectory_of_the_one_inductor_would_use(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    path = use_cpu_keyed_cache()
    assert path == str(tmp_path / (PREFIX + cpu_cache_key())) == os.environ[CACHE_ENV]
    assert cpu_cache_key().startswith(NATIVE.lower() + "-")
    assert use_cpu_keyed_cache() == path  # idempotent: a keyed directory is not keyed again (child processes)
    monkeypatch.delenv(CACHE_ENV)
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    assert use_cpu_keyed_cache() == os.path.join(os.path.abspath(default_cache_dir()), PREFIX + cpu_cache_key())


def test_another_cpu_capability_gets_another_key():
    """The property itself, with no compiler needed: a process whose ATen capability is lower (standing in for
    another CPU) computes another key than this one."""
    probe = "from frepo.base.compiler import cpu_cache_key; print(cpu_cache_key())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    other = proc.stdout.strip()
    assert other.startswith("default-")
    if NATIVE != "DEFAULT":
        assert other != cpu_cache_key()


@pytest.mark.skipif(OTHER is None, reason=f"no lower ATen CPU capability than {NATIVE} to stand in for another CPU")
@needs_cxx
def test_a_cache_filled_on_another_cpu_does_not_reach_the_compiled_network(tmp_path):
    """Without the per-CPU subdirectory, the second run below reused the first's AVX-512 C++ under AVX2 and
    its compiled network trained to NaN (with 'default', the reused C++ did not compile)."""
    # One compile thread: no pool of compile workers competing with the other test processes.
    env = {**os.environ, CACHE_ENV: str(tmp_path), "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    runs = {}
    for capability in (NATIVE.lower(), OTHER):
        proc = subprocess.run(
            [sys.executable, "-c", TRAIN],
            env={**env, "ATEN_CPU_CAPABILITY": capability},
            capture_output=True,
            text=True,
            timeout=600,  # two cold compiles of forward and backward: 20-45 s each alone, more beside other tests
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[capability] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(PREFIX)) == sorted(
        f"{PREFIX}{c}-{cpu_cache_key().split('-', 1)[1]}" for c in runs
    )
    for capability, tensors in runs.items():
        for name, (gap, moved) in tensors.items():
            # Inductor sums in another order than eager kernels: a float-rounding gap, far below how far
            # three Adam steps moved each tensor (a wrong kernel is off by ~100% or NaN).
            assert moved > 0 and gap < 1e-2 * moved, (capability, name, gap, moved)
