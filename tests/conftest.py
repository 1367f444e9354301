"""Shared fixtures. Tests run on the CPU, seeded, with a private cache folder."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl  # scikit-learn's
import torch

from frepo.base import perf

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


if "OMP_NUM_THREADS" not in os.environ:  # OMP_NUM_THREADS=1: one thread in each process
    # pytest-xdist's workers (`-n auto`, pyproject.toml) share the cores: one worker per core, one thread each,
    # and the processes a test starts take the same (children read OMP_NUM_THREADS).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, min(2, (os.cpu_count() or 1) // workers))
    torch.set_num_threads(threads)
    if workers > 1:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no pool of compile processes beside them
        # numpy's BLAS (scikit-learn's attacks) read its thread count at import, before this: set it here.
        threadpoolctl.threadpool_limits(threads)


def pytest_configure(config):
    """The children of a process that runs tests itself (`-n 0`, or an xdist worker) take its thread count too: a
    record keyed on the thread count (frepo's machine_key) written by a child at torch's default and read by the
    test at its own was another machine's (`-n 0` on 4 cores). Not in xdist's controller: its workers inherit its
    environment, then skipped their own choice above and ran 2 threads each on 2 cores (a 21-minute suite)."""
    if "OMP_NUM_THREADS" not in os.environ and (
        hasattr(config, "workerinput") or not config.getoption("numprocesses", None)
    ):
        os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())


# Set once per process, by design: scikit-learn's and inductor's imports (OpenMP switches), and frepo's first
# compilation (its per-CPU inductor cache, for child processes too: frepo.base.compiler).
_SET_ONCE = {
    "KMP_DUPLICATE_LIB_OK",
    "KMP_INIT_AT_FORK",
    "TORCHINDUCTOR_CACHE_DIR",
    "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR",
    "PYTEST_CURRENT_TEST",
}


def _library_folder(path: str) -> bool:
    """A library's own folders join the import path once, on first use (setuptools' vendored packages when
    inductor first compiles): not a test's doing. Wherever the libraries are installed."""
    return any(part in ("site-packages", "dist-packages") for part in Path(path).parts)


_FP32_PRECISION = ("", "cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")


_LEGACY_TF32 = (
    torch.get_float32_matmul_precision,
    lambda: torch.backends.cuda.matmul.allow_tf32,
    lambda: torch.backends.cudnn.allow_tf32,
)


def _attempt(read):
    try:
        return read()
    except RuntimeError:  # torch's "mix of the legacy and new APIs"
        return "refused"


def _backend(path: str):
    return functools.reduce(getattr, filter(None, path.split(".")), torch.backends)


def _process_state() -> dict[str, object]:
    """What one test could leave behind for the next in its process: torch's and numpy's global switches and
    random generators, the environment, the working folder. Under pytest-xdist the tests a worker runs, and
    their order, change from run to run, so a leak would fail other tests by chance."""
    return {
        "default dtype": torch.get_default_dtype(),
        "grad mode": torch.is_grad_enabled(),
        "threads": torch.get_num_threads(),
        "deterministic algorithms": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "cudnn": (torch.backends.cudnn.enabled, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
        # torch's two TF32 APIs: the legacy ones (unreadable where a test left the two disagreeing) and the
        # per-backend settings (readable always).
        "TF32 flags": tuple(_attempt(read) for read in _LEGACY_TF32),
        "fp32 precision": tuple(getattr(_backend(path), "fp32_precision", None) for path in _FP32_PRECISION),
        "numpy RNG": np.random.get_state(),
        "environment": {k: v for k, v in os.environ.items() if k not in _SET_ONCE},
        "working folder": os.getcwd(),
        "import path": [path for path in sys.path if not _library_folder(path)],
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, tuple) and a and isinstance(a[1], np.ndarray):  # numpy's RNG state
        return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]
    return a == b


def _restore(state: dict) -> None:
    torch.set_default_dtype(state["default dtype"])
    torch.set_grad_enabled(state["grad mode"])
    torch.set_num_threads(state["threads"])
    mode, warn_only = state["deterministic algorithms"]
    torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    cudnn = torch.backends.cudnn
    cudnn.enabled, cudnn.deterministic, cudnn.benchmark = state["cudnn"]
    _restore_tf32(state)
    np.random.set_state(state["numpy RNG"])
    for key in os.environ.keys() - state["environment"].keys() - _SET_ONCE:
        del os.environ[key]
    os.environ.update(state["environment"])
    os.chdir(state["working folder"])
    sys.path[:] = [path for path in sys.path if _library_folder(path) or path in state["import path"]]


