"""One owner per folder: an exclusive `flock` on FOLDER/.lock, released by the kernel when the process dies
(a kill -9 never leaves a stale lock); a second process is told the owner's pid."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .atomic import WriteError
from .errors import FrepoError

LOCK = ".lock"
log = logging.getLogger(__name__)
# What flock says on a filesystem without file locks: NFS without its lock manager, Lustre without `flock`,
# some FUSE and CIFS mounts.
NO_LOCKS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})


def holder(folder: str | os.PathLike) -> str | None:
    """The pid of another process that holds `folder`'s lock now, or None (no lock file, nobody holds it, or
    this process does). Reads only: the lock file is neither made nor changed."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        return None if pid == str(os.getpid()) else pid
    except OSError:
        return None
    finally:
        os.close(fd)  # and with it a shared lock taken
    return None


class FolderLock:
    def __init__(self, folder: str | os.PathLike, what: str = "--out"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK
        self.created: list[Path] = []  # folders and the lock file this lock made, oldest first
        self._fd: int | None = None

    def acquire(self) -> None:
        """Make the folder if needed and lock it for this process, or say who holds it."""
        if self.folder.exists() and not self.folder.is_dir():
            raise FrepoError(f"{self.what} {self.folder} exists and is not a directory")
        try:
            missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
            self.folder.mkdir(parents=True, exist_ok=True)
            self.created = [p for p in reversed(missing) if p.is_dir()]
        except OSError as exc:
            raise WriteError(f"cannot use {self.what} {self.folder}: {exc.strerror or exc}") from exc
        try:
            fd, unlocked = lock_file(self.path, self._open, _flock_soon)
        except BlockingIOError:
            holder = _read_holder(self.path)
            raise FrepoError(
                f"{self.folder} is in use by another frepo process (pid {holder}); wait for it to finish, "
                f"or use another {self.what}"
            ) from None
        except OSError as exc:  # it was a traceback, the descriptor left open
            raise WriteError(f"cannot lock {self.what} {self.folder}: {exc.strerror or exc}") from exc
        if unlocked:
            log.warning(
                f"frepo: cannot lock {self.folder} ({unlocked}): a second process on it would not be refused; "
                "run one at a time there, or use a local folder"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _open(self) -> int:
        """The lock file, opened (made, and then among `created`, where it was not there)."""
        try:
            had_lock = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise WriteError(f"cannot use {self.what} {self.folder}: {exc.strerror or exc}") from exc
        if not had_lock and self.path not in self.created:
            self.created.append(self.path)
        return fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def undo(self) -> None:
        """Remove what acquire() created (after a start that failed), the lock file while still held, and release."""
        for path in reversed(self.created):
            try:
                path.unlink() if path == self.path else path.rmdir()
            except OSError:
                pass
            if path == self.path:
                self.release()
        self.release()
        self.created = []


@contextlib.contextmanager
def one_writer(target: Path, what: str) -> Iterator[None]:
    """Hold `target`'s write lock, an exclusive `flock` on the sibling `.<name>.lock`, or refuse: a second
    process writing the same `target` (an export into one folder) removed the first one's temp folder as a
    killed write's, under it. The lock file goes on the way out; a filesystem without file locks writes
    unlocked, said."""
    lock = target.parent / f".{target.name}.lock"

    def open_file() -> int:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            return open_lock_file(lock)
        except OSError as exc:
            raise WriteError(f"cannot write beside {target}: {exc.strerror or exc}") from exc

    try:
        fd, unlocked = lock_file(lock, open_file, lambda fd: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))
    except BlockingIOError:
        raise FrepoError(
            f"another frepo process is writing {what} {target} (pid {_read_holder(lock)}); wait for it to finish, "
            f"or use another {what}"
        ) from None
    except OSError as exc:
        raise WriteError(f"cannot lock {target}: {exc.strerror or exc}") from exc
    try:
        if unlocked:
            log.warning(f"frepo: cannot lock {target} ({unlocked}): write it from one process at a time")
        with contextlib.suppress(OSError):  # another user's file, opened read-only: its pid stays unsaid
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        release_lock_file(lock, fd)


def open_lock_file(lock: Path) -> int:
    """A lock file, opened (made where missing) for `lock_file`: read-write, or read-only where it is another
    user's (left by a kill in a shared folder: flock needs no write access, but on NFS)."""
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError as denied:
        try:
            return os.open(lock, os.O_RDONLY)
        except OSError:
            raise denied from None  # the folder is not writable: said as such


def release_lock_file(lock: Path, fd: int) -> None:
    """Remove a held lock file, then close it, and with it the lock. Removed while held, a process that locks
    the old file sees it gone and retries (`lock_file`); another user's file stays."""
    try:
        with contextlib.suppress(OSError):
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _flock_soon(fd: int, tries: int = 20, pause: float = 0.05) -> None:
    """An exclusive flock, tried `tries` times `pause` seconds apart before its BlockingIOError: `holder()`, which
    evaluate, show, export and report call on a run folder, holds a shared lock for a moment, and a run starting
    then was refused, naming a pid that had gone."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(pause)


def lock_file(path: Path, open_file: Callable[[], int], take: Callable[[int], None]) -> tuple[int, str | None]:
    """(fd, unlocked): the file at `path`, opened by `open_file` and flocked by `take` (which raises
    BlockingIOError, or waits), and checked to be the file at `path` now, not one its last holder removed as
    this process opened it (then: again, on the file there; on a filesystem whose inode numbers are not
    stable, the tenth lock stands). unlocked is None, or where the filesystem has no file locks (`NO_LOCKS`;
    EBADF: NFS's on a file opened read-only), the OS's words. The descriptor is closed on any failure."""
    for attempt in range(10):
        fd = open_file()
        try:
            take(fd)
        except OSError as exc:
            if not isinstance(exc, BlockingIOError) and (exc.errno in NO_LOCKS or exc.errno == errno.EBADF):
                return fd, exc.strerror or str(exc)
            os.close(fd)
            raise
        except BaseException:  # Ctrl-C while waiting
            os.close(fd)
            raise
        if same_file(fd, path) or attempt == 9:
            return fd, None
        os.close(fd)
    raise AssertionError("unreachable: the tenth attempt returns")


def _read_holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:64] or "unknown"
    except OSError:
        return "unknown"


def same_file(fd: int, path: Path) -> bool:
    """Whether the open `fd` is the file at `path` now (not one removed, or replaced, since it was opened)."""
    try:
        now, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
