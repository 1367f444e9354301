"""A decoded dataset kept on disk as uint8 `.npy` arrays, opened memory-mapped.

Decoding 100 000 JPEGs (Tiny ImageNet) or ten 1.5 GB `.npz` batches (ImageNet 64×64) takes minutes;
holding ImageNet's 1.28 M images in memory takes 15.7 GB even as uint8. So a layout reader decodes
once, chunk by chunk, into `FOLDER/<array>.npy` files, and every later load maps them: nothing is read
until a batch touches it, and the host memory of a run stays O(batch), not O(dataset).

The cache is written into a temporary sibling folder and renamed into place when complete, so a killed
build leaves no half cache behind. One process builds a cache at a time (an `flock` on a sibling
`.<name>.lock`): a second waits, then maps what the first built, and the holder of the lock removes the
temporary folders of builds that were killed (a kill -9 of an ImageNet decode left 16 GB behind, once per
attempt). `source.json` records the source files' sizes and modification times: when they change, the
cache is rebuilt.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import glob
import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import socket
import tempfile
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..base.atomic import free_bytes
from ..base.errors import FrepoError
from ..base.lock import lock_file, open_lock_file, release_lock_file

FORMAT = 1

log = logging.getLogger(__name__)


def _advise(array: np.ndarray, advice: str) -> None:
    """madvise(`advice`, a name in `mmap`) on a memory-mapped array's mapping, where the OS has it; an
    in-memory array, or a refusal, is left alone (the advice only tunes paging)."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mmap, advice):
        try:
            mapping.madvise(getattr(mmap, advice))
        except (OSError, ValueError):
            pass


def advise_random(array: np.ndarray) -> np.ndarray:
    """Tell the kernel that a memory-mapped array is read at random rows (real batches): no readahead
    around each row, so a batch of 256 rows reads ~256 rows from a cold disk, not 256 × 128 KB."""
    _advise(array, "MADV_RANDOM")
    return array


