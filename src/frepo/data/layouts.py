"""Readers of public datasets in the layouts they are distributed in, unpacked under a data folder.

| name | folder under DIR | images |
|---|---|---|
| `cifar100`, `cifar100_coarse` | `cifar-100-python/` (torchvision's layout: pickled `train`, `test`, `meta`) | 32×32 |
| `tiny_imagenet` | `tiny-imagenet-200/` (`train/<wnid>/images/*.JPEG`; `val/` is the test split) | 64×64 |
| `imagenet64`, `imagenet32` | `Imagenet64_train_npz/` + `Imagenet64_val_npz/` (and the 32×32 twins) | 64×64, 32×32 |
| `cub200` | `CUB_200_2011/` (`images.txt`, `train_test_split.txt`, `image_class_labels.txt`) | 32×32 |
| `imagenette`, `imagewoof` | `imagenette2/`, `imagenette2-320/`, `imagenette2-160/` (`train/`, `val/`) | 128×128 |

Each is decoded once into a memory-mapped uint8 cache (`cache.py`) under `$FREPO_CACHE/datasets`, so
loads after the first take a second and ImageNet's 1.28 M images are never all in memory. Images of
varying size (CUB, ImageNette) are handled as the reference does: the largest centred square, resized
with area averaging (antialiased) to the target side. Label order follows the reference: Tiny ImageNet
numbers classes by their line in `wnids.txt`; ImageNet's files carry 1-based labels.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.atomic import empty_folders_removed_on_failure
from ..base.errors import FrepoError
from ..base.log import messages_shown, progress_bar
from .cache import building, cached_arrays, digest_of, signature
from .folders import IMAGE_SUFFIXES, class_folders, image_files, read_image

CHUNK = 4096  # images decoded and written per chunk while building a cache


@dataclass(frozen=True)
class Layout:
    folders: tuple[str, ...]  # candidate folder names under DIR, first found wins
    read: Callable  # (name, root) -> Source
    mirror_invariant: bool = True
    url: str | None = None  # where users download it
    archive: str | None = None  # a direct link to the archive frepo may download (None: not public)


@dataclass
class Source:
    """What a reader found on disk: the files the cache depends on and how to decode each split."""

    files: list[Path]
    classes: list[str]
    size: int  # image side
    channels: int
    train: list  # one entry per image, passed to `decode`
    test: list
    y_train: np.ndarray
    y_test: np.ndarray
    decode: Callable[[list], Iterator[np.ndarray]]  # entries -> uint8 chunks n×H×W×C, in order


# ---- helpers ----------------------------------------------------------------------------------------------
def _need(path: Path) -> Path:
    if not path.exists():
        raise FrepoError(f"incomplete dataset: expected {path}")
    return path


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in _need(path).read_text().splitlines() if line.strip()]


def _image_decoder(size: int) -> Callable[[list], Iterator[np.ndarray]]:
    # as stored, EXIF orientation not applied: as the reference's decoders read these published datasets
    def decode(files: list) -> Iterator[np.ndarray]:
        for start in range(0, len(files), CHUNK):
            yield np.stack([read_image(f, 3, size, shown=False) for f in files[start : start + CHUNK]])

    return decode


# ---- CIFAR-100 (torchvision's cifar-100-python) -----------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """The CIFAR pickles hold dicts of lists, strings and numpy arrays: only numpy's array
    reconstruction is allowed, so a crafted file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol 2 spells bytes (the array buffers) under Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")


