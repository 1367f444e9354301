"""Datasets as uint8 arrays: scikit-learn digits, torchvision datasets, a .npz file, an ImageFolder.

Every loader returns a `RawDataset` with images as uint8 N×H×W×C (the layout of the files users
have) and int64 labels; preprocessing and the NCHW float layout come later (`preprocess.py`).
On offline machines `$FREPO_DATA_DIR/<name>.npz` (keys x_train, y_train, x_test, y_test, optional
classes) stands in for a torchvision download, and so does `<data_dir>/<name>.npz`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import unicodedata
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.atomic import empty_folders_removed_on_failure
from ..base.errors import FrepoError, check_argument, check_path
from ..base.log import warn
from .cache import build_lock, release
from .layouts import LAYOUTS, read_layout

# name -> (torchvision class, whether horizontal flips preserve the class). Flip-sensitive
# datasets (digits, clothes with the reference's choice) get no flip trick and no flip augmentation.
TORCHVISION_DATASETS = {
    "mnist": ("MNIST", False),
    "fashion_mnist": ("FashionMNIST", False),
    "cifar10": ("CIFAR10", True),
    "svhn": ("SVHN", False),
}
BUILTIN = ("digits", *TORCHVISION_DATASETS, *LAYOUTS)


def known_mirror_invariant(name: str) -> bool | None:
    """Whether a horizontal flip keeps the classes of the built-in dataset `name`; None for any other (a
    user's own data: their word, `--mirror-invariant`)."""
    if name == "digits":
        return False
    if name in TORCHVISION_DATASETS:
        return TORCHVISION_DATASETS[name][1]
    return LAYOUTS[name].mirror_invariant if name in LAYOUTS else None


@dataclass
class RawDataset:
    """A labelled image dataset before preprocessing."""

    name: str
    """Registry name, or the absolute path of a .npz file / ImageFolder directory."""
    x_train: np.ndarray  # uint8, N×H×W×C
    y_train: np.ndarray  # int64, N
    x_test: np.ndarray  # uint8, M×H×W×C
    y_test: np.ndarray  # int64, M
    classes: list[str]
    mirror_invariant: bool = True
    """Whether a horizontal flip keeps the class (drives the flip trick and flip augmentation)."""
    source_id: str | None = None
    """For images memory-mapped from a dataset cache: what identifies their source files, so that
    fingerprints need not read every image."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images once in the NCHW layout."""
        _, h, w, c = self.x_train.shape
        return (c, h, w)

    def test_fingerprint(self) -> str:
        """sha256 of the test split, to check that an evaluation uses the data a file came from. Computed once
        per test split (an evaluation asks for it several times; ImageNet's is 600 MB to read)."""
        known = self.__dict__.get("_test_fingerprint")
        if known is not None and known[0] is self.x_test and known[1] is self.y_test:
            return known[2]
        digest = hashlib.sha256()
        for start in range(0, len(self.x_test), 8192):  # in chunks: a memory-mapped split is not copied whole
            digest.update(np.ascontiguousarray(self.x_test[start : start + 8192]).tobytes())
            release(self.x_test)
        digest.update(np.ascontiguousarray(self.y_test).astype(np.int64).tobytes())
        self.__dict__["_test_fingerprint"] = (self.x_test, self.y_test, digest.hexdigest())
        return digest.hexdigest()


def default_data_dir() -> Path:
    """$FREPO_CACHE, else ~/.cache/frepo (an empty $FREPO_CACHE is unset: it was the current folder)."""
    return Path(os.environ.get("FREPO_CACHE") or Path.home() / ".cache" / "frepo").expanduser()


def whole_data_dir(data_dir: str | None) -> str | None:
    """A `--data-dir` as a record keeps it: absolute, so a set or experiment made with a relative one finds its
    dataset from any folder; `~` expanded, a link kept as the link (recorded, not where it points today)."""
    return None if data_dir is None else os.path.abspath(os.path.expanduser(data_dir))


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> RawDataset:
    """Load a dataset by registry name, .npz path or ImageFolder directory."""
    check_argument("name", name, (str, os.PathLike), "a dataset name or the path of a .npz file or folder")
    if data_dir is not None:
        check_path("data_dir", data_dir)
    check_argument("download", download, bool, "True or False")  # "no" is true: it downloaded
    name = os.fspath(name)
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if name == "digits":
        return _load_digits()
    if name in TORCHVISION_DATASETS:
        offline = offline_copy(name, data_dir)
        if offline is not None:
            return _load_npz(offline, name=name, mirror_invariant=TORCHVISION_DATASETS[name][1])
        return _load_torchvision(name, data_dir, download)
    if name in LAYOUTS:
        offline = offline_copy(name, data_dir)
        if offline is not None:
            return _load_npz(offline, name=name, mirror_invariant=LAYOUTS[name].mirror_invariant)
        return _load_layout(name, data_dir, download)
    path = Path(name).expanduser()
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise FrepoError(f"dataset file not found: {path}")
        raw = _load_npz(path, name=str(path.resolve()), mirror_invariant=True)
        _check_classes(raw, str(path))
        if path.stem in BUILTIN and path.stem != "digits":  # mnist.npz by its path: flipped digits, no preset
            # (digits is scikit-learn's, never read from a file)
            warn(
                f"{path} is read as a dataset of your own, not as {path.stem}: flips are taken to keep its classes "
                f"(unless --no-mirror-invariant) and {path.stem}'s presets do not apply; --dataset {path.stem} reads "
                f"it as {path.stem} with $FREPO_DATA_DIR={path.parent} (or, that variable unset, --data-dir "
                f"{path.parent})"
            )
        return raw
    if path.is_dir():
        return _load_image_folder(path)
    if path.exists():
        raise FrepoError(f"{path} is neither a .npz file nor an ImageFolder directory with train/ and test/")
    if len(path.parts) > 1 or name.startswith((".", "~")):  # a path, not a misspelt name
        raise FrepoError(f"dataset folder not found: {path}")
    known = ", ".join(BUILTIN)
    raise FrepoError(f"unknown dataset {name!r}: use one of {known}, a .npz path or an ImageFolder directory")


def offline_copy(name: str, data_dir: Path) -> Path | None:
    """`<name>.npz` in $FREPO_DATA_DIR, else in `data_dir` (where a user who has the file puts it), if any."""
    folders = [Path(os.environ["FREPO_DATA_DIR"]).expanduser()] if os.environ.get("FREPO_DATA_DIR") else []
    if folders and not folders[0].is_dir():  # a typo read nothing from it, unsaid, and downloaded instead
        warn(f"$FREPO_DATA_DIR is {folders[0]}, which is no folder: no offline copy is read from it")
    for folder in [*folders, data_dir]:
        if (folder / f"{name}.npz").is_file():
            return folder / f"{name}.npz"
    return None


def _offline_hint(name: str) -> str:
    """Where else the dataset is looked for: a set distilled in a shell with $FREPO_DATA_DIR set, evaluated in
    one without, failed on a download with no word of the copy it had read."""
    return f"; an offline copy, {name}.npz in $FREPO_DATA_DIR or in --data-dir, is read in its place"


def _load_digits() -> RawDataset:
    """scikit-learn's 8×8 digits (shipped with it, no download), split 70/30 by a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16; scale to the 0..255 range every other dataset uses.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.3, stratify=labels, random_state=0)
    return RawDataset("digits", x_train, y_train, x_test, y_test, [str(i) for i in range(10)], False)


def _load_layout(name: str, data_dir: Path, download: bool) -> RawDataset:
    """A dataset in its distributed layout under `data_dir` (downloaded there first when it is missing, a
    direct download exists and downloads are on), images memory-mapped from frepo's decoded cache."""
    from .layouts import download_layout, find_root

    try:
        find_root(name, data_dir)
    except FrepoError:
        if not download or not download_layout(name, data_dir):
            raise
    x_train, y_train, x_test, y_test, classes, mirror, source_id = read_layout(name, data_dir, default_data_dir())
    raw = RawDataset(name, x_train, y_train, x_test, y_test, classes, mirror, source_id)
    _check(raw, str(data_dir))
    return raw


def _load_torchvision(name: str, data_dir: Path, download: bool) -> RawDataset:
    import torchvision.datasets as tvd

    cls_name, mirror_invariant = TORCHVISION_DATASETS[name]
    cls = getattr(tvd, cls_name)
    root = str(data_dir)

    def splits(download: bool) -> tuple:
        if name == "svhn":
            return tuple(cls(root, split=s, download=download) for s in ("train", "test"))
        return tuple(cls(root, train=t, download=download) for t in (True, False))

    try:
        try:  # files there are read without a byte written: a shared dataset folder may be read-only
            train, test = splits(download=False)
        except RuntimeError:  # torchvision: not there, or failing its checks
            if not download:
                raise
            # One process downloads a dataset at a time: two first runs at once had each written torchvision's
            # files in place, over each other's. The second waits, then finds the files there.
            with empty_folders_removed_on_failure(data_dir), build_lock(data_dir / f"{name}-download"):
                train, test = splits(download=True)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted..."
        said = str(exc).replace(" You can use download=True to download it", "")  # the API's words, not the CLI's
        hint = "" if download else " (downloads are off: pass --download or put the files there)"
        raise FrepoError(f"could not load {name} from {root}: {said}{hint}{_offline_hint(name)}") from exc
    except OSError as exc:  # network failures surface as URLError (an OSError)
        raise FrepoError(f"could not download {name} into {root}: {exc}{_offline_hint(name)}") from exc

    def arrays(split) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(split.data)
        y = np.asarray(split.targets if hasattr(split, "targets") else split.labels)
        if name == "svhn":
            x = x.transpose(0, 2, 3, 1)  # stored N×C×H×W
        if x.ndim == 3:
            x = x[..., None]
        return np.ascontiguousarray(x, dtype=np.uint8), y.astype(np.int64)

    x_train, y_train = arrays(train)
    x_test, y_test = arrays(test)
    classes = list(getattr(train, "classes", None) or [str(i) for i in range(10)])
    if name == "mnist":
        classes = [str(i) for i in range(10)]
    raw = RawDataset(name, x_train, y_train, x_test, y_test, classes, mirror_invariant)
    _check(raw, str(root))
    return raw


# The arrays of the .npz files read in this process (the most recent two): a job that loads its dataset
# several times (each task of `frepo continual`, each baseline) decodes it once (CIFAR-10's offline copy
# takes 12 s to decompress). Every caller shares them, read-only, as every caller shares a layout's
# read-only memory map: a copy for each caller held a large .npz twice for the life of the process. Keyed
# by path, size and modification time, so an edited file is read again.
_NPZ_MEMO: dict[tuple, tuple] = {}


def _load_npz(path: Path, name: str, mirror_invariant: bool) -> RawDataset:
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError as exc:
        raise FrepoError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if key not in _NPZ_MEMO:
        *arrays, classes = _read_npz(path)
        for array in arrays:
            array.setflags(write=False)
        if len(_NPZ_MEMO) >= 2:
            _NPZ_MEMO.clear()
        _NPZ_MEMO[key] = (*arrays, classes)
    x_train, y_train, x_test, y_test, classes = _NPZ_MEMO[key]
    raw = RawDataset(name, x_train, y_train, x_test, y_test, list(classes), mirror_invariant)
    _check(raw, str(path))
    return raw


def _read_npz(path: Path) -> tuple:
    if not zipfile.is_zipfile(path):  # np.load then tried it as a pickle, and said to allow pickles
        raise FrepoError(
            f"cannot read {path}: it is not a .npz archive (np.savez writes one), or it is corrupt or truncated"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                raise FrepoError(f"{path} lacks the arrays {sorted(missing)} (needs x_train, y_train, x_test, y_test)")
            arrays = {k: _array(archive, k, path) for k in ("x_train", "y_train", "x_test", "y_test")}
            classes = _class_names(_array(archive, "classes", path), path) if "classes" in archive.files else None
    except FrepoError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, zlib.error) as exc:  # zlib: compressed
        raise FrepoError(f"cannot read {path}: the file is corrupt or truncated ({exc})") from exc
    x_train, x_test = (_as_uint8_nhwc(arrays[k], f"{path}:{k}") for k in ("x_train", "x_test"))
    y_train, y_test = (_as_labels(arrays[k], f"{path}:{k}") for k in ("y_train", "y_test"))
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):  # before the labels are read
        if len(x) != len(y):  # 200 images and 150 labels read as classes without an image
            raise FrepoError(f"{path}: {len(x)} {split} images but {len(y)} {split} labels")
    if classes is None:
        count = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
        present = np.unique(y_train)
        if len(present) and present[0] > 0:  # labels 1..10 or 100..109 made classes 0..99 without an image
            raise FrepoError(
                f"{path}: labels are class ids 0..C-1, and y_train's {len(present)} distinct labels run "
                f"{int(present[0])}..{int(present[-1])}: remap them to 0..{len(present) - 1}"
            )
        if len(present) and count > len(present):  # said before `count` names are made: one stray label 10**9
            seen = set(present.tolist())  # was 10**9 names and a bincount of 8 GB, minutes before the error
            absent = list(itertools.islice((str(c) for c in range(count) if c not in seen), 5))
            raise _without_images(str(path), count, absent, count - len(present), present)
        classes = [str(i) for i in range(count)]
    return x_train, y_train, x_test, y_test, classes


