"""sha256 checksums of files and folders: what a result records of the set it evaluated, and what an export's
manifest records of each file it wrote."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_checksum(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and bytes, in sorted order)."""
    return checksums(path)[0]


def checksums(path: str | Path) -> tuple[str, dict[str, str]]:
    """`file_checksum(path)` and, read in the same pass, the sha256 of each file by its name relative to
    `path` (a file: its own name)."""
    path = Path(path)
    digest, each = hashlib.sha256(), {}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        own = hashlib.sha256()
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                own.update(block)
        each[name] = own.hexdigest()
    return digest.hexdigest(), each