def _restore_tf32(state: dict) -> None:
    """torch's TF32 settings as `_process_state` read them: a legacy flag's write also sets per-backend
    settings (cudnn.allow_tf32 = False makes the convolutions' "tf32" "ieee"), so writing the flags back alone
    does not undo a write of them."""
    precision, _, cudnn_flag = state["TF32 flags"]
    if precision != "refused":  # the legacy settings first: each write sets some per-backend ones too
        torch.set_float32_matmul_precision(precision)
    if cudnn_flag != "refused":
        torch.backends.cudnn.allow_tf32 = cudnn_flag
    for path, value in zip(_FP32_PRECISION, state["fp32 precision"]):
        if value is not None:
            _backend(path).fp32_precision = value


@contextlib.contextmanager
def tf32_settings_restored():
    """torch's TF32 settings, whatever the block writes, as they were after it."""
    state = _process_state()
    try:
        yield
    finally:
        _restore_tf32(state)


@pytest.fixture
def exact_fp32():
    """Turn TF32 off (cuDNN allows it for convolutions by default), so CPU and GPU compute the same maths."""
    # Restored whole: writing the flags back left the newer per-backend settings changed ("ieee" for "none"),
    # and the process guard failed every test that used this.
    with tf32_settings_restored():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield


# torch's global CPU generator as the process starts (torch's fixed default seed), and that seed for the CUDA
# generators. Tests may draw from them (frepo's commands never do: tests/test_cli.py checks), so each test, and
# each fixture set up between tests, starts from this state: which tests a pytest-xdist worker ran before is
# then no part of any test's numbers.
_TORCH_RNG_AT_START = torch.random.get_rng_state()
_TORCH_SEED_AT_START = torch.initial_seed()


def _as_at_start() -> None:
    """What a test may change by design and finds reset: torch's global generators, and whether the process
    asked for allocator tuning (the CLI's start does, in every in-process `main()`; a library distillation
    after it would choose the allocator by the memory free at that moment)."""
    torch.random.set_rng_state(_TORCH_RNG_AT_START)
    if torch.cuda.is_available():  # lazy where CUDA is not started yet: no device is touched for it
        torch.cuda.manual_seed_all(_TORCH_SEED_AT_START)
    if perf._opted_in:  # and glibc's allocator as it comes, as the CLI's start found it
        perf.keep_freed_memory(False)
        perf._opted_in = False


@pytest.fixture(autouse=True)
def leaves_the_process_as_found():
    """Each test must leave the process's global state as it found it (restore what you change: monkeypatch).
    A change is reported as the leaking test's error, and put back."""
    _as_at_start()
    before = _process_state()
    yield
    _as_at_start()
    after = _process_state()
    changed = [name for name in before if not _same(before[name], after[name])]
    if changed:
        if "environment" in changed:
            env_before, env_after = before["environment"], after["environment"]
            keys = sorted(k for k in env_before.keys() | env_after.keys() if env_before.get(k) != env_after.get(k))
            changed[changed.index("environment")] = f"environment ({', '.join(keys)})"
        _restore(before)
        pytest.fail(f"the test left the process changed: {'; '.join(changed)}", pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Never read or write the user's ~/.cache/frepo from tests: one cache per process (each xdist worker has
    its own base folder), set before any fixture, the module-scoped ones included."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FREPO_CACHE", str(tmp_path_factory.getbasetemp() / "frepo-cache"))
        yield


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


def counted_protocol(original, trained: list[str], stop_at: int | None = None):
    """The protocol `original` (a `frepo.eval.protocols.PROTOCOLS` entry) training its networks one by one,
    each network's stream appended to `trained`; a KeyboardInterrupt in place of the `stop_at`-th (1-based)."""
    import dataclasses

    def one(setup, options, stream):
        if len(trained) + 1 == stop_at:
            raise KeyboardInterrupt
        trained.append(stream)
        return original.train_and_test(setup, options, stream)

    return dataclasses.replace(original, train_and_test=one)


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