def release(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process's resident set once a chunk has been copied
    out: they stay in the page cache (a later read is a minor fault, or a disk read if the kernel needed the
    memory), but a pass over a 15.7 GB split no longer shows as 15.7 GB of the process's RSS."""
    _advise(array, "MADV_DONTNEED")


def signature(files: list[Path]) -> dict:
    """What identifies the source of a cache: each file's name, size and modification time."""
    entries = []
    for f in files:
        st = f.stat()
        entries.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return {"format": FORMAT, "files": entries}


Shapes = dict[str, tuple[tuple[int, ...], np.dtype]]  # array name -> (shape, dtype)


def open_cached(folder: Path, source: dict, shapes: Shapes | None = None) -> dict[str, np.ndarray] | None:
    """The arrays of a complete cache built from `source` (and of `shapes`, where given), memory-mapped
    read-only; None if absent, incomplete, stale, of other shapes or unreadable (it is then rebuilt, never
    trusted: a cache with one row fewer than the labels would pair every later image with the wrong label)."""
    try:
        meta = json.loads((folder / "source.json").read_text())
        if meta.get("source") != source:
            return None
        arrays = {name: advise_random(np.load(folder / f"{name}.npy", mmap_mode="r")) for name in meta["arrays"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if shapes is not None and {name: (a.shape, a.dtype) for name, a in arrays.items()} != {
        name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in shapes.items()
    }:
        return None
    return arrays


def build_cache(
    folder: Path,
    staging: Path,
    source: dict,
    shapes: Shapes,
    fill: Callable[[dict[str, np.ndarray]], None],
) -> dict[str, np.ndarray]:
    """Create `.npy` files of the given shapes and dtypes in the empty folder `staging`, let `fill` write them
    (memory-mapped, so a reader can fill them chunk by chunk), then publish them as `folder` atomically and
    map it read-only."""
    arrays: dict[str, np.memmap] = {
        name: np.lib.format.open_memmap(staging / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
        for name, (shape, dtype) in shapes.items()
    }
    reserve(staging, [staging / f"{name}.npy" for name in shapes])
    fill(typing.cast(dict[str, np.ndarray], arrays))  # memmaps are arrays (a dict is invariant)
    for array in arrays.values():
        array.flush()
    # `digest` tells these pixels from others decoded from the same source files (an image edited in place under
    # the same name, then the cache deleted by hand): what was fitted on the old pixels is not fitted on these. Of
    # the content, not of the build: a decode of unchanged files (another node's $FREPO_CACHE, a cache deleted to
    # free space) keeps its key and finds its fit.
    record = {"source": source, "arrays": list(shapes), "digest": content_digest(arrays)}
    del arrays
    (staging / "source.json").write_text(json.dumps(record))
    shutil.rmtree(folder, ignore_errors=True)  # a stale cache of older source files
    os.replace(staging, folder)
    opened = open_cached(folder, source, shapes)
    if opened is None:
        raise FrepoError(f"the dataset cache {folder} could not be read back after writing it")
    return opened


def digest_of(folder: Path) -> str:
    """The content digest of the cache at `folder` ("" for a cache built before caches had one, or none)."""
    try:
        return str(json.loads((folder / "source.json").read_text()).get("digest", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def content_digest(arrays: dict[str, np.memmap]) -> str:
    """BLAKE2b of the arrays' bytes, by name, read back in chunks (their pages released as read: a pass over
    ImageNet's 15.7 GB keeps O(chunk) resident, and takes a fraction of its decode's time)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        array = arrays[name]
        digest.update(f"{name}{array.shape}{array.dtype}".encode())
        rows = max(1, (64 << 20) // max(1, array[:1].nbytes))  # ~64 MB a chunk
        for start in range(0, len(array), rows):
            digest.update(np.ascontiguousarray(array[start : start + rows]).tobytes())
            release(array)
    return digest.hexdigest()


def reserve(folder: Path, paths: list[Path]) -> None:
    """Make sure the (sparse) files `paths` in `folder` can be written whole, before anything is decoded into
    them. A memory-mapped write that finds the disk full is no error the program sees: the kernel kills the
    process with SIGBUS ("Bus error", no message, the lock and temp folder left behind). So the space they need
    is checked against what the filesystem has free (an ENOSPC naming both), then reserved where the OS and the
    filesystem can (Linux's fallocate; elsewhere, or on NFSv3 and older ZFS, the files stay sparse and the check
    is all)."""
    needed = sum(path.stat().st_size for path in paths)
    free = free_bytes(folder)
    if free is not None and needed > free:
        raise OSError(
            errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: the decoded dataset takes {size(needed)}, {size(free)} free"
        )
    for path in paths:
        with open(path, "r+b") as file:
            allocate(file.fileno(), os.fstat(file.fileno()).st_size)


def size(count: int) -> str:
    """A byte count as people read it: 15.70 GiB, 3.4 MiB, 96 KiB."""
    if count >= 2**28:
        return f"{count / 2**30:.2f} GiB"
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 2**10:.0f} KiB"


_UNSUPPORTED = {errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), errno.ENOSYS, errno.EINVAL}


def allocate(fd: int, length: int) -> None:
    """fallocate(2) of the file's first `length` bytes: its blocks on disk now, a full disk an ENOSPC OSError.
    Nothing where the OS has no such call or the filesystem cannot (not glibc's posix_fallocate: there it writes
    a byte per block instead, on NFS a second pass over the whole file)."""
    call = libc_fallocate()
    if call is None or length == 0:
        return
    if call(fd, 0, 0, length) != 0:
        code = ctypes.get_errno()
        if code not in _UNSUPPORTED:
            raise OSError(code, os.strerror(code))


@functools.cache
def libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    """The C library's `fallocate` (Linux: glibc, musl), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    call = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if call is None:
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    call.restype = ctypes.c_int
    return call


def cached_arrays(
    folder: Path,
    source: dict,
    shapes: Callable[[], Shapes],
    fill: Callable[[dict[str, np.ndarray]], None],
) -> dict[str, np.ndarray]:
    """The cache at `folder` if it is complete, current and of `shapes()`, else built. An unwritable folder
    is a one-line error naming it (set --data-dir or $FREPO_CACHE to a writable place)."""
    expected = shapes()
    opened = open_cached(folder, source, expected)
    if opened is not None:
        return opened
    try:
        with building(folder) as staging:
            opened = open_cached(folder, source, expected)  # built by the process this one waited for
            return opened if opened is not None else build_cache(folder, staging, source, expected, fill)
    except OSError as exc:
        raise FrepoError(
            f"cannot write the dataset cache {folder}: {exc.strerror or exc} "
            "(it needs the decoded dataset's size in free space; set $FREPO_CACHE to another folder)"
        ) from exc


# This host, as a build's temp folder names it (letters, digits and underscores: no dot, no dash).
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())
# A temp folder of another host (or of an older frepo, named by its pid alone) untouched this long is a killed
# build's: where a filesystem's locks are each host's own, that is all this host can tell.
STALE_ELSEWHERE_S = 24 * 3600


@contextlib.contextmanager
def building(folder: Path) -> Iterator[Path]:
    """Hold `folder`'s build lock, an `flock` on the sibling `.<name>.lock` (waiting, said, for another
    process's build), and yield a fresh temp folder beside `folder`, `.<name>.<host>-<pid>-<random>.tmp`, to
    build in; both go on the way out. The temp folders of killed builds go first: this host's (while the lock
    is held, none of its builds is live) and others' untouched for STALE_ELSEWHERE_S. A filesystem without
    `flock` builds unlocked and removes none."""
    with build_lock(folder) as locked:
        if locked:
            _remove_killed_builds(folder)
        prefix = f".{folder.name}.{_HOST}-{os.getpid()}-"
        staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder.parent))
        try:
            yield staging
        finally:  # only the one this call made (a waiting thread's is another)
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[bool]:
    """Hold `folder`'s build lock, an `flock` on the sibling `.<name>.lock`, waiting (said) for another process's
    build; yields whether it is locked (a filesystem without `flock`: not, said). The lock file goes on the way
    out. `building` with no temp folder: for what another library writes in place (torchvision's downloads)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f".{folder.name}.lock"
    fd, locked = _lock(lock, folder)
    try:
        yield locked
    finally:
        release_lock_file(lock, fd)


def _remove_killed_builds(folder: Path) -> None:
    """Remove the temp folders of builds of `folder` that were killed (see `building`); the caller holds the lock."""
    own = re.compile(re.escape(f".{folder.name}.") + r"(?:(?P<host>[A-Za-z0-9_]+)-\d+-[a-z0-9_]{8}|\d+)\.tmp")
    for path in folder.parent.glob(f".{glob.escape(folder.name)}.*.tmp"):
        match = own.fullmatch(path.name)
        if match is None or not path.is_dir() or path.is_symlink():  # another folder's, or not a build's
            continue
        if match["host"] == _HOST or _untouched_for(path, STALE_ELSEWHERE_S):
            shutil.rmtree(path, ignore_errors=True)


def _untouched_for(path: Path, seconds: float) -> bool:
    """Whether neither `path` nor a file directly in it changed in the last `seconds`."""
    try:
        newest = max([path.stat().st_mtime, *(child.stat().st_mtime for child in path.iterdir())])
    except OSError:
        return False
    return time.time() - newest > seconds


def _lock(lock: Path, folder: Path) -> tuple[int, bool]:
    """(fd, locked): `lock` opened and flocked (`lock_file`), waiting for its holder (said); a filesystem without
    file locks is said too, and builds unlocked."""

    def wait(fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning(f"frepo: another process is building {folder}; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)

    fd, unlocked = lock_file(lock, lambda: open_lock_file(lock), wait)
    if unlocked and lock.parent not in _unlocked_said:  # once a folder: each preprocessing entry asks again
        _unlocked_said.add(lock.parent)
        log.warning(f"frepo: cannot lock {lock} ({unlocked}): building {folder} unlocked (said once a folder)")
    return fd, unlocked is None


_unlocked_said: set[Path] = set()  # the folders whose filesystem was said to have no file locks
