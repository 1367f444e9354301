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
    return device


def host_to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`t`, a small host tensor (an evaluation step's per-sample augmentation parameters or batch indices,
    drawn on the CPU), on `device` as `dtype` (default: its own), queued without making the host wait for
    the GPU.

    Why: a plain `.to` of a host tensor onto a GPU copies it and then waits for the whole stream, so each
    training step's augmentation drained the GPU's queue and the host launched the next kernels only
    then. Here the tensor is converted on the host, copied into page-locked memory (torch's caching host
    allocator, which keeps the block until the copy has landed; from pageable memory the driver may
    have to wait for the stream to stage it) and queued with non_blocking. Host sources only: a
    device-to-host copy with non_blocking may be read before it has landed."""
    t = t.to(dtype or t.dtype)
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


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
