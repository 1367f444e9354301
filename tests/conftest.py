"""Shared fixtures. Tests run on the CPU, seeded, with a private cache folder."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# torch.compile on a CPU builds the C++ it generates with $CXX or g++ (inductor's config.cpp.cxx): a minimal image
# (a slim Python container) has no compiler.
needs_cxx = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX") or "g++") is None,
    reason="torch.compile on a CPU compiles C++ with $CXX or g++, and neither is here",
)

# glibc's allocator, as the allocator tests measure it: Linux's /proc, and no musl (whose allocator keeps no freed
# heap to tune), no other allocator preloaded (jemalloc, tcmalloc) and no glibc tunables in the environment.
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's allocator and Linux's /proc",
)
NOT_GLIBC_AS_IT_COMES = ("FREPO_TUNE_ALLOCATOR", "LD_PRELOAD", "GLIBC_TUNABLES", "LOCAL_WORLD_SIZE")


def glibc_env() -> dict[str, str]:
    """This environment without what changes glibc's allocator (or frepo's tuning of it)."""
    return {k: v for k, v in os.environ.items() if k not in NOT_GLIBC_AS_IT_COMES and not k.startswith("MALLOC_")}


if "OMP_NUM_THREADS" not in os.environ:  # OMP_NUM_THREADS=1 runs the suite single-threaded
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's ~/.cache/frepo from tests."""
    monkeypatch.setenv("FREPO_CACHE", str(tmp_path_factory.getbasetemp() / "frepo-cache"))


@pytest.fixture
def shared_data_dir() -> Path:
    """The folder of offline real datasets (set by .ci/run); tests that need it skip without it."""
    folder = os.environ.get("FREPO_DATA_DIR")
    if not folder or not Path(folder).is_dir():
        pytest.skip("FREPO_DATA_DIR is not set to the shared data folder (../shared/data); .ci/run sets it")
    return Path(folder)


def make_blobs_npz(
    path: Path, n_per_class: int = 30, classes: int = 3, size: int = 8, channels: int = 1, seed: int = 0
) -> Path:
    """A small, learnable image dataset: each class is a bright square at its own position, plus noise."""
    rng = np.random.default_rng(seed)

    def split(n):
        x = rng.integers(0, 60, size=(n * classes, size, size, channels)).astype(np.int64)
        y = np.repeat(np.arange(classes), n)
        for i, c in enumerate(y):
            r = (c * size // classes) % (size - 3)
            x[i, r : r + 3, r : r + 3, :] += 180
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = split(n_per_class)
    x_test, y_test = split(max(n_per_class // 2, 4))
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture
def blobs(tmp_path) -> Path:
    return make_blobs_npz(tmp_path / "blobs.npz")


def _meta_problem(device: str | torch.device = "cpu"):
    """A small meta-step problem on `device`: a batch-norm Conv with non-trivial running statistics,
    a 12-image synthetic set, 20 real images and their centred targets (4 classes, 3×8×8)."""
    from frepo.method.krr import centered_one_hot
    from frepo.method.synthetic import SyntheticSet
    from frepo.models import Conv

    gen = torch.Generator().manual_seed(0)
    model = Conv(3, 4, (8, 8), width=8, depth=2, norm="batch", generator=gen)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 8, 8, generator=gen))  # non-trivial running statistics
    syn = SyntheticSet(torch.randn(12, 3, 8, 8, generator=gen), torch.arange(12) % 4, 4)
    x_real = torch.randn(20, 3, 8, 8, generator=gen)
    y_real = centered_one_hot(torch.arange(20) % 4, 4)
    return model.to(device), syn.to(device), x_real.to(device), y_real.to(device)


@pytest.fixture
def meta_problem():
    """`meta_problem(device)` -> (model, synthetic set, real images, real targets), the same on every call."""
    return _meta_problem


@contextlib.contextmanager
def ctrl_c_after_steps(steps: int):
    """Within the block, a real Ctrl-C (SIGINT) arrives after the run's `steps`-th outer step: the interruption
    the resume tests make, its trainer's step put back on leaving."""
    from frepo.method.trainer import FRePoTrainer

    original, done = FRePoTrainer.step, [0]

    def step_then_interrupt(self):
        metrics = original(self)
        done[0] += 1
        if done[0] == steps:
            signal.raise_signal(signal.SIGINT)
        return metrics

    FRePoTrainer.step = step_then_interrupt  # type: ignore[method-assign]
    try:
        yield
    finally:
        FRePoTrainer.step = original  # type: ignore[method-assign]


@pytest.fixture
def quick_mlp(monkeypatch):
    """The `frepo` set's MLP attack capped at 20 iterations: its 500 took 0.9 s a fit on these few hundred
    examples, half of a small privacy run. Tests of the experiment's plumbing use it; tests/test_attacks.py
    tests the attacks as they are."""
    from frepo.apps import attacks

    original = attacks._classifier

    def classifier(name, seed):
        model = original(name, seed)
        return model.set_params(mlpclassifier__max_iter=20) if name == "mlp" else model

    monkeypatch.setattr(attacks, "_classifier", classifier)
