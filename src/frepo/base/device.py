"""Device selection."""

from __future__ import annotations

import contextlib
import typing
import warnings

import torch

from .errors import FrepoError
from .version import __version__

if typing.TYPE_CHECKING:
    import numpy as np


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise FrepoError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FrepoError(f"device {name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        # refused now, not as CUDA's "invalid device ordinal" once a run's folder is locked and its data read
        count = torch.cuda.device_count()
        raise FrepoError(
            f"device {name!r}: this process sees {count} GPU(s), cuda:0 to cuda:{count - 1} (CUDA_VISIBLE_DEVICES "
            "narrows and renumbers them)"
        )
    return device


def page_locked(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t`, a host tensor bound for `device`, in page-locked memory when `device` is a GPU (itself if it is
    pinned already, or on a CPU). Pinning copies `t` on the host: a background thread can do it ahead
    (`frepo.method.trainer`'s prefetched real batches), and `host_to_device` then sends the pinned tensor."""
    return t.pin_memory() if device.type == "cuda" else t


def host_to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`t`, a host tensor (a step's batch indices, its per-sample augmentation parameters, a prefetched
    real batch, a re-initialised weight drawn on the CPU, a batch of test images), on `device` as `dtype`
    (default: its own), queued without making the host wait for the GPU. Every host-to-device copy of a
    training step goes through here (tests/test_device_boundary.py counts the others). A tensor already on
    a GPU is moved as `.to` moves it.

    Why: a plain `.to` of a host tensor onto a GPU copies it and then waits for the whole stream, so each
    training step's augmentation drained the GPU's queue and the host launched the next kernels only
    then; and with non_blocking from pageable memory the driver may still wait for the stream to stage
    the copy. Here the tensor is converted on the host, copied into page-locked memory (`page_locked`:
    torch's caching host allocator, which keeps the block until the copy has landed) and queued with
    non_blocking. Host sources only: a device-to-host copy with non_blocking may be read before it has
    landed."""
    if t.device.type != "cpu":
        return t.to(device, dtype or t.dtype)
    return page_locked(t.to(dtype or t.dtype), device).to(device, non_blocking=True)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def deterministic_kernels(device: torch.device, on: bool = True):
    """Within the block, on CUDA, cuDNN chooses deterministic algorithms by its heuristics (its default
    choices accumulate with atomics, so two runs with the same seed drift apart: 5e-3 in the images after
    30 outer steps, measured on an H100); with `on=False` it times its algorithms at each new shape and
    keeps the fastest (`cudnn.benchmark`: the choice, and so the rounding, may differ between processes).
    The same holds for inductor (`--compile on`), which code is compiled in the block: on, it makes no choice by
    timing (its reductions' configurations were timed per process, or read from a tuning cache another run
    filled: pytorch/pytorch#99949). The CPU kernels are deterministic already. The previous flags are restored."""
    if device.type != "cuda":
        yield
        return
    import torch._inductor.config as inductor  # ~1 s once per process, on a GPU only

    # inductor's flag exists from torch 2.10 on (pytorch/pytorch#163589); reading it before raises
    has_flag = hasattr(inductor, "deterministic")
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    inductor_before = inductor.deterministic if has_flag else None
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = on, not on
    if has_flag:
        inductor.deterministic = on
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before
        if has_flag:
            inductor.deterministic = inductor_before


def _legacy_flag(read) -> bool | None:
    """A legacy TF32 flag's value, or None where the process set torch >= 2.9's `fp32_precision` for that backend
    instead: torch refuses a mix of its two APIs (reading a legacy flag then raises, and so do its kernels' own
    checks where the two disagree), so each block below sets a backend through the API the process uses for it."""
    try:
        return bool(read())
    except RuntimeError:
        return None


def _matmul_settings() -> tuple:
    """Every setting that `torch.set_float32_matmul_precision` writes: its own (None where torch cannot read it
    back), CUDA's and oneDNN's matmul `fp32_precision`. A legacy flag's write changes some of them."""
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:
        legacy = None
    return legacy, torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision


def _restore_matmul_settings(saved: tuple) -> None:
    legacy, cuda, mkldnn = saved
    if legacy is not None:  # "medium" too, which the flag's write had made "high"
        torch.set_float32_matmul_precision(legacy)
    torch.backends.mkldnn.matmul.fp32_precision, torch.backends.cuda.matmul.fp32_precision = mkldnn, cuda


@contextlib.contextmanager
def _cuda_matmuls(tf32: bool):
    """CUDA's float32 matmuls in TF32 (or exact) inside the block, through the API the process uses for them;
    every setting as it was after it."""
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):  # torch < 2.9: the legacy flag alone
        previous_flag = matmul.allow_tf32
        matmul.allow_tf32 = tf32
        try:
            yield
        finally:
            matmul.allow_tf32 = previous_flag
        return
    flag = _legacy_flag(lambda: matmul.allow_tf32)
    if flag is None:  # on the newer setting: the block stays on it
        previous = matmul.fp32_precision
        matmul.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = previous
        return
    if flag == tf32:  # as wanted already
        yield
        return
    # On the legacy flag (torch's default) the block stays on it: the newer setting alone left the two
    # disagreeing, and cuBLASLt's check of the flag raised "mix of the legacy and new APIs" inside the block.
    saved = _matmul_settings()
    matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32 = flag
        _restore_matmul_settings(saved)


@contextlib.contextmanager
def _cudnn_convolutions_tf32():
    """cuDNN's float32 convolutions in TF32 inside the block, through the API the process uses for them."""
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is not None and _legacy_flag(lambda: cudnn.allow_tf32) is None:
        previous = conv.fp32_precision
        conv.fp32_precision = "tf32"
        try:
            yield
        finally:
            conv.fp32_precision = previous
        return
    # The flag alone, not cudnn.flags(), which sets every flag it is not given: cuDNN on where the user turned
    # it off, the benchmark limit back to 10, the depthwise kernel choice back to "auto".
    previous_flag = cudnn.allow_tf32
    # the flag's write sets the convolutions' and the RNNs' newer settings too (torch >= 2.9)
    newer = [getattr(cudnn, name) for name in ("conv", "rnn") if hasattr(getattr(cudnn, name, None), "fp32_precision")]
    previous = [backend.fp32_precision for backend in newer]
    cudnn.allow_tf32 = True
    try:
        yield
    finally:
        cudnn.allow_tf32 = previous_flag
        for backend, value in zip(newer, previous):
            backend.fp32_precision = value


@contextlib.contextmanager
def tf32_passes():
    """TF32 matmuls and convolutions inside the block (a feature pass on CUDA); the process's own settings
    again after it."""
    with _cuda_matmuls(tf32=True), _cudnn_convolutions_tf32():
        yield


# The devices whose float32 matmuls may run in TF32 (a test models one on the host).
TF32_DEVICES = {"cuda"}


@contextlib.contextmanager
def exact_matmuls(device: torch.device | None):
    """Exact (IEEE) float32 matmuls inside the block on `device`, whatever the process allows; its own setting,
    exactly as it was, after it. For the products whose rounding matters: the kernel Gram, whose ridge is 1e-6
    of its mean eigenvalue (TF32 rounds to about 1e-3), and the ZCA covariance, which is cached and reused. A
    user's `torch.backends.cuda.matmul.allow_tf32 = True` (or inductor's advice, `set_float32_matmul_precision
    ("high")`) computed them in TF32. Matmuls only, and only on a device where TF32 exists: nothing else of the
    process's settings is touched, and the block stays on whichever of torch's two TF32 APIs the process is on."""
    if device is None or device.type not in TF32_DEVICES:
        yield
        return
    with _cuda_matmuls(tf32=False):
        yield


def machine_key(device: torch.device) -> dict:
    """What besides the settings decides a trained network's numbers: the device, its hardware, the threads
    and the libraries (summation orders differ between them), as plain JSON. The device's kind, not its index:
    `cuda` and `cuda:0` are the same GPU, and each rank of a torchrun its own `cuda:k` of the same model."""
    if device.type == "cuda":
        hardware = {"gpu": torch.cuda.get_device_name(device), "cudnn": torch.backends.cudnn.version()}
    else:
        hardware = {"cpu": torch.backends.cpu.get_cpu_capability()}
    return {
        "device": device.type,
        **hardware,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "frepo": __version__,
    }


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """`torch.from_numpy`, for arrays of a dataset, which may be read-only (a memory-mapped cache, an .npz shared
    by every caller): the tensor shares their memory and is only read, so torch's warning that it cannot
    protect a read-only array ("The given NumPy array is not writable") would tell a user nothing. Only such an
    array changes the warning filters (not thread-safe): the prefetch thread's batches are copies."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
