"""Every file frepo writes goes through here: a temp file in the same folder, fsync, then an atomic rename
over the target, with the permissions the user's umask asks for (0644 under umask 022).

A crash, Ctrl-C or a full disk mid-write leaves the previous file intact and no partial file; a full
or unwritable disk (an OSError, torch's RuntimeError, safetensors' own error) becomes one `WriteError`
line that names the file and the cause. Temp files a killed process left behind are removed with
`remove_stale_temps` in a folder this process owns, and anywhere at the next write of their file once an hour
old (`atomic_path`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .errors import FrepoError, Interrupted
from .signals import aborting

log = logging.getLogger(__name__)
TEMP_SUFFIX = ".tmp"
_PREVIOUS = ".previous" + TEMP_SUFFIX  # the folder `atomic_folder` moves a previous version into
# What follows `.<target>.` in the name of a temp file or folder of `target`'s writes (mkstemp's 8 characters).
_OWN_TEMP = re.compile(r"[a-z0-9_]{8}(\.previous)?" + re.escape(TEMP_SUFFIX))
FULL_BELOW = 1 << 20  # a filesystem with less free space than this (bytes) counts as full


class WriteError(FrepoError):
    """A file could not be written (a full or unwritable disk): why, and which file. The previous version
    of the file, if any, is intact."""

    def __init__(self, message: str, reason: str | None = None, target: Path | None = None):
        super().__init__(message)
        self.reason, self.target = reason, target


def umask() -> int:
    """The process's umask, read without changing it where /proc allows (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def free_bytes(folder: Path) -> int | None:
    """The bytes an unprivileged write may still take in `folder`'s filesystem (None where the OS cannot say)."""
    if not hasattr(os, "statvfs"):
        return None
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def _nearly_full(folder: Path) -> bool:
    try:
        free = free_bytes(folder)
    except OSError:
        return False
    return free is not None and free < FULL_BELOW


def write_failure(exc: BaseException, folder: Path | None = None) -> str | None:
    """Why a write failed, in a few words, when `exc` is what a writer raises for a disk problem (full,
    read-only, no permission, not a folder): an OSError, or torch's RuntimeError / safetensors' own
    error from inside a write; None for anything else."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "No space left on device"
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # mkdir or open under a path whose part is a file
            return "a file stands where its path needs a folder"
        return exc.strerror or str(exc)
    if isinstance(exc, RuntimeError) or type(exc).__name__ == "SafetensorError":
        text = str(exc).strip()
        if "No space left" in text or "StorageFull" in text or (folder is not None and _nearly_full(folder)):
            return "No space left on device"
        return f"The write failed ({text.splitlines()[0][:160] if text else type(exc).__name__})"
    return None


def writable_folder(path: str | os.PathLike, what: str = "output") -> Path:
    """Create folder `path` if needed and check that files can be made in it, before long work starts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(f"{what} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot write into {what} {path}: {write_failure(exc)}") from exc
    _probe(path, path, what)
    return path


def _probe(folder: Path, named: Path, what: str) -> None:
    """Check that a file can be made in `folder` (made and removed at once); the error names `named`."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".frepo-probe.", suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        # A folder that exists yet answers "no such file" to a new file is a virtual one (/proc, /sys)
        virtual = exc.errno == errno.ENOENT and folder.is_dir()
        reason = "files cannot be created in it" if virtual else write_failure(exc)
        raise WriteError(f"cannot write into {what} {named}: {reason}") from exc


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Check, before long work starts, that `path` can be written later: it is not a folder, and its folder is
    writable or can be made (checked in the nearest folder that exists: nothing is made now, so a command that
    fails later leaves no empty folders behind; the write itself makes them)."""
    typed = os.fspath(path)
    if not typed or typed.endswith(("/", os.sep)):  # Path() drops both: '' became '.', 'new/' a file 'new'
        raise WriteError(f"{what} {typed!r} names no file; give a file name")
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"{what} {path} is a folder; give a file name")
    if path.is_symlink():  # written through (atomic_path): the folder written is the link's target's
        target = Path(os.path.realpath(path))
        if target.is_symlink():  # a loop of links: realpath stops in it
            raise WriteError(f"{what} {path} is a loop of links; give a file name")
        if not target.parent.is_dir():
            raise WriteError(f"{what} {path} is a link into {target.parent}, which is no folder")
        _probe(target.parent, target.parent, f"the folder of {what}")
        return path
    folder = path.absolute().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():  # a file, or a link to nothing, stands where the path needs a folder
        raise WriteError(f"cannot write into the folder of {what} {path.parent}: {existing} exists and is not a folder")
    _probe(existing, path.parent, f"the folder of {what}")
    return path


