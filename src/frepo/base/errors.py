"""The one exception type for user mistakes.

The CLI prints a `FrepoError` as one line on stderr and exits non-zero; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
from typing import Any


class FrepoError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""


class SaidElsewhere(FrepoError):
    """Another process of a torchrun launch refused, and said why (rank 0's "--out holds another run"): this one
    stops with it, in one line too, rather than with a broken connection's traceback when that process left."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by Ctrl-C or SIGTERM after a checkpoint was written. A KeyboardInterrupt, not a
    FrepoError: a script's `except frepo.FrepoError` (a sweep going on past bad settings) caught Ctrl-C too, and
    went on with the next run."""


class FrepoWarning(UserWarning):
    """Every warning frepo gives (`warnings.filterwarnings("ignore", category=frepo.FrepoWarning)`). A warning
    is attributed to the caller's line, not to a frepo module, so `filterwarnings(module="frepo")` cannot
    select them; this category can."""


def check_argument(name: str, value: Any, kinds: type | tuple[type, ...], expected: str) -> None:
    """An argument of the Python API of the wrong kind is a FrepoError naming it and saying what it takes,
    not an AttributeError deep inside (`frepo.evaluate(ds, {"models": 1})`: 'dict' has no 'validate')."""
    if not isinstance(value, kinds):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise FrepoError(f"{name} must be {expected}, got {type(value).__name__} {shown}")


def check_path(name: str, value: Any) -> None:
    """A path argument of the Python API that is no path (`save_distilled(ds, 5)`) is a FrepoError naming it,
    not os.fspath's TypeError."""
    check_argument(name, value, (str, os.PathLike), "a path (a str or a pathlib.Path)")


def out_of_memory(exc: BaseException) -> str | None:
    """One line for an allocation that failed (the GPU's, or the host's), or None for any other error: a
    traceback of torch's allocator said nothing of what to change."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if not isinstance(exc, MemoryError) and not any(
        words in first.lower() for words in ("out of memory", "can't allocate memory", "not enough memory")
    ):
        return None
    # torch's words, without its allocator's name, the GPU's totals or the errno
    detail = first.split("DefaultCPUAllocator: ")[-1]
    for tail in (". GPU", " (GPU", ". Error code"):  # torch >= 2.1's CUDA message, older ones', the host's errno
        detail = detail.split(tail)[0]
    detail = detail[:200]
    detail = detail or type(exc).__name__
    return (
        f"out of memory ({detail}). The settings ask for more than this machine has: lower what sets it (distill: "
        "--batch-size, --chunk-size, --stream on, --ipc; evaluate: fewer --models at once), or use a larger device. "
        "A run that has a checkpoint continues with its own settings only (new ones: another --out); one that "
        "stopped before its first starts afresh with them"
    )