def _array(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except MemoryError as exc:  # the advice to lower --batch-size does not help: say what the file declares
        raise FrepoError(f"{path}: no memory to read the array {key!r}: {_declared(archive, key)}") from exc
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise FrepoError(
            f"{path}: the array {key!r} holds Python objects, which frepo does not unpickle: save it as "
            + ("strings (np.array(names, dtype=str))" if key == "classes" else "numbers")
        ) from exc


def _declared(archive, key: str) -> str:
    """What an .npz member's header says it holds, to tell a damaged header from a large array."""
    try:
        with archive.zip.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member)
            stored = archive.zip.getinfo(f"{key}.npy").file_size
    except (OSError, ValueError, KeyError) as exc:
        return f"its header cannot be read ({exc}): the file is damaged"
    needed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if needed > stored:
        return f"its header declares shape {shape} ({needed / 2**30:.1f} GiB) but it holds {stored} bytes: damaged"
    return f"it holds shape {shape} of {dtype} ({needed / 2**30:.1f} GiB); free memory, or read a smaller file"


def _class_names(names: np.ndarray, path: Path) -> list[str]:
    """The `classes` array as text: bytes (np.bytes_) are decoded, not written as "b'cat'"."""
    if names.ndim != 1:
        raise FrepoError(f"{path}: 'classes' must be a 1-D array of class names, got shape {names.shape}")
    text = [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in names.tolist()]
    return [unicodedata.normalize("NFC", name) for name in text]  # one spelling, as class folders' names