def _check_abort(exc: BaseException, target: Path) -> None:
    """A write cut by a second Ctrl-C stops as an interruption, not as the disk error torch makes of it."""
    if aborting() and not isinstance(exc, Interrupted):
        raise Interrupted(f"aborted by a second Ctrl-C while writing {target}; its previous version, if any, is intact")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `target`; on success it replaces `target` atomically. The temp files of
    `target`'s writes that a kill cut short go first, once untouched for KILLED_WRITE_AGE_S (a cache or an
    output folder may be another process's too, and its write may be under way). A link is written through, as
    `open` writes (it was replaced by a file, its target left as it was); a file rewritten keeps its permissions
    (a 0600 file became 0644)."""
    target = Path(target)
    linked = target.is_symlink()
    if linked:  # into the folder the link points to, which is not made (open would not make it)
        target = Path(os.path.realpath(target))
    try:
        if not linked:
            target.parent.mkdir(parents=True, exist_ok=True)
        _remove_killed_writes(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise WriteError(f"cannot write {target}: {write_failure(exc)}") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes 0600 whatever the umask; a new file gets the umask's, a rewritten one its own
        os.chmod(tmp_path, stat.S_IMODE(target.stat().st_mode) if target.is_file() else 0o666 & ~umask())
        os.replace(tmp_path, target)
    except BaseException as exc:
        # why, judged before the partial file goes: the space it held is what a full disk lacked (torch's own
        # message names no cause: "unexpected pos 41599872 vs 41599768", seen on a full tmpfs)
        reason = write_failure(exc, target.parent)
        tmp_path.unlink(missing_ok=True)
        _check_abort(exc, target)
        if reason is None:
            raise
        raise WriteError(
            f"{reason} while writing {target}; the previous version, if any, is intact", reason, target
        ) from exc


# A temp file of one write untouched this long is a killed write's: the largest frepo writes (a ZCA cache entry
# of 72 MB, a checkpoint) take seconds.
KILLED_WRITE_AGE_S = 3600


def _temps_of(target: Path) -> list[Path]:
    """The temp files and folders of `target`'s own writes beside it (`.<name>.<8 characters>[.previous].tmp`);
    `.a.b.XXXXXXXX.tmp` is a.b's, not a's."""
    pattern = f".{glob.escape(target.name)}.*{TEMP_SUFFIX}"
    return [path for path in target.parent.glob(pattern) if _OWN_TEMP.fullmatch(path.name[len(target.name) + 2 :])]


def _remove_killed_writes(target: Path) -> None:
    """Remove `target`'s own temp files untouched for KILLED_WRITE_AGE_S: a kill -9 in a write left one beside a
    `subset --out` file or in a cache (a ZCA entry's, 36-72 MB) for good."""
    now = time.time()
    for path in _temps_of(target):
        if not path.is_file() or path.is_symlink():
            continue
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > KILLED_WRITE_AGE_S:
                path.unlink()


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder next to `target` to fill; on success it takes `target`'s place whole (a previous
    `target` is moved aside, then removed), on failure it is removed. So `target` is never half-written nor a
    mix of two versions. A symlink is followed; the temp folders a killed process left beside `target` are
    removed first, but for a previous version a kill left moved aside, which goes back where `target` is
    missing. `target`'s parent must be writable (a mount point or a folder whose parent is not cannot be
    replaced: one line says so)."""
    target = Path(target).resolve()
    if target == Path.cwd() or target in Path.cwd().parents:
        raise FrepoError(f"{target} is the current folder or holds it; name a folder inside it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stale = [path for path in _temps_of(target) if path.is_dir() and not path.is_symlink()]
        moved_aside = [path for path in stale if path.name.endswith(_PREVIOUS)]
        if moved_aside and not target.exists():
            # a kill between the two renames below: the previous version, moved aside whole, goes back
            newest = max(moved_aside, key=lambda path: path.stat().st_mtime)
            os.replace(newest, target)
            stale.remove(newest)
            log.warning(f"frepo: {target} restored: a write killed as it replaced it had moved it aside")
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent))
    except OSError as exc:
        raise WriteError(
            f"cannot write beside {target} ({write_failure(exc)}): a folder is made next to it, then moved into "
            "its place; name a folder whose parent you can write"
        ) from exc
    previous = None
    try:
        yield staging
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes 0700 whatever the umask
        if target.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=_PREVIOUS, dir=target.parent))
            os.replace(target, previous)  # a folder replaces an empty one
        os.replace(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if previous is not None:
            if target.exists():  # the first rename failed: `previous` is still the empty temp folder
                shutil.rmtree(previous, ignore_errors=True)
            else:  # the second one failed: the previous version goes back
                os.replace(previous, target)
        _check_abort(exc, target)
        # A file's own WriteError names the temp folder: say it of `target`.
        reason = exc.reason if isinstance(exc, WriteError) else write_failure(exc, target.parent)
        if reason is None:
            raise
        raise WriteError(
            f"{reason} while writing {target}; the previous version, if any, is intact", reason, target
        ) from exc
    if previous is not None:  # renamed first: a kill in the removal leaves no part of it to be restored
        removed = previous.with_name(previous.name.removesuffix(_PREVIOUS) + TEMP_SUFFIX)
        try:
            os.replace(previous, removed)
        except OSError:  # the new version is in place: this only costs the removal's safety
            removed = previous
        shutil.rmtree(removed, ignore_errors=True)


@contextlib.contextmanager
def empty_folders_removed_on_failure(root: str | os.PathLike) -> Iterator[None]:
    """On an exception, remove the folders the block made at or under `root` that are still empty (a failed
    download left `--data-dir` and torchvision's `MNIST/raw` made and empty). Files are never removed, nor a
    folder that existed before: only what was new is walked (not a large `root` of other datasets)."""
    root = Path(root).absolute()
    top = root  # the topmost folder of `root`'s path that does not exist yet, if any
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    try:
        before = set(os.listdir(root)) if root.is_dir() else None
        listable = True
    except OSError:  # a folder one may enter but not list (mode 711): nothing is removed
        before, listable = None, False
    try:
        yield
    except BaseException:
        new = [top] if before is None else [root / name for name in set(_listing(root)) - before]
        for folder in new if listable else []:
            _remove_empty_tree(folder)
        raise


def _listing(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _remove_empty_tree(folder: Path) -> None:
    """rmdir `folder` and the folders under it, deepest first, where they are empty (a folder with a file stays)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for path, _, _ in os.walk(folder, topdown=False):
        with contextlib.suppress(OSError):  # not empty, or not ours to remove
            os.rmdir(path)


# The name `atomic_path` gives a temp file: mkstemp's 8 random characters between the target's name and the suffix.
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))


