"""Device selection."""

from __future__ import annotations

import contextlib

import torch

from .errors import FrepoError


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
    The CPU kernels are deterministic already. The previous flags are restored."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = on, not on
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def tf32_passes():
    """TF32 matmuls and convolutions inside the block (a feature pass on CUDA); the process's own settings
    again after it."""
    if _legacy_tf32_flags():
        # The flag's write sets the newer setting too: "none" (torch's default, which follows the process-wide
        # `torch.backends.fp32_precision`) would read back "ieee" after it.
        previous, previous_precision = torch.backends.cuda.matmul.allow_tf32, torch.backends.cuda.matmul.fp32_precision
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            # flags() resets every flag it is not given: keep the run's algorithm choice (deterministic_kernels).
            cudnn = torch.backends.cudnn
            with cudnn.flags(
                enabled=True, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=True
            ):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
            torch.backends.cuda.matmul.fp32_precision = previous_precision
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    previous = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = previous


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
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):  # torch < 2.9: the legacy flag alone
        previous_flag = matmul.allow_tf32
        matmul.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32 = previous_flag
        return
    if not _legacy_tf32_flags():  # the process is on torch >= 2.9's settings: the block stays on them
        previous = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision = previous
        return
    # On the legacy flags (torch's default) the block stays on them too: the newer setting alone left the two
    # disagreeing, and torch's check of the legacy flag (cuBLASLt's kernels, a read of `allow_tf32`) raised
    # "mix of the legacy and new APIs" inside the block. The flag sets both for CUDA's matmuls and nothing else.
    # (torch.get_float32_matmul_precision() is no way to read them: it raises after torch's own "medium".)
    if not matmul.allow_tf32:  # exact already: nothing to change
        yield
        return
    matmul.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32 = True


def _legacy_tf32_flags() -> bool:
    """Whether this process sets TF32 through the legacy `allow_tf32` flags (torch's default).

    torch >= 2.9 also has per-backend `fp32_precision` settings, and refuses a mix of the two: once a user has set
    the new ones (e.g. `torch.backends.fp32_precision = "tf32"`), reading a legacy flag raises, and once the new
    ones are set, code that reads the legacy flags raises. So tf32_passes follows whichever API the process is on.
    """
    try:
        _ = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    except RuntimeError:
        return False
    return True
