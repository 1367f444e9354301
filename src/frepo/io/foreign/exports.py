"""`frepo export` folders read back into the set they were written from. The export's manifest names
its layout, and each layout's reader registers itself under that name (`frepo.io.export` registers the
writers the same way)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...base.errors import FrepoError, check_path
from ...base.log import warn
from ...base.registry import registering
from ...data.preprocess import Preprocessing
from ..artifact import DistilledSet, as_read, regression_targets
from ..digests import checksums
from .files import check_images, check_labels, torch_load
from .readers import read_npz


@dataclass(frozen=True)
class Export:
    """An export folder as its manifest describes it."""

    folder: Path
    manifest_path: Path
    manifest: dict
    shape: tuple[int, int, int]  # (C, H, W)
    channels: int  # C, the channels the PNGs are read with
    classes: list[str]
    preprocessing: Preprocessing


# A layout's reader: the export -> (images, labels), checked by `load_export` against the manifest.
LayoutReader = Callable[[Export], tuple]
# layout -> its reader, in the order of `frepo.io.export.LAYOUTS`
LAYOUT_READERS: dict[str, LayoutReader] = {}


def register_layout_reader(name: str) -> Callable[[LayoutReader], LayoutReader]:
    """Decorator: register the reader of export layout `name` (once)."""
    return registering(LAYOUT_READERS, name, "export layout")


@register_layout_reader("imagefolder")
def _read_pngs(export: Export) -> tuple:
    """PNGs in pixel space, put back through the stored preprocessing; the labels from labels.pt."""
    from ...data.folders import class_folders, image_files, read_image

    names = export.manifest.get("image_files", [])
    found = {f.relative_to(export.folder).as_posix() for c in class_folders(export.folder) for f in image_files(c)}
    added = sorted(found - set(names))
    if added:  # an image put into a class folder is not part of the set: say so rather than drop it silently
        shown = ", ".join(added[:5]) + (f" and {len(added) - 5} more" if len(added) > 5 else "")
        warn(
            f"{export.folder}: left out {shown}, which frepo export did not write: an export is read as written "
            "(to read the class folders as they are now, copy them without export.json and pass --dataset)"
        )
    arrays = [read_image(export.folder / name, export.channels) for name in names]
    for name, array in zip(names, arrays):  # one other size made np.stack's traceback
        if tuple(array.shape[:2]) != export.shape[1:]:
            raise FrepoError(
                f"{export.folder}: {name} is {array.shape[1]}×{array.shape[0]}, the manifest says {export.shape}"
            )
    if not arrays:
        raise FrepoError(f"{export.manifest_path}: the manifest names no images")
    pixels = np.stack(arrays)
    return export.preprocessing(pixels), torch_load(export.folder / "labels.pt")


@register_layout_reader("pt")
def _read_pt(export: Export) -> tuple:
    return torch_load(export.folder / "images.pt"), torch_load(export.folder / "labels.pt")


@register_layout_reader("npz")
def _read_npz(export: Export) -> tuple:
    npz = [name for name in export.manifest.get("files", {}) if name.endswith(".npz")]
    if len(npz) != 1:
        raise FrepoError(f"{export.manifest_path}: an npz export names one .npz file")
    return read_npz(export.folder / npz[0], export.shape, len(export.classes))


def load_export(path: str | Path) -> DistilledSet:
    """A `frepo export` folder (or a file of one) back into the set it was written from: the same images
    (up to 8-bit rounding and clipping for PNGs), labels and preprocessing, in the export's order (the set's,
    but grouped by class in imagefolder and pt exports), classes numbered as frepo numbers the dataset's."""
    from ..export import find_manifest, read_manifest, read_preprocessing

    check_path("path", path)
    manifest_path = find_manifest(path)
    if manifest_path is None:
        raise FrepoError(f"{path} is not a frepo export: no export.json in it or beside it")
    manifest, folder = read_manifest(manifest_path), manifest_path.parent  # its fields checked there
    layout, classes, shape = manifest["layout"], manifest["classes"], tuple(manifest["images"]["shape"])
    info = manifest["set"]
    pre = read_preprocessing(folder, shape)
    _check_recorded(pre, manifest.get("preprocessing"), folder)
    # Checked against the manifest's own shape and classes; the dataset is checked when it is loaded.
    where = str(manifest_path.parent)
    read = LAYOUT_READERS.get(layout)
    if read is None:
        raise FrepoError(f"{manifest_path}: unknown layout {layout!r}")
    images, labels = read(Export(folder, manifest_path, manifest, shape, shape[0], classes, pre))
    images = check_images(images, shape, where)
    labels = check_labels(labels, len(images), len(classes), where)
    labels, classes = _frepo_numbering(labels, classes, manifest, where)
    recorded = manifest.get("labels") or {}
    if recorded.get("kind") == "class_ids" and labels.ndim == 2:  # npz holds the targets of class ids: ids again
        ids = labels.argmax(-1)  # (as the set was: the dsa protocol's --soft-labels refuses class ids)
        if torch.equal(regression_targets(ids, len(classes)), labels):
            labels = ids
    checksum, each = checksums(folder)
    _warn_of_changed_files(manifest, each, where)
    meta = {
        "kind": f"export-{layout}",
        "dataset": manifest["dataset"],
        "classes": classes,
        "ipc": info.get("ipc"),
        "seed": info.get("seed"),
        "step": info.get("step"),
        # recorded_data_dir finds the dataset where the set's run did (an export evaluated --no-download)
        "config": {
            "use_flip": bool(info.get("use_flip")),
            "data": {"data_dir": info.get("data_dir")},
            "model": {"depth": info.get("depth")},  # the depth it was distilled with (`EvalConfig.network_depth`)
        },
        "val_size": int(info.get("val_size") or 0),
        "holdout": info.get("holdout"),
        "test_fingerprint": info.get("test_fingerprint"),
        "checksum": checksum,
        "source": {"path": str(path), "format": "frepo-export", "layout": layout, "original": info.get("checksum")},
    }
    if "mirror_invariant" in info:  # else the set answers from its dataset (DistilledSet.mirror_invariant)
        meta["mirror_invariant"] = bool(info["mirror_invariant"])
    return as_read(DistilledSet(images, labels, pre, meta))