def is_temp_file(path: Path) -> bool:
    """Whether `path` is the temp file of a write (`.<name>.<8 random characters>.tmp`): an interrupted one's,
    where no process writes in its folder now. (A user's `.notes.bak.tmp` is not one.)"""
    return _TEMP_NAME.fullmatch(path.name) is not None and path.is_file()


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files of interrupted writes (`is_temp_file`) in `folder`, which this process owns."""
    removed = []
    for path in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if is_temp_file(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write(target: str | os.PathLike, write: Callable[[Path], object]) -> None:
    with atomic_path(target) as tmp:
        write(tmp)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write(target, lambda p: p.write_text(text))


def finite_or_null(obj):
    """`obj` with every NaN/inf float as None: JSON has no NaN, and `json.dumps` would write a bare `NaN` that
    strict readers (jq, JavaScript, `json.loads(..., parse_constant=...)`) refuse. An undefined number, such as
    an AUC over one class, reads as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(value) for value in obj]
    return obj


def json_text(obj) -> str:
    """`obj` as frepo writes JSON: NaN as null (`finite_or_null`), keys sorted, indented."""
    return json.dumps(finite_or_null(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def atomic_write_json(target: str | os.PathLike, obj) -> None:
    atomic_write_text(target, json_text(obj))


def atomic_torch_save(obj, target: str | os.PathLike) -> None:
    """`torch.save` through a file object: given a path, torch names the archive's folder after the file,
    here the random temp name, so two saves of the same object would differ in bytes; a file object gets
    torch's fixed name ("archive"), and equal objects give equal files."""

    def save(path: Path) -> None:
        with open(path, "wb") as file:
            torch.save(obj, file)

    atomic_write(target, save)


def atomic_save_safetensors(tensors: dict, target: str | os.PathLike, metadata: dict | None = None) -> None:
    """safetensors' `save_file`, atomically. `metadata` holds one key at most (a JSON string carries the
    rest): safetensors writes several keys in no fixed order, and equal sets would differ in bytes."""
    from safetensors.torch import save_file

    if metadata is not None and len(metadata) > 1:
        raise ValueError(f"one metadata key at most (for byte-reproducible files), got {sorted(metadata)}")

    atomic_write(target, lambda p: save_file(tensors, str(p), metadata=metadata))


def append_line(target: str | os.PathLike, line: str) -> None:
    """Append one line to a log whole, or not at all: a failed write is cut back off, so a full disk
    never leaves a partial last line."""
    target = Path(target)
    data = (line.rstrip("\n") + "\n").encode()
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise WriteError(f"cannot write {target}: {write_failure(exc)}") from exc
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            os.ftruncate(fd, start)
            raise WriteError(f"{write_failure(exc)} while writing {target}") from exc
    finally:
        os.close(fd)
