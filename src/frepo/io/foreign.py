"""Distilled sets written by other tools, read into a `DistilledSet` in memory.

Formats (`detect_format`):
  frepo        frepo's own `.safetensors` (carries its preprocessing; nothing to guess)
  frepo-export a `frepo export` folder (or a file in it): its manifest and stored preprocessing say all
  frepo-npz    the official FRePo `np/stepNNNNNN.npz`: `image` N×H×W×C, `label` N×K learned labels
  mtt          MTT's `images_*.pt` (N×C×H×W) with its sibling `labels_*.pt` (N class ids, or N×K); also
               DD-Ranking's `images.pt` with `labels.pt`
  dc           DC/DSA/DM's `res_*.pt`: a dict whose 'data' is a list of [images, labels] pairs
  safetensors  a plain safetensors file with `images` and `labels` tensors (no frepo metadata)
  imagefolder  a folder of class folders of images (raw pixels)

Distilled images live in the space their tool preprocessed the real data into, and the test split
must be put through the very same transform, or the accuracy collapses to chance: each tool's
transform is a recipe of `frepo.data.recipes` (`--preprocess`), and the statistics of the file's
images are compared with real images in the claimed space, with a warning that names a mismatch.

`.pt` files are loaded with `torch.load(weights_only=True)`: tensors, containers and plain numbers
only (numpy scalars allowed, since DC stores its accuracies as such), never arbitrary objects.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..base.errors import FrepoError
from ..data import RawDataset, default_data_dir, load_dataset
from ..data.preprocess import Preprocessing
from ..data.recipes import CLAIMS, check_preprocessing, claimed_preprocessing, frepo_preprocessing
from .artifact import DistilledSet, load_distilled

FORMATS = ("frepo", "frepo-export", "frepo-npz", "mtt", "dc", "safetensors", "imagefolder")


# ---- format detection and checksums -----------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """The format of `path` from its name and, for .pt files, its content."""
    from .export import find_manifest

    path = Path(path)
    if not path.exists():
        raise FrepoError(f"file not found: {path}")
    if find_manifest(path) is not None:
        return "frepo-export"
    if path.is_dir():
        return "imagefolder"
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "frepo" if _has_frepo_metadata(path) else "safetensors"
    if suffix == ".npz":
        return "frepo-npz"
    if suffix in (".pt", ".pth"):
        # By the names the tools give their files; anything else by its content.
        if path.name.startswith("res_"):
            return "dc"
        if path.name.startswith("images_"):
            return "mtt"
        return "dc" if isinstance(torch_load(path), dict) else "mtt"
    raise FrepoError(
        f"cannot tell the format of {path}: expected a .safetensors file, an official FRePo .npz, an MTT "
        "images_*.pt, a DC/DSA res_*.pt, or a folder of class folders of images"
    )


def _has_frepo_metadata(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return "frepo" in (fh.metadata() or {})
    except Exception:  # damaged files: load_distilled gives the precise error
        return True


def file_checksum(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and bytes, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def torch_load(path: str | Path):
    """torch.load with weights_only=True; numpy scalars and dtypes (DC's accuracy lists) are allowed."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core; files carry either name
    scalar = core.multiarray.scalar
    allowed: list = [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if match is None:  # not a pickle torch can parse at all
            raise FrepoError(f"cannot read {path}: not a torch file, or corrupt or truncated") from exc
        raise FrepoError(
            f"{path} holds objects other than tensors and numbers ({match.group(1)}), which frepo does not "
            "unpickle (it loads .pt files with weights_only=True); save the images and labels as plain tensors"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise FrepoError(f"cannot read {path}: not a torch file, or corrupt or truncated ({exc})") from exc


# ---- readers ----------------------------------------------------------------------------------
def _labels(labels, n: int, num_classes: int, where: str) -> torch.Tensor:
    """(N,) int64 class ids or N×K float32 learned labels, validated."""
    labels = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels)
    if labels.ndim == 2 and labels.shape == (n, num_classes):
        return labels.float()
    if labels.ndim == 1 and len(labels) == n:
        if labels.is_floating_point():
            if not bool((labels == labels.round()).all()):
                raise FrepoError(f"{where}: 1-D labels must be integer class ids")
        labels = labels.long()
        if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise FrepoError(f"{where}: class ids must lie in 0..{num_classes - 1} for this dataset")
        return labels
    raise FrepoError(
        f"{where}: labels of shape {tuple(labels.shape)} do not fit {n} images of {num_classes} classes "
        f"(expected ({n},) class ids or ({n}, {num_classes}) learned labels)"
    )


def _images(images, shape: tuple[int, int, int], where: str, channels_last: bool = False) -> torch.Tensor:
    """Float32 N×C×H×W images of image shape `shape` (C, H, W)."""
    x = torch.as_tensor(images)
    if not x.is_floating_point():
        raise FrepoError(f"{where}: images must be floating point, got {x.dtype}")
    if channels_last and x.ndim == 4:
        x = x.permute(0, 3, 1, 2)
    shape = tuple(shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        layout = "N×H×W×C" if channels_last else "N×C×H×W"
        raise FrepoError(f"{where}: images of shape {tuple(x.shape)}, expected {layout} with (C, H, W) = {shape}")
    if not bool(torch.isfinite(x).all()):
        raise FrepoError(f"{where}: images contain NaN or infinite values")
    return x.detach().float().contiguous()  # MTT saves its leaf tensors with requires_grad set


def read_npz(path: Path, shape: tuple[int, int, int], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not {"image", "label"} <= set(archive.files):
                raise FrepoError(f"{path} is not an official FRePo file: it needs the arrays 'image' and 'label'")
            image, label = archive["image"], archive["label"]
    except FrepoError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FrepoError(f"cannot read {path}: not an .npz file, or corrupt or truncated ({exc})") from exc
    images = _images(image, shape, str(path), channels_last=True)
    return images, _labels(label, len(images), num_classes, str(path))


def mtt_labels_path(images_path: Path) -> Path:
    name = images_path.name
    if not name.startswith("images"):
        raise FrepoError(
            f"{images_path}: an MTT file is named images_<tag>.pt, with labels_<tag>.pt beside it "
            "(DD-Ranking: images.pt and labels.pt)"
        )
    return images_path.with_name("labels" + name[len("images") :])


def read_mtt(path: Path, raw: RawDataset) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch_load(path)
    if not isinstance(images, torch.Tensor):
        raise FrepoError(f"{path}: expected a tensor of images (MTT's images_*.pt), got {type(images).__name__}")
    labels_path = mtt_labels_path(path)
    if not labels_path.is_file():
        raise FrepoError(f"{path}: its labels file {labels_path.name} is missing; MTT saves both side by side")
    labels = torch_load(labels_path)
    if not isinstance(labels, torch.Tensor):
        raise FrepoError(f"{labels_path}: expected a tensor of labels, got {type(labels).__name__}")
    images = _images(images, raw.image_shape, str(path))
    return images, _labels(labels, len(images), raw.num_classes, str(labels_path))


def read_dc(path: Path, raw: RawDataset, entry: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images, labels, number of sets in the file) of set `entry` of a DC/DSA/DM res_*.pt."""
    obj = torch_load(path)
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, (list, tuple)) or not data:
        raise FrepoError(f"{path}: a DC/DSA res_*.pt is a dict whose 'data' is a non-empty list of [images, labels]")
    if not 0 <= entry < len(data):
        raise FrepoError(f"{path} holds {len(data)} distilled sets (entries 0..{len(data) - 1}); --entry {entry}")
    pair = data[entry]
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise FrepoError(f"{path}: entry {entry} of 'data' is not an [images, labels] pair")
    images = _images(pair[0], raw.image_shape, f"{path} entry {entry}")
    return images, _labels(pair[1], len(images), raw.num_classes, f"{path} entry {entry}"), len(data)


def read_safetensors(path: Path, raw: RawDataset) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise FrepoError(f"cannot read {path}: corrupt or truncated ({exc})") from exc
    for key in ("images", "labels"):
        if key not in tensors:
            raise FrepoError(f"{path}: a safetensors file from another tool needs 'images' and 'labels' tensors")
    images = _images(tensors["images"], raw.image_shape, str(path))
    return images, _labels(tensors["labels"], len(images), raw.num_classes, str(path))


def read_image_folder(root: Path, raw: RawDataset) -> tuple[np.ndarray, torch.Tensor]:
    """uint8 N×H×W×C images and (N,) class ids from root/<class>/<image>. Class folders are named by
    the dataset's class names or by class number."""
    from ..data.folders import IMAGE_SUFFIXES, class_folders, image_files, open_image, to_array

    folders = class_folders(root)
    if not folders:
        raise FrepoError(f"{root} holds no class folders: expected {root}/<class>/<image>.png")
    names = [p.name for p in folders]
    if all(name in raw.classes for name in names):
        ids = [raw.classes.index(name) for name in names]
    elif all(name.isdigit() and int(name) < raw.num_classes for name in names):
        ids = [int(name) for name in names]
    else:
        raise FrepoError(
            f"{root}: class folders {names[:4]} match neither the class names of {raw.name} "
            f"({raw.classes[:4]}...) nor class numbers 0..{raw.num_classes - 1}"
        )
    c, h, w = raw.image_shape
    images, labels = [], []
    for folder, class_id in zip(folders, ids):
        for file in image_files(folder):
            arr = to_array(open_image(file), c)
            if arr.shape[:2] != (h, w):
                raise FrepoError(f"{file} is {arr.shape[1]}×{arr.shape[0]}; {raw.name} images are {w}×{h}")
            images.append(arr)
            labels.append(class_id)
    if not images:
        raise FrepoError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return np.stack(images), torch.tensor(labels, dtype=torch.int64)


# ---- the entry point --------------------------------------------------------------------------
def _default_claim(fmt: str, raw: RawDataset) -> str:
    if fmt == "frepo-npz":
        return "reference"
    if fmt == "mtt":
        return "mtt-zca" if raw.image_shape[0] > 1 else "dc"
    if fmt == "dc":
        return "dc"
    if fmt == "imagefolder":
        return "pixels"
    return "frepo"


def _step_from_name(path: Path) -> int | None:
    match = re.search(r"step(\d+)", path.stem) or re.search(r"_(\d+)$", path.stem)
    return int(match.group(1)) if match else None


def load_foreign(
    path: str | Path,
    raw: RawDataset,
    *,
    fmt: str | None = None,
    preprocess: str = "auto",
    entry: int | None = None,
    cache_dir: str | Path | None = None,
) -> DistilledSet:
    """Read a distilled set written by another tool for dataset `raw` into a DistilledSet whose
    preprocessing is the one its images live in (so the test split gets the very same transform)."""
    from ..config.presets import default_flip

    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "frepo":
        raise FrepoError(f"{path} is a frepo file; it carries its own dataset and preprocessing")
    cache = Path(cache_dir) if cache_dir is not None else default_data_dir()
    claim = _default_claim(fmt, raw) if preprocess in (None, "auto") else preprocess
    if claim not in CLAIMS:
        raise FrepoError(f"unknown --preprocess {claim!r}; use auto or one of {', '.join(CLAIMS)}")
    if entry is not None and fmt != "dc":
        raise FrepoError("--entry selects a set inside a DC/DSA res_*.pt file; other formats hold one set")
    source: dict = {"path": str(path), "format": fmt, "preprocessing": claim}
    if fmt == "imagefolder":
        if claim != "pixels":
            raise FrepoError("a folder of images holds raw pixels; drop --preprocess (or use pixels)")
        pixels, labels = read_image_folder(path, raw)
        pre = frepo_preprocessing(raw, cache)
        images = pre(pixels)
    else:
        if fmt == "frepo-npz":
            images, labels = read_npz(path, raw.image_shape, raw.num_classes)
        elif fmt == "mtt":
            images, labels = read_mtt(path, raw)
        elif fmt == "dc":
            images, labels, count = read_dc(path, raw, entry or 0)
            source.update(entry=entry or 0, entries=count)
        elif fmt == "safetensors":
            images, labels = read_safetensors(path, raw)
        else:
            raise FrepoError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
        pre = claimed_preprocessing(claim, raw, cache)
        check_preprocessing(images, claim, pre, raw, str(path))
        if claim == "pixels":
            images = pre.from_unit(images)
    n = len(images)
    counts = torch.bincount(labels.argmax(-1) if labels.ndim == 2 else labels, minlength=raw.num_classes)
    ipc = int(counts[0]) if bool((counts == counts[0]).all()) else None
    # The flip trick belongs to FRePo: official FRePo files follow its per-dataset table; other tools
    # never distilled with it.
    use_flip = default_flip(raw.name, ipc or max(1, n // raw.num_classes)) if fmt == "frepo-npz" else False
    meta = {
        "kind": f"foreign-{fmt}",
        "dataset": raw.name,
        "classes": raw.classes,
        "ipc": ipc,
        "seed": None,
        "step": _step_from_name(path) if path.is_file() else None,
        "config": {"use_flip": use_flip},
        "mirror_invariant": raw.mirror_invariant,
        "val_size": 0,  # other tools distil from the whole training split: there is no hold-out
        "checksum": file_checksum(path),
        "source": source,
    }
    return DistilledSet(images.float(), labels, pre, meta)


def load_export(path: str | Path) -> DistilledSet:
    """A `frepo export` folder (or a file of one) back into the set it was written from: the same images
    (up to 8-bit rounding and clipping for PNGs), labels and preprocessing, in the same order."""
    from ..data.folders import open_image, to_array
    from .export import find_manifest, read_manifest, read_preprocessing

    manifest_path = find_manifest(path)
    if manifest_path is None:
        raise FrepoError(f"{path} is not a frepo export: no export.json in it or beside it")
    manifest, folder = read_manifest(manifest_path), manifest_path.parent
    try:
        layout, classes, shape = manifest["layout"], list(manifest["classes"]), tuple(manifest["images"]["shape"])
        info = manifest["set"]
    except (KeyError, TypeError) as exc:
        raise FrepoError(f"{manifest_path}: the manifest lacks {exc}") from exc
    pre = read_preprocessing(folder)
    c = shape[0]
    # Checked against the manifest's own shape and classes; the dataset is checked when it is loaded.
    where = str(manifest_path.parent)
    if layout == "imagefolder":
        pixels = np.stack([to_array(open_image(folder / name), c) for name in manifest.get("image_files", [])])
        if tuple(pixels.shape[1:3]) != shape[1:]:
            raise FrepoError(f"{where}: the PNGs are {pixels.shape[2]}×{pixels.shape[1]}, the manifest says {shape}")
        images = pre(pixels)
        labels = torch_load(folder / "labels.pt")
    elif layout == "pt":
        images, labels = torch_load(folder / "images.pt"), torch_load(folder / "labels.pt")
    elif layout == "npz":
        npz = [name for name in manifest.get("files", {}) if name.endswith(".npz")]
        if len(npz) != 1:
            raise FrepoError(f"{manifest_path}: an npz export names one .npz file")
        images, labels = read_npz(folder / npz[0], shape, len(classes))
    else:
        raise FrepoError(f"{manifest_path}: unknown layout {layout!r}")
    images = _images(images, shape, where)
    labels = _labels(labels, len(images), len(classes), where)
    meta = {
        "kind": f"export-{layout}",
        "dataset": manifest["dataset"],
        "classes": classes,
        "ipc": info.get("ipc"),
        "seed": info.get("seed"),
        "step": info.get("step"),
        "config": {"use_flip": bool(info.get("use_flip"))},
        "mirror_invariant": bool(info.get("mirror_invariant", True)),
        "val_size": int(info.get("val_size") or 0),
        "test_fingerprint": info.get("test_fingerprint"),
        "checksum": file_checksum(folder),
        "source": {"path": str(path), "format": "frepo-export", "layout": layout, "original": info.get("checksum")},
    }
    return DistilledSet(images, labels, pre, meta)


def load_set(
    file: str | Path,
    dataset: str | None = None,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    preprocess: str = "auto",
    entry: int | None = None,
) -> tuple[DistilledSet, RawDataset]:
    """Any supported distilled-set file -> (DistilledSet, the real dataset it belongs to)."""
    fmt = detect_format(file)
    if fmt in ("frepo", "frepo-export"):
        ds = load_distilled(file) if fmt == "frepo" else load_export(file)
        if preprocess not in (None, "auto"):
            raise FrepoError(f"a {fmt} file carries its own preprocessing; drop --preprocess")
        if entry is not None:
            raise FrepoError(f"--entry selects a set inside a DC/DSA res_*.pt file; a {fmt} file holds one set")
        if dataset is not None and not _same_dataset(dataset, ds.dataset):
            raise FrepoError(f"{file} was distilled from {ds.dataset}, not {dataset}; drop --dataset")
        return ds, load_dataset(ds.dataset, data_dir or recorded_data_dir(ds), download)
    if dataset is None:
        raise FrepoError(
            f"{file} is a {fmt} file, which does not say which dataset it belongs to: pass --dataset NAME "
            "(its test split and preprocessing are used)"
        )
    raw = load_dataset(dataset, data_dir, download)
    return load_foreign(file, raw, fmt=fmt, preprocess=preprocess, entry=entry, cache_dir=data_dir), raw


def load_start(
    path: str | Path, raw: RawDataset, preprocessing: Preprocessing, classes: list[int], ipc: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A run's starting set from a file (`frepo distill --init FILE`): (ipc·K×C×H×W images in
    `preprocessing`, ipc·K×K labels), class-major like the seeded real-image start.

    Any format `load_set` reads; the images go through pixel space into the run's preprocessing (an
    official .npz is in the reference's, a frepo file in its own), untouched when that is the run's own.
    Class ids (a subset) become the reference's starting labels; learned labels are kept as they are.
    """
    fmt = detect_format(path)
    if fmt in ("frepo", "frepo-export"):
        ds = load_distilled(path) if fmt == "frepo" else load_export(path)
        if not _same_dataset(raw.name, ds.dataset):
            raise FrepoError(f"--init {path} was distilled from {ds.dataset}, not {raw.name}")
    else:
        ds = load_foreign(path, raw, fmt=fmt)
    if tuple(ds.images.shape[1:]) != raw.image_shape:
        raise FrepoError(f"--init {path} holds images of shape {tuple(ds.images.shape[1:])}, not {raw.image_shape}")
    if ds.num_classes != raw.num_classes:
        raise FrepoError(f"--init {path} has {ds.num_classes} classes, {raw.name} has {raw.num_classes}")
    labels, ids = ds.targets(), ds.class_ids()
    counts = torch.bincount(ids, minlength=raw.num_classes)
    wanted = torch.zeros_like(counts)
    wanted[classes] = ipc
    if not torch.equal(counts, wanted):
        raise FrepoError(
            f"--init {path} holds {counts.tolist()} images per class; this run needs {ipc} (--ipc) of each "
            f"of the classes {classes}"
        )
    order = torch.cat([torch.nonzero(ids == c).flatten() for c in classes])
    images = ds.images[order]
    if not _same_preprocessing(ds.preprocessing, preprocessing):
        images = preprocessing.from_unit(ds.preprocessing.to_unit(images))
    return images.float(), labels[order].float()


def _same_preprocessing(a: Preprocessing, b: Preprocessing) -> bool:
    ta, tb = a.tensors(), b.tensors()
    return a.params() == b.params() and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def recorded_data_dir(ds: DistilledSet) -> str | None:
    """The --data-dir the set was distilled with, when that folder still exists: evaluating a set
    distilled from Tiny ImageNet under DIR reads DIR's test split without being told again."""
    data = ((ds.meta or {}).get("config") or {}).get("data") or {}
    folder = data.get("data_dir") if isinstance(data, dict) else None
    return folder if isinstance(folder, str) and Path(folder).expanduser().is_dir() else None


def _same_dataset(given: str, recorded: str) -> bool:
    if given == recorded:
        return True
    path = Path(given).expanduser()
    return path.exists() and str(path.resolve()) == recorded


def describe(ds: DistilledSet) -> str:
    """One line saying where a set came from, for the CLI."""
    source = ds.meta.get("source")
    if not source:
        return f"{ds.meta.get('kind', 'set')} of {ds.dataset}"
    if source["format"] == "frepo-export":
        return f"frepo export ({source['layout']}) read with its stored preprocessing"
    extra = f", entry {source['entry']} of {source['entries']}" if "entries" in source else ""
    return f"{source['format']} file read as '{source['preprocessing']}' preprocessing{extra}"


__all__ = [
    "FORMATS",
    "describe",
    "load_export",
    "detect_format",
    "file_checksum",
    "load_foreign",
    "load_set",
    "torch_load",
]
