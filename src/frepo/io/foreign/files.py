"""What every reader shares: telling a file's format, its checksum, the safe `torch.load`, and the checks
the images and labels of every format pass."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ...base.errors import FrepoError
from ..artifact import has_frepo_metadata, safetensors_content


# ---- format detection and checksums -----------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """The format of `path` from its name and, for .pt files, its content."""
    from ..export import find_manifest

    path = Path(path)
    if not path.exists():
        raise FrepoError(f"file not found: {path}")
    if find_manifest(path) is not None:
        return "frepo-export"
    if path.is_dir():
        return "imagefolder"
    suffix = path.suffix.lower()
    if suffix == ".safetensors" or safetensors_content(path):  # frepo's own file under another name (x.pt)
        return "frepo" if has_frepo_metadata(path) else "safetensors"
    if suffix == ".npz":
        return "frepo-npz"
    if suffix in (".pt", ".pth"):
        if path.name == "checkpoint.pt" and (path.parent / "config.json").is_file():  # read as a DC file before
            raise FrepoError(
                f"{path} is a frepo run's checkpoint, not a set: give its run directory {path.parent}, whose set "
                "(distilled.safetensors) its distill command writes when it finishes"
            )
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


def torch_load(path: str | Path):
    """torch.load with weights_only=True; numpy scalars and dtypes (DC's accuracy lists) are allowed."""
    try:  # numpy 2 renamed numpy.core (1.26 has the new name as a shim, imported on demand); files carry either
        from numpy._core.multiarray import scalar
    except ImportError:
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]  # numpy 1's name of the same
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


# ---- the checks of every reader's tensors -----------------------------------------------------
def check_labels(labels, n: int, num_classes: int, where: str) -> torch.Tensor:
    """(N,) int64 class ids or N×K float32 learned labels, validated."""
    if isinstance(labels, np.ndarray) and labels.dtype.kind == "u":  # torch < 2.3 refuses uint16/32/64 arrays
        if labels.size and int(labels.max()) > np.iinfo(np.int64).max:
            raise FrepoError(f"{where}: class ids must lie in 0..{num_classes - 1} for this dataset")
        labels = labels.astype(np.int64)
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as exc:  # a dict, strings: was torch's traceback
        found = f"an array of {labels.dtype}" if isinstance(labels, np.ndarray) else f"a {type(labels).__name__}"
        raise FrepoError(f"{where}: expected an array of labels (class ids or learned labels), found {found}") from exc
    if labels.is_complex():
        raise FrepoError(f"{where}: labels must be real numbers, got {labels.dtype}")
    if labels.ndim == 2 and labels.shape == (n, num_classes):
        if not bool(labels.isfinite().all()):  # as load_distilled refuses a file's
            raise FrepoError(f"{where}: the labels contain NaN or infinite values")
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


def check_images(images, shape: tuple[int, int, int], where: str, channels_last: bool = False) -> torch.Tensor:
    """Float32 N×C×H×W images of image shape `shape` (C, H, W)."""
    if not isinstance(images, torch.Tensor | np.ndarray):  # as_tensor said "Could not infer dtype of dict"
        raise FrepoError(f"{where}: expected an array of images, found a {type(images).__name__}")
    if isinstance(images, np.ndarray) and images.dtype.kind not in "fiub":  # str, object, datetime: a TypeError
        raise FrepoError(f"{where}: images must be floating point, got {images.dtype}")
    x = torch.as_tensor(images)
    if not x.is_floating_point():
        raise FrepoError(f"{where}: images must be floating point, got {x.dtype}")
    given = tuple(x.shape)  # as the file holds them
    if channels_last and x.ndim == 4:
        x = x.permute(0, 3, 1, 2)
    c, h, w = shape
    if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
        expected = f"N×H×W×C = N×{h}×{w}×{c}" if channels_last else f"N×C×H×W = N×{c}×{h}×{w}"
        raise FrepoError(f"{where}: images of shape {given}, expected {expected} for this dataset")
    if len(x) == 0:  # as load_distilled refuses a file's; `show` stacked no tiles with a traceback
        raise FrepoError(f"{where}: holds no images")
    if not bool(torch.isfinite(x).all()):
        raise FrepoError(f"{where}: images contain NaN or infinite values")
    return x.detach().float().contiguous()  # MTT saves its leaf tensors with requires_grad set
