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
    if not path.is_dir():
        digest = _sha256(path, [])
        return digest, {path.name: digest}
    whole, each = hashlib.sha256(), {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        whole.update(str(file.relative_to(path)).encode() + b"\0")
        each[file.relative_to(path).as_posix()] = _sha256(file, [whole])
    return whole.hexdigest(), each


def _sha256(file: Path, also: list) -> str:
    """sha256 of the file's bytes, which also go into each hash of `also` (read once)."""
    own = hashlib.sha256()
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            own.update(block)
            for digest in also:
                digest.update(block)
    return own.hexdigest()