def _load_image_folder(root: Path) -> RawDataset:
    """train/<class>/<image> and test/<class>/<image>; images of mixed sizes (CUB-like data) are
    centre-cropped to a square and resized to 32×32, as the reference does, with a warning that names them.
    Hidden folders (.ipynb_checkpoints) are no classes; image files of a type frepo does not read are named in a
    warning, not skipped silently."""
    from .folders import class_folders, image_files, image_header, read_image, unread_images

    splits, unread = {}, []
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise FrepoError(f"{root} is not an ImageFolder dataset: it needs {split}/<class>/<image> folders")
        folders = class_folders(root / split)
        samples = [(file, label) for label, folder in enumerate(folders) for file in image_files(folder)]
        unread += [file for folder in folders for file in unread_images(folder)]
        labelled = {label for _, label in samples}  # the folders' walks done once, for `samples`
        empty = [f.name for label, f in enumerate(folders) if label not in labelled]
        if not folders or empty:
            held = [file for name in empty for file in unread_images(root / split / name)]
            others = f" (they hold {_kinds(held)}, which frepo does not read: {_readable()})" if held else ""
            raise FrepoError(f"cannot read {root / split}: no images in class folder(s) {empty or '(none)'}{others}")
        # one spelling of each name: a folder copied from macOS may spell é as e and an accent (NFD)
        splits[split] = ([unicodedata.normalize("NFC", f.name) for f in folders], samples)
    train, test = splits["train"][0], splits["test"][0]
    if train != test and sorted(train) == sorted(test):  # the same names, sorted otherwise as spelt otherwise
        ids = [train.index(name) for name in test]  # (é: NFC in one split, NFD in the other): train's numbering
        splits["test"] = (train, [(file, ids[label]) for file, label in splits["test"][1]])
        test = train
    if train != test:
        missing, extra = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        said = [f"test/ lacks {missing}" if missing else "", f"test/ has {extra} that train/ lacks" if extra else ""]
        raise FrepoError(f"{root}: train/ and test/ must have the same class folders; {'; '.join(filter(None, said))}")
    if unread:
        warn(f"{root}: skipped {_kinds(unread)} (first: {unread[0]}), which frepo does not read: {_readable()}")
    # Headers first, to choose the channels and size; then each image decoded and converted on its own (a
    # folder of 12-megapixel photos held every decoded picture at once before: gigabytes for a small result).
    files = [file for _, samples in splits.values() for file, _ in samples]
    headers = [image_header(file) for file in files]
    channels = 1 if all(grey for _, grey in headers) else 3
    sizes = [shown for shown, _ in headers]
    size = None if len(set(sizes)) == 1 else 32
    if size is not None:
        warn(
            f"{root}: images of several sizes ({_sizes(sizes, files)}): each is centre-cropped to a square and "
            "resized to 32×32, as the reference does for such data; give every image one size to keep it"
        )

    def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([read_image(file, channels, size) for file, _ in splits[split][1]])
        return x, np.asarray([label for _, label in splits[split][1]], dtype=np.int64)

    (x_train, y_train), (x_test, y_test) = arrays("train"), arrays("test")
    raw = RawDataset(str(root.resolve()), x_train, y_train, x_test, y_test, splits["train"][0], True)
    _check(raw, str(root))
    _check_classes(raw, str(root))
    return raw