def _frepo_numbering(labels: torch.Tensor, classes: list, manifest: dict, where: str) -> tuple[torch.Tensor, list]:
    """The labels and classes of an export in a DD-Ranking space, numbered as frepo numbers the dataset's classes
    again (the manifest's ddranking.frepo_class_ids): read as written, an ImageWoof export was tested against
    frepo's test split under DD-Ranking's numbering."""
    theirs = (manifest.get("ddranking") or {}).get("frepo_class_ids")
    if theirs is None:
        return labels, classes
    whole = isinstance(theirs, list) and all(type(t) is int for t in theirs)
    if not whole or sorted(theirs) != list(range(len(classes))):
        raise FrepoError(f"{where}: ddranking.frepo_class_ids is not an order of the {len(classes)} classes")
    theirs = torch.tensor(theirs)
    mine = [classes[their] for their in theirs.tolist()]
    if labels.ndim == 2:  # DD-Ranking's column theirs[k] is frepo's class k
        return labels[:, theirs], mine
    inverse = torch.empty_like(theirs)
    inverse[theirs] = torch.arange(len(theirs))
    return inverse[labels.long()].to(labels.dtype), mine


def _check_recorded(pre, recorded, folder: Path) -> None:
    """The preprocessing file must be the one the manifest records (kind, regulariser, per-channel mean and
    std): one copied in from another export of the same image shape was applied to the test split, and its
    networks scored 42 % where this export's scored 89 %."""
    from ..export import PREPROCESSING

    if not isinstance(recorded, dict):  # an export that recorded none: nothing to compare
        return
    own = {"kind": pre.kind, "zca_reg": pre.zca_reg, "mean": pre.mean.tolist(), "std": pre.std.tolist()}
    differ = []
    for key, value in own.items():
        if key not in recorded:
            continue
        if key == "kind":
            same = recorded[key] == value
        else:
            try:
                same = np.allclose(np.asarray(recorded[key], dtype=np.float64), value, rtol=1e-6, atol=0)
            except (TypeError, ValueError):
                same = False
        if not same:
            differ.append(f"{key} {recorded[key]!r:.40} recorded, {value!r:.40} in the file")
    if differ:
        raise FrepoError(
            f"{folder / PREPROCESSING} is not the preprocessing this export recorded ({'; '.join(differ)}): it is "
            "another export's; put back the one frepo export wrote beside these images, or export the set again"
        )


def _warn_of_changed_files(manifest: dict, each: dict[str, str], where: str) -> None:
    """Warn when a file the export wrote is not what it wrote: an images file copied from another export
    beside this preprocessing is read in the wrong space, and its networks train to chance accuracy. (An
    export written before the manifest recorded checksums is not checked.)"""
    recorded = manifest.get("checksums")
    if not isinstance(recorded, dict):
        return
    changed = sorted(name for name, digest in recorded.items() if each.get(name) != digest)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        warn(
            f"{where}: {shown} differ from what frepo export wrote (edited, damaged, or from another export); "
            "the set is read as the files are now, with the manifest's preprocessing"
        )
