"""The readers of other tools' files, each registered under its format's name (`register_reader`), in
the order of `FORMATS`. Each gives (images, labels, what else `source` records), validated; which
preprocessing the images are in is the registration's `claim`, checked by `load_foreign`."""

from __future__ import annotations

import unicodedata
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ...base.errors import FrepoError
from ...data import RawDataset
from .files import check_images, check_labels, torch_load
from .registry import Read, register_reader


def read_npz(path: Path, shape: tuple[int, int, int], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not zipfile.is_zipfile(path):  # np.load then tried it as a pickle, and advised loading it "unsafely"
        raise FrepoError(f"cannot read {path}: not an .npz archive (np.savez writes one), or corrupt or truncated")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not {"image", "label"} <= set(archive.files):
                raise FrepoError(f"{path} is not an official FRePo file: it needs the arrays 'image' and 'label'")
            image, label = archive["image"], archive["label"]
    except FrepoError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):  # numpy's advice is to allow pickles, which run code when loaded
            raise FrepoError(f"{path} holds Python objects, not arrays of numbers; frepo loads no pickles") from exc
        raise FrepoError(f"cannot read {path}: corrupt or truncated ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # zlib: a compressed one's
        raise FrepoError(f"cannot read {path}: not an .npz file, or corrupt or truncated ({exc})") from exc
    images = check_images(image, shape, str(path), channels_last=True)
    return images, check_labels(label, len(images), num_classes, str(path))


@register_reader("frepo-npz", claim="reference", flip=True)
def read_official(path: Path, raw: RawDataset, entry: int) -> Read:
    """The official FRePo `np/stepNNNNNN.npz`: `image` N×H×W×C, `label` N×K learned labels."""
    return (*read_npz(path, raw.image_shape, raw.num_classes), {})


def mtt_labels_path(images_path: Path) -> Path:
    name = images_path.name
    if not name.startswith("images"):
        raise FrepoError(
            f"{images_path}: an MTT file is named images_<tag>.pt, with labels_<tag>.pt beside it "
            "(DD-Ranking: images.pt and labels.pt)"
        )
    return images_path.with_name("labels" + name[len("images") :])


@register_reader("mtt", claim=lambda raw: "mtt-zca" if raw.image_shape[0] > 1 else "dc")
def read_mtt(path: Path, raw: RawDataset, entry: int) -> Read:
    """MTT's `images_*.pt` with its sibling `labels_*.pt` (DD-Ranking's `images.pt` with `labels.pt`)."""
    images = torch_load(path)
    if not isinstance(images, torch.Tensor):
        raise FrepoError(f"{path}: expected a tensor of images (MTT's images_*.pt), got {type(images).__name__}")
    labels_path = mtt_labels_path(path)
    if not labels_path.is_file():
        raise FrepoError(f"{path}: its labels file {labels_path.name} is missing; MTT saves both side by side")
    labels = torch_load(labels_path)
    if not isinstance(labels, torch.Tensor):
        raise FrepoError(f"{labels_path}: expected a tensor of labels, got {type(labels).__name__}")
    images = check_images(images, raw.image_shape, str(path))
    return images, check_labels(labels, len(images), raw.num_classes, str(labels_path)), {}


@register_reader("dc", claim="dc", entries=True)
def read_dc(path: Path, raw: RawDataset, entry: int) -> Read:
    """Set `entry` of a DC/DSA/DM res_*.pt; `source` records it and the number of sets in the file."""
    obj = torch_load(path)
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, (list, tuple)) or not data:
        raise FrepoError(f"{path}: a DC/DSA res_*.pt is a dict whose 'data' is a non-empty list of [images, labels]")
    if not 0 <= entry < len(data):
        raise FrepoError(f"{path} holds {len(data)} distilled sets (entries 0..{len(data) - 1}); --entry {entry}")
    pair = data[entry]
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise FrepoError(f"{path}: entry {entry} of 'data' is not an [images, labels] pair")
    images = check_images(pair[0], raw.image_shape, f"{path} entry {entry}")
    labels = check_labels(pair[1], len(images), raw.num_classes, f"{path} entry {entry}")
    return images, labels, {"entry": entry, "entries": len(data)}


@register_reader("safetensors", claim="frepo")
def read_safetensors(path: Path, raw: RawDataset, entry: int) -> Read:
    """A plain safetensors file with `images` and `labels` tensors (no frepo metadata)."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise FrepoError(f"cannot read {path}: corrupt or truncated ({exc})") from exc
    for key in ("images", "labels"):
        if key not in tensors:
            raise FrepoError(f"{path}: a safetensors file from another tool needs 'images' and 'labels' tensors")
    images = check_images(tensors["images"], raw.image_shape, str(path))
    return images, check_labels(tensors["labels"], len(images), raw.num_classes, str(path)), {}


def _numbered(name: str, num_classes: int) -> int | None:
    """The class number in front of a folder name `<number>_<class name>` (how frepo export names class
    folders whose names would not sort in class order), or None."""
    number, sep, _ = name.partition("_")
    return int(number) if sep and number.isdigit() and int(number) < num_classes else None


def set_file_hint(root: Path) -> str:
    """'; to read a set file in it, pass the file (root/x.npz)' for a folder that holds set files, else ''."""
    from ..export import PREPROCESSING  # an export's preprocessing file is no set

    suffixes = (".safetensors", ".npz", ".pt", ".pth")
    sets = sorted(p.name for p in root.iterdir() if p.suffix in suffixes and p.name != PREPROCESSING)
    return f"; to read a set file in it, pass the file ({root / sets[0]})" if sets else ""


@register_reader("imagefolder", claim="pixels", pixels=True)
def read_image_folder(root: Path, raw: RawDataset, entry: int) -> Read:
    """uint8 N×H×W×C images and (N,) class ids from root/<class>/<image>. Class folders are named by
    the dataset's class names or by class number."""
    from ...data.folders import IMAGE_SUFFIXES, class_folders, image_files, read_image

    folders = class_folders(root)
    if not folders:
        raise FrepoError(f"{root} holds no class folders: expected {root}/<class>/<image>.png{set_file_hint(root)}")
    names = [unicodedata.normalize("NFC", p.name) for p in folders]  # as the dataset's class names are read
    numbered = [n for n in (_numbered(name, raw.num_classes) for name in names) if n is not None]
    if all(name in raw.classes for name in names):
        ids = [raw.classes.index(name) for name in names]
    elif all(name.isdigit() and int(name) < raw.num_classes for name in names):
        ids = [int(name) for name in names]
    elif len(numbered) == len(names):  # every folder numbered, as frepo export's 0_T-shirt_top
        ids = numbered
    else:
        raise FrepoError(
            f"{root}: class folders {names[:4]} match neither the class names of {raw.name} "
            f"({raw.classes[:4]}...) nor class numbers 0..{raw.num_classes - 1}"
        )
    c, h, w = raw.image_shape
    images, labels = [], []
    for folder, class_id in zip(folders, ids):
        for file in image_files(folder):
            arr = read_image(file, c)
            if arr.shape[:2] != (h, w):
                raise FrepoError(f"{file} is {arr.shape[1]}×{arr.shape[0]}; {raw.name} images are {w}×{h}")
            images.append(arr)
            labels.append(class_id)
    if not images:
        raise FrepoError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return np.stack(images), torch.tensor(labels, dtype=torch.int64), {}