def _kinds(files: list[Path]) -> str:
    """'10 .gif files'."""
    counts = Counter(f.suffix.lower() for f in files)
    return ", ".join(f"{n} {suffix} file{'s' if n > 1 else ''}" for suffix, n in counts.most_common())


def _readable() -> str:
    from .folders import IMAGE_SUFFIXES

    return f"it reads {', '.join(IMAGE_SUFFIXES)}; convert them to PNG"


def _sizes(sizes: list[tuple[int, int]], files: list[Path]) -> str:
    """'59 of 64×64, 1 of 64×63; 64×63: train/bird/3.png': the commonest sizes, and a file of the rarest."""
    counts = Counter(sizes)
    shown = [f"{n} of {w}×{h}" for (w, h), n in counts.most_common(3)]
    rare = min(counts, key=lambda size: counts[size])
    example = next(file for size, file in zip(sizes, files) if size == rare)
    more = f", {len(counts) - 3} more sizes" if len(counts) > 3 else ""
    return f"{', '.join(shown)}{more}; {rare[0]}×{rare[1]}: {'/'.join(example.parts[-3:])}"


def _as_uint8_nhwc(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = ""
        if x.ndim == 4 and x.shape[1] in (1, 3):  # torch's N×C×H×W
            hint = " (channels first, as torch stores them? save x.transpose(0, 2, 3, 1))"
        raise FrepoError(f"{where} must be N×H×W or N×H×W×C with C in (1, 3), got shape {x.shape}{hint}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise FrepoError(f"{where}: integer pixels must lie in 0..255")
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or (x.size and (x.min() < 0 or x.max() > 1)):
            levels = np.isfinite(x).all() and x.size and x.min() >= 0 and x.max() <= 255
            hint = " (levels 0..255 as floats? save them as uint8)" if levels else ""
            raise FrepoError(f"{where}: float pixels must be finite and lie in [0, 1]{hint}")
        return np.rint(x * 255).astype(np.uint8)
    raise FrepoError(f"{where}: unsupported image dtype {x.dtype}")


def _as_labels(y: np.ndarray, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:  # N×1, as Keras's load_data() gives them
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        hint = ""
        if y.ndim == 1 and y.dtype.kind in "US":
            hint = " (names? save np.unique(y, return_inverse=True)[1] as the labels and the names as 'classes')"
        elif y.ndim == 1 and y.dtype.kind == "f":
            hint = " (whole numbers as floats? save y.astype(np.int64))"
        elif y.ndim == 2:
            hint = " (one-hot? save y.argmax(1))"
        raise FrepoError(f"{where} must be a 1-D array of integer class labels, got {y.dtype} {y.shape}{hint}")
    if y.size and y.min() < 0:
        raise FrepoError(f"{where}: labels must be >= 0")
    if y.size and int(y.max()) > np.iinfo(np.int64).max:  # a uint64 past it would wrap to a negative class id
        raise FrepoError(f"{where}: label {int(y.max())} is no class id (labels are class ids 0..C-1)")
    return y.astype(np.int64)


def _check(raw: RawDataset, where: str) -> None:
    """Shapes and labels must agree; a mismatch is a user error, never a crash later."""
    for split in ("train", "test"):
        x, y = getattr(raw, f"x_{split}"), getattr(raw, f"y_{split}")
        if len(x) != len(y):
            raise FrepoError(f"{where}: {len(x)} {split} images but {len(y)} {split} labels")
        if len(x) == 0:
            raise FrepoError(f"{where}: the {split} split is empty")
        if y.max() >= raw.num_classes:
            raise FrepoError(f"{where}: {split} label {int(y.max())} but only {raw.num_classes} classes")
        if y.min() < 0:  # a layout's 1-based index file given 0-based labels: -1 (a crash at distill, or worse)
            raise FrepoError(f"{where}: {split} label {int(y.min())}; labels are class ids 0..C-1")
    if raw.x_train.shape[1:] != raw.x_test.shape[1:]:
        raise FrepoError(
            f"{where}: train images {raw.x_train.shape[1:]} and test images {raw.x_test.shape[1:]} differ in shape"
        )


def _check_classes(raw: RawDataset, where: str) -> None:
    """A dataset of the user's own (a .npz file, an image folder) has two classes or more, each with training
    images: a gap in the labels was "class 2 has 0 training images" at distill, one class a traceback."""
    if raw.num_classes < 2:
        raise FrepoError(f"{where}: one class ({raw.classes[0]!r}); distillation and evaluation need at least two")
    counts = np.bincount(raw.y_train, minlength=raw.num_classes)
    absent = [raw.classes[c] for c in np.flatnonzero(counts == 0)]
    if absent:  # "class 2 has 0 training images, fewer than ipc=1" at distill, and no word of why
        raise _without_images(where, raw.num_classes, absent, len(absent), np.unique(raw.y_train))


def _without_images(where: str, num_classes: int, absent: list[str], count: int, present: np.ndarray) -> FrepoError:
    """The error of `count` classes of `num_classes` without a training image (`absent`: the first names at
    least), given the distinct training labels `present`."""
    shown = ", ".join(absent[:5]) + (f" and {count - 5} more" if count > 5 else "")
    labels = ", ".join(str(int(c)) for c in present[:8]) + (", ..." if len(present) > 8 else "")
    return FrepoError(
        f"{where}: {count} of {num_classes} classes have no training image ({shown}); the training "
        f"labels are {labels}. Every class needs images: class ids run 0..C-1, as many as the class names "
        "(or, without names, up to the largest train or test label)"
    )
