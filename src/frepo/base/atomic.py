"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.

A crash, Ctrl-C or a full disk mid-write leaves the previous file intact and no partial file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .errors import FrepoError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `target`; on success it replaces `target` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise FrepoError(
            f"could not write {target}: {exc.strerror or exc}; the previous version, if any, is intact"
        ) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    with atomic_path(target) as tmp:
        write(tmp)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write(target, lambda p: p.write_text(text))


def atomic_write_json(target: str | os.PathLike, obj) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj, target: str | os.PathLike) -> None:
    atomic_write(target, lambda p: torch.save(obj, p))


def atomic_save_safetensors(tensors: dict, target: str | os.PathLike, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    atomic_write(target, lambda p: save_file(tensors, str(p), metadata=metadata))