def _unpickle(path: Path) -> dict:
    try:
        data = _ArrayUnpickler(io.BytesIO(_need(path).read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise FrepoError(f"cannot read {path}: not a CIFAR python pickle or truncated ({exc})") from exc
    if not isinstance(data, dict):
        raise FrepoError(f"cannot read {path}: expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _read_cifar100(name: str, root: Path) -> Source:
    key = "coarse" if name.endswith("coarse") else "fine"
    splits, files = {}, []
    for split in ("train", "test"):
        path = root / split
        data = _unpickle(path)
        files.append(path)
        try:
            x = np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(data[f"{key}_labels"], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise FrepoError(f"cannot read {path}: {exc}") from exc
        if len(x) != len(y):  # would pair images with other images' labels, or fail the decode with numpy's words
            raise FrepoError(f"{path}: {len(x)} images but {len(y)} labels")
        splits[split] = (x, y)
    meta = _unpickle(root / "meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(f"{key}_label_names", [])]
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]

    def decode(entries: list) -> Iterator[np.ndarray]:  # entries: (split array, row range)
        for x, start, stop in entries:
            yield x[start:stop]

    def chunks(x):
        return [(x, s, min(s + CHUNK, len(x))) for s in range(0, len(x), CHUNK)]

    return Source(files, classes, 32, 3, chunks(x_train), chunks(x_test), y_train, y_test, decode)


# ---- Tiny ImageNet ----------------------------------------------------------------------------------------
def _read_tiny_imagenet(name: str, root: Path) -> Source:
    wnids = _lines(root / "wnids.txt")
    label = {w: i for i, w in enumerate(wnids)}  # the reference numbers classes by their line here
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.strip()
    train, y_train = [], []
    for wnid in wnids:
        folder = _need(root / "train" / wnid / "images")
        found = image_files(folder)
        if not found:
            raise FrepoError(f"incomplete dataset: no images in {folder}")
        train += found
        y_train += [label[wnid]] * len(found)
    test, y_test = [], []
    annotations = root / "val" / "val_annotations.txt"
    for line in _lines(annotations):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in label:
            raise FrepoError(f"{annotations}: cannot read the line {line!r} (file, wnid of wnids.txt, box)")
        test.append(_need(root / "val" / "images" / parts[0]))
        y_test.append(label[parts[1]])
    classes = [words.get(w, w) for w in wnids]
    files = [root / "wnids.txt", annotations]
    return Source(files, classes, 64, 3, train, test, np.array(y_train), np.array(y_test), _image_decoder(64))


# ---- downsampled ImageNet (Chrabaszcz et al. 2017) --------------------------------------------------------
def _read_imagenet(name: str, root: Path) -> Source:
    size = int(name.removeprefix("imagenet"))
    train_dir = root / f"Imagenet{size}_train_npz"
    val_dir = root / f"Imagenet{size}_val_npz"
    batches = [_need(train_dir / f"train_data_batch_{i}.npz") for i in range(1, 11)]
    val = _need(val_dir / "val_data.npz")

    def labels(path: Path) -> np.ndarray:
        with _npz(path) as archive:
            y = np.asarray(_npz_array(archive, "labels", path), dtype=np.int64) - 1  # stored 1-based
        return y

    y_parts = [labels(p) for p in batches]
    y_train, y_test = np.concatenate(y_parts), labels(val)
    if y_train.min(initial=0) < 0 or y_test.min(initial=0) < 0:
        raise FrepoError(f"{train_dir}: labels must be 1-based (1..1000)")

    def decode(entries: list) -> Iterator[np.ndarray]:  # entries: (file, rows)
        for path, rows in entries:
            with _npz(path) as archive:
                flat = np.asarray(_npz_array(archive, "data", path), dtype=np.uint8)
            # Each file's images against its own labels: a file of two rows more and a later one of two fewer
            # add up, and every image between them would take the label of the image two rows before.
            if flat.size != rows * 3 * size * size:
                raise FrepoError(
                    f"{path}: {flat.size} bytes of images, not {rows} images of 3×{size}×{size} (its {rows} labels; "
                    f"another size's Imagenet*_npz files?)"
                )
            x = flat.reshape(-1, 3, size, size).transpose(0, 2, 3, 1)  # rows are R, G, B planes
            for start in range(0, len(x), CHUNK):
                yield x[start : start + CHUNK]

    train = [(p, len(y)) for p, y in zip(batches, y_parts)]
    classes = [str(i) for i in range(1000)]
    return Source([*batches, val], classes, size, 3, train, [(val, len(y_test))], y_train, y_test, decode)


def _npz_array(archive, key: str, path: Path) -> np.ndarray:
    """archive[key], read (and for the official compressed batches, inflated) now: damage is one line."""
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise FrepoError(f"cannot read {path}: the file is corrupt or truncated ({exc})") from exc


def _npz(path: Path):
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FrepoError(f"cannot read {path}: the file is corrupt or truncated ({exc})") from exc
    missing = {"data", "labels"} - set(archive.files)
    if missing:
        archive.close()
        raise FrepoError(f"{path} lacks the arrays {sorted(missing)} (the Imagenet*_npz layout has data and labels)")
    return archive


# ---- CUB-200-2011 ----------------------------------------------------------------------------------------
def _read_cub(name: str, root: Path) -> Source:
    def table(file: str) -> dict[str, str]:
        out = {}
        for line in _lines(root / file):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
        return out

    paths, is_train, labels = table("images.txt"), table("train_test_split.txt"), table("image_class_labels.txt")
    names = table("classes.txt") if (root / "classes.txt").is_file() else {}
    split: dict[str, tuple[list[Path], list[int]]] = {"1": ([], []), "0": ([], [])}
    for image_id, rel in paths.items():
        if image_id not in is_train or image_id not in labels:
            raise FrepoError(
                f"{root}: image {image_id} lacks a split or a label (train_test_split.txt, image_class_labels.txt)"
            )
        if is_train[image_id] not in split:
            raise FrepoError(
                f"{root / 'train_test_split.txt'}: image {image_id} has split {is_train[image_id]!r}, not 1 or 0"
            )
        label = labels[image_id]
        if not label.isdigit() or int(label) < 1:
            raise FrepoError(f"{root / 'image_class_labels.txt'}: image {image_id} has label {label!r}, not 1..C")
        files, ys = split[is_train[image_id]]
        files.append(_need(root / "images" / rel))
        ys.append(int(label) - 1)  # stored 1-based
    n_classes = max(max(split["1"][1], default=0), max(split["0"][1], default=0)) + 1
    classes = [names.get(str(i + 1), str(i)) for i in range(n_classes)]
    (train, y_train), (test, y_test) = split["1"], split["0"]
    files = [root / f for f in ("images.txt", "train_test_split.txt", "image_class_labels.txt")]
    return Source(files, classes, 32, 3, train, test, np.array(y_train), np.array(y_test), _image_decoder(32))


# ---- ImageNette / ImageWoof (fastai) ------------------------------------------------------------------------
def _read_imagenette(name: str, root: Path) -> Source:
    splits = {}
    for split in ("train", "val"):
        folders = class_folders(_need(root / split))
        samples = [(f, i) for i, folder in enumerate(folders) for f in image_files(folder)]
        splits[split] = ([f.name for f in folders], samples)
    if splits["train"][0] != splits["val"][0] or not splits["train"][0]:
        raise FrepoError(f"{root}: train/ and val/ must hold the same class folders")
    if any(folder.is_dir() and not image_files(folder) for folder in class_folders(root / "train")):
        raise FrepoError(f"incomplete dataset: a class folder of {root / 'train'} holds no {IMAGE_SUFFIXES} images")
    (classes, train), (_, test) = splits["train"], splits["val"]
    files = [root / "train", root / "val"]
    return Source(
        files,
        classes,
        128,
        3,
        [f for f, _ in train],
        [f for f, _ in test],
        np.array([y for _, y in train]),
        np.array([y for _, y in test]),
        _image_decoder(128),
    )


_CIFAR100 = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
_FASTAI = "https://s3.amazonaws.com/fast-ai-imageclas/"
LAYOUTS: dict[str, Layout] = {
    "cifar100": Layout(("cifar-100-python",), _read_cifar100, True, _CIFAR100, _CIFAR100),
    "cifar100_coarse": Layout(("cifar-100-python",), _read_cifar100, True, _CIFAR100, _CIFAR100),
    "tiny_imagenet": Layout(
        ("tiny-imagenet-200",),
        _read_tiny_imagenet,
        True,
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    ),
    "imagenet64": Layout((".",), _read_imagenet, True, "https://image-net.org/download-images.php (Imagenet64_*_npz)"),
    "imagenet32": Layout((".",), _read_imagenet, True, "https://image-net.org/download-images.php (Imagenet32_*_npz)"),
    "cub200": Layout(
        ("CUB_200_2011",),
        _read_cub,
        True,
        "https://www.vision.caltech.edu/datasets/cub_200_2011/",
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
    ),
    "imagenette": Layout(
        ("imagenette2", "imagenette2-320", "imagenette2-160"),
        _read_imagenette,
        True,
        "https://github.com/fastai/imagenette",
        _FASTAI + "imagenette2-160.tgz",  # the reference's variant
    ),
    "imagewoof": Layout(
        ("imagewoof2", "imagewoof2-320", "imagewoof2-160"),
        _read_imagenette,
        True,
        "https://github.com/fastai/imagenette",
        _FASTAI + "imagewoof2-160.tgz",
    ),
}


def download_layout(name: str, data_dir: Path) -> bool:
    """Download and unpack dataset `name`'s archive into `data_dir` (torchvision's downloader: resumable
    redirects, a progress bar); False when it has no public direct link (ImageNet).

    Both happen in a temp folder inside `data_dir`, and what the archive holds is moved into place only once
    it is all unpacked: an archive cut short by a kill was taken as complete by every later attempt (and
    failed to unpack, a traceback each time), and a half-unpacked folder was read as the dataset, with
    fewer images and no word. One process downloads a dataset at a time (`building`); the temp folders of
    killed attempts go."""
    archive = LAYOUTS[name].archive
    if archive is None:
        return False
    from torchvision.datasets.utils import download_and_extract_archive

    # One download per archive (cifar100 and cifar100_coarse share theirs), named by it.
    key = data_dir / f"{Path(urllib.parse.urlparse(archive).path).name}-download"
    try:
        with empty_folders_removed_on_failure(data_dir), building(key) as staging:
            if _present(name, data_dir):  # downloaded by the process this one waited for
                return True
            unpacked = staging / "unpacked"
            download_and_extract_archive(archive, str(staging), extract_root=str(unpacked))
            items = sorted(unpacked.iterdir())
            in_the_way = [data_dir / item.name for item in items if (data_dir / item.name).exists()]
            if in_the_way:  # checked for all before any moves: the download lands whole or not at all
                if _present(name, data_dir):
                    return True
                raise FrepoError(f"{in_the_way[0]} is in the way of {name}'s download; move it")
            for item in items:
                os.replace(item, data_dir / item.name)
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error) as exc:  # no network, a cut file
        raise FrepoError(f"could not download {name} from {archive} into {data_dir}: {exc}") from exc
    return True


def _present(name: str, data_dir: Path) -> bool:
    try:
        find_root(name, data_dir)
        return True
    except FrepoError:
        return False


def find_root(name: str, data_dir: Path) -> Path:
    """The folder of dataset `name` under `data_dir`, or a one-line error naming what was expected."""
    layout = LAYOUTS[name]
    if layout.folders == (".",):
        size = name.removeprefix("imagenet")
        if not (data_dir / f"Imagenet{size}_train_npz").is_dir():
            raise FrepoError(
                f"{name} not found: expected {data_dir / f'Imagenet{size}_train_npz'} and "
                f"{data_dir / f'Imagenet{size}_val_npz'} (download from {layout.url}, unpack under --data-dir)"
            )
        return data_dir
    for folder in layout.folders:
        if (data_dir / folder).is_dir():
            return data_dir / folder
    raise FrepoError(
        f"{name} not found: expected {data_dir / layout.folders[0]} (download from {layout.url} and unpack it "
        "under --data-dir)"
    )


def _listing(root: Path, source: Source) -> str:
    """A digest of which image files a layout lists, in order, with their labels. A folder's modification time
    does not change when a file in a class folder below it is added or removed (ImageNette), and an index file
    need not either (Tiny ImageNet's train/ has none): without this, a stale cache would pair images with the
    labels of others. Contents edited in place under the same name are not seen (no stat of every file)."""
    digest = hashlib.sha256()
    for entries, labels in ((source.train, source.y_train), (source.test, source.y_test)):
        names = [str(e.relative_to(root) if e.is_relative_to(root) else e) for e in entries]  # the cache is per folder
        digest.update("\0".join(names).encode("utf-8", "surrogateescape"))
        digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:20]


def read_layout(name: str, data_dir: Path, cache_root: Path):
    """(x_train, y_train, x_test, y_test, classes, mirror_invariant, cache signature) of dataset `name`, the
    images memory-mapped from the cache (built on first use, with a progress bar)."""
    root = find_root(name, data_dir)
    source = LAYOUTS[name].read(name, root)
    try:
        sig = signature(source.files) | {"name": name}
        if any(isinstance(entry, Path) for entry in source.train):  # a layout of image files (not CIFAR-100's or
            sig["listing"] = _listing(root, source)  # ImageNet's arrays: their caches stay valid across versions)
    except OSError as exc:
        raise FrepoError(f"cannot read {root}: {exc.strerror or exc}") from exc
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    folder = cache_root / "datasets" / f"{name}-{tag}"
    shape = (source.size, source.size, source.channels)

    def shapes():
        return {
            "x_train": ((len(source.y_train), *shape), np.uint8),
            "x_test": ((len(source.y_test), *shape), np.uint8),
        }

    def fill(arrays: dict[str, np.ndarray]) -> None:
        total = len(source.y_train) + len(source.y_test)
        with progress_bar(total=total, desc=f"decode {name} (once)", unit="img", disable=not messages_shown()) as bar:
            for split in ("train", "test"):
                out, pos = arrays[f"x_{split}"], 0
                for chunk in source.decode(getattr(source, split)):
                    if chunk.shape[1:] != shape:
                        raise FrepoError(f"{root}: an image decoded to {chunk.shape[1:]}, expected {shape}")
                    out[pos : pos + len(chunk)] = chunk
                    pos += len(chunk)
                    bar.update(len(chunk))
                if pos != len(out):
                    raise FrepoError(f"{root}: {pos} {split} images decoded but {len(out)} labels")

    arrays = cached_arrays(folder, sig, shapes, fill)
    # What fits on these pixels (the ZCA) is keyed on the source files and on the pixels decoded from them: a
    # cache deleted and decoded again from images edited in place gets a fit of its own. (A cache of before caches
    # had a digest keeps its key: nothing is fitted again on upgrade.)
    digest = digest_of(folder)
    identity = repr(sig) + (f"|pixels {digest}" if digest else "")
    return (
        arrays["x_train"],
        source.y_train.astype(np.int64),
        arrays["x_test"],
        source.y_test.astype(np.int64),
        source.classes,
        LAYOUTS[name].mirror_invariant,
        hashlib.sha256(identity.encode()).hexdigest()[:20],
    )
