"""`frepo export`: a distilled set in the layouts other tools read, with its preprocessing beside it.

Layouts (`LAYOUTS`), each a folder:
  imagefolder  <class>/<NNNNN>.png in pixel space (the preprocessing inverted, clipped to [0, 1], 8-bit),
               so any tool can train on them; the labels beside them as `labels.pt` and `labels.json`
               (learned labels are regression targets, not class probabilities)
  pt           `images.pt` (N×C×H×W float32), `labels.pt` (learned labels, or class ids), `hard_labels.pt`
               (class ids), `lr.pt`: what DD-Ranking's metrics take (and MTT's images_*/labels_* pair), plus
               `data.safetensors` holding the same tensors for loading without pickle. Its images are in
               the space `--space` names (`SPACES`): `ddranking` (the default for a dataset DD-Ranking
               knows) or `ddranking-zca`, the two spaces DD-Ranking's own test pipeline uses
               (`frepo.io.ddranking`), or `frepo`, the set's own preprocessed space
  npz          `stepNNNNNN.npz` in the official FRePo layout: `image` N×H×W×C, `label` N×K
Every export also holds `preprocessing.safetensors` (the per-channel mean and std, and the ZCA mean and
matrix when used: what turns raw test images into the space of the exported images) and `export.json`, a
manifest with documented keys (`MANIFEST_KEYS`) from which `frepo evaluate EXPORT_DIR` reads the set
back with nothing else to say.

Each layout's writer registers itself under the layout's name (`register_layout`, in the style of timm's
`register_model`), so `export` needs no per-layout branch; `LAYOUTS` lists them in registration order.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.atomic import (
    atomic_folder,
    atomic_save_safetensors,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
)
from ..base.errors import FrepoError, check_argument, check_path
from ..base.fields import check_choice
from ..base.lock import one_writer
from ..base.registry import registering
from ..base.version import __version__
from ..data.preprocess import Preprocessing
from ..data.splits import Holdout
from . import ddranking
from .artifact import DistilledSet, check_preprocessing_tensors, check_set, load_distilled, recorded_data_dir
from .digests import checksums

MANIFEST = "export.json"
PREPROCESSING = "preprocessing.safetensors"
# The array an npz export holds besides the official layout's: read out of its folder, without its
# preprocessing, the file was taken for an official one (the reference's preprocessing: 58.9 % for 62.6 %).
NPZ_MARK = "frepo_export"
EXPORT_VERSION = 1
# What another tool should train a set's images with when it has no learning rate of its own: the
# DC/DSA/DD-Ranking SGD lr (FRePo learns none). The frepo protocol itself trains with Adam 3e-4.
SGD_LR = ddranking.SYN_LR
FREPO_PROTOCOL_LR = 3e-4

MANIFEST_KEYS = {
    "format": '"frepo-export"',
    "export_version": "1",
    "layout": "imagefolder, pt or npz",
    "files": "what each file of the folder holds",
    "images": "count, shape [C, H, W], and space: 'pixels' (PNG, 0..255), 'preprocessed' (the set's own space), "
    "'ddranking' or 'ddranking-zca' (DD-Ranking's, with use_zca false or true)",
    "image_files": "imagefolder only: the PNG of each image, in the export's order (the set's, grouped by "
    "class: the order torchvision's ImageFolder lists them)",
    "labels": "kind ('learned': N×K regression targets; 'class_ids': N integers) and the class id of each image",
    "classes": "class names, indexed by class id",
    "dataset": "the real dataset (registry name or path) whose test split the set is evaluated on",
    "preprocessing": "what puts raw images into the space the networks train in (the real test split; for "
    "imagefolder also its PNGs, which hold pixels): kind (none, standard, zca, zca_block), zca_reg, per-channel "
    "mean and std (tensors in PREPROCESSING, applied as its entry in files says)",
    "ddranking": "the DD-Ranking settings the export matches (dataset, im_size, use_zca, the call of each metric, "
    "the soft-label criterion; frepo_class_ids: the DD-Ranking class id of each of frepo's, which the labels and "
    "classes of the export use), or null when its images are not in a DD-Ranking space",
    "lr": "sgd: the lr to train with SGD (DD-Ranking, DC/DSA), frepo_protocol: the Adam lr of the reference evaluation",
    "set": "what frepo knows of the set: kind, ipc, step, seed, use_flip, depth (its Conv's blocks: the evaluation "
    "networks' too), mirror_invariant, val_size, holdout (the "
    "hold-out it was distilled without: size, chunk, classes), test_fingerprint, checksum, data_dir (the --data-dir "
    "it was distilled with, where its dataset is looked for first)",
    "frepo_version": "the frepo that wrote the export",
    "checksums": "the sha256 of each file the export wrote but this manifest, by its path in the folder: "
    "`frepo evaluate` warns of a file that differs (edited, damaged, or from another export)",
}


def _folder_names(classes: list[str]) -> list[str]:
    """One folder name per class: the class name when every name is a safe, unique file name that sorts
    in class order (so torchvision's ImageFolder numbers the classes as the set does), else a
    zero-padded class number in front of it."""
    safe = [re.sub(r"[^\w.+-]+", "_", name).strip("._") or "class" for name in classes]
    if safe == classes and len(set(safe)) == len(safe) and sorted(safe) == safe:
        return safe
    width = len(str(len(classes) - 1))
    return [f"{i:0{width}d}_{name}" for i, name in enumerate(safe)]


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """N×C×H×W pixels in [0, 1] (clipped) -> uint8 N×H×W×C, rounding half up (as torchvision saves)."""
    x = pixels.detach().float().clamp(0, 1).mul(255).add_(0.5).floor_().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def _write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    atomic_write(path, lambda p: image.save(p, format="PNG"))


def _labels_record(ds: DistilledSet, order: torch.Tensor | None) -> dict:
    """The manifest's labels: their kind, and the class id of each image in the export's `order` (indices into the
    set; None: the set's)."""
    ids = ds.class_ids() if order is None else ds.class_ids()[order]
    return {"kind": "learned" if ds.labels.ndim == 2 else "class_ids", "class_ids": ids.tolist()}


def class_major(ds: DistilledSet) -> torch.Tensor:
    """The set's indices grouped by class, stably: the order torchvision's ImageFolder lists an imagefolder export,
    and the one DD-Ranking assumes of a pt export (its soft-label metric labels image i by position: class
    i // ipc)."""
    return torch.argsort(ds.class_ids(), stable=True)


@dataclass(frozen=True)
class Written:
    """What a layout's writer wrote: its files (name -> what it holds, for the manifest), the space its
    images are in, the manifest keys of its own, and the order it wrote the images in (indices into the set;
    None: the set's)."""

    files: dict[str, str]
    space: str  # 'pixels' (PNG, 0..255) or 'preprocessed'
    manifest: dict = field(default_factory=dict)
    order: torch.Tensor | None = None


# A layout's writer: (the set, its images N×C×H×W float32 and labels on the CPU, the folder) -> Written.
LayoutWriter = Callable[[DistilledSet, torch.Tensor, torch.Tensor, Path], Written]
# layout -> its writer, in registration order (`LAYOUTS`); `frepo.io.foreign.exports` registers the readers
WRITERS: dict[str, LayoutWriter] = {}


def register_layout(name: str) -> Callable[[LayoutWriter], LayoutWriter]:
    """Decorator: register the writer of layout `name` (once)."""
    return registering(WRITERS, name, "export layout")


@register_layout("imagefolder")
def _write_imagefolder(ds: DistilledSet, images: torch.Tensor, labels: torch.Tensor, out: Path) -> Written:
    # Grouped by class (stably), so that position k here is torchvision's ImageFolder's sample k (it lists class
    # folder by folder): labels.pt paired with ImageFolder by index matched another image wherever the set was
    # not grouped by class (another tool's interleaved set; 5.9 % where 95.7 % was due).
    order = class_major(ds)
    pixels, labels, ids = to_uint8(ds.pixels()[order]), labels[order], ds.class_ids()[order].tolist()
    folders = _folder_names(ds.classes)
    width = max(5, len(str(len(ids) - 1)))  # names that sort as their positions
    names = [f"{folders[c]}/{i:0{width}d}.png" for i, c in enumerate(ids)]
    for array, name in zip(pixels, names):
        _write_png(array, out / name)
    atomic_torch_save(labels.clone(), out / "labels.pt")
    atomic_write_json(out / "labels.json", {"files": names, "labels": labels.tolist(), "classes": ds.classes})
    files = {
        "<class>/NNNNN.png": "the images in pixel space, 8-bit (NNNNN: position in the export: the set's images "
        "grouped by class, in their order within a class, which is the order torchvision's ImageFolder lists them)",
        "labels.pt": "the labels in the export's order, as ImageFolder lists the images (N×K learned targets or N "
        "class ids)",
        "labels.json": "the same, with the file of each image",
    }
    return Written(files, "pixels", {"image_files": names}, order)


@register_layout("pt")
def _write_pt(ds: DistilledSet, images: torch.Tensor, labels: torch.Tensor, out: Path) -> Written:
    lr = torch.tensor(SGD_LR, dtype=torch.float32)
    order = class_major(ds)  # DD-Ranking's order; a set of frepo's is in it already
    images, labels = images[order], labels[order]
    hard = ds.class_ids()[order].long()  # its own storage (indexing copies): class-id labels would share it
    atomic_torch_save(images.clone(), out / "images.pt")
    atomic_torch_save(labels.clone(), out / "labels.pt")
    atomic_torch_save(hard, out / "hard_labels.pt")
    atomic_torch_save(lr, out / "lr.pt")
    atomic_save_safetensors(
        {"images": images.contiguous(), "labels": labels.contiguous(), "hard_labels": hard, "lr": lr.reshape(1)},
        out / "data.safetensors",
        metadata={"frepo_export": MANIFEST},
    )
    files = {
        "images.pt": "N×C×H×W float32 images in the space the manifest's images.space names (torch.load), grouped "
        "by class (stably), as DD-Ranking takes them",
        "labels.pt": "N×K learned labels (regression targets: DD-Ranking's soft_labels) or N class ids",
        "hard_labels.pt": "N class ids, int64 (DD-Ranking's hard_labels)",
        "lr.pt": "a 0-d tensor: the SGD learning rate to train with (see lr)",
        "data.safetensors": "images, labels, hard_labels and lr (1-element) without pickle",
    }
    return Written(files, "preprocessed", order=order)


@register_layout("npz")
def _write_npz(ds: DistilledSet, images: torch.Tensor, labels: torch.Tensor, out: Path) -> Written:
    name = f"step{int(ds.meta.get('step') or 0):06d}.npz"

    def save(path: Path) -> None:
        with open(path, "wb") as fh:
            image, label = images.permute(0, 2, 3, 1).contiguous().numpy(), ds.targets().numpy()
            np.savez(fh, image=image, label=label, **{NPZ_MARK: np.array(EXPORT_VERSION)})

    atomic_write(out / name, save)
    files = {
        name: f"the official FRePo layout: image N×H×W×C float32 (preprocessed), label N×K float32; {NPZ_MARK}: "
        "this export's version (the official code reads image and label only)"
    }
    return Written(files, "preprocessed")


LAYOUTS = tuple(WRITERS)  # imagefolder, pt, npz: the CLI's choices
SPACES = ("frepo", *ddranking.SPACES)  # --space: the set's own preprocessed space, or DD-Ranking's two


def default_space(layout: str, dataset: str) -> str:
    """DD-Ranking's space for a pt export of a dataset DD-Ranking evaluates (what a pt export is for), the
    set's own space otherwise."""
    return "ddranking" if layout == "pt" and dataset in ddranking.DATASETS else "frepo"


def ddranking_class_ids(ds: DistilledSet, data_dir: str | Path | None = None) -> list[int]:
    """DD-Ranking's id of each of the set's class ids (`ddranking.class_ids`), Tiny ImageNet's wnids read from its
    dataset folder where the set names its classes by words."""
    wnids = None
    if ds.dataset == "tiny_imagenet":
        for folder in (data_dir, recorded_data_dir(ds), os.environ.get("FREPO_DATA_DIR")):
            listed = Path(folder).expanduser() / "tiny-imagenet-200" / "wnids.txt" if folder else None
            if listed is not None and listed.is_file():
                wnids = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
                break
    return ddranking.class_ids(ds.dataset, ds.classes, wnids)


def in_space(
    ds: DistilledSet, space: str, class_ids: list[int], *, data_dir: str | Path | None = None, download: bool = True
) -> DistilledSet:
    """The set with its images re-expressed in `space` (one of SPACES) and that space's preprocessing (for
    ddranking-zca, fitted on the dataset found in `data_dir`, else the folder the set was distilled from), its
    labels and classes numbered by `class_ids` (`ddranking_class_ids`: frepo's id -> DD-Ranking's)."""
    check_choice("space", space, SPACES)
    if space == "frepo":
        return ds
    theirs = torch.tensor(class_ids)
    target = ddranking.preprocessing(ds.dataset, space, data_dir=data_dir or recorded_data_dir(ds), download=download)
    images = ddranking.re_expressed(ds.images.detach().cpu().float(), ds.preprocessing, target)
    labels = ds.labels.detach().cpu()
    if labels.ndim == 2:  # column k (frepo's class k) becomes DD-Ranking's column theirs[k]
        relabelled = torch.empty_like(labels)
        relabelled[:, theirs] = labels
    else:
        relabelled = theirs[labels.long()].to(labels.dtype)
    classes = [""] * len(theirs)
    for mine, their in enumerate(theirs.tolist()):
        classes[their] = ds.classes[mine]
    return DistilledSet(images, relabelled, target, {**ds.meta, "classes": classes})


def export(
    ds: DistilledSet | str | Path,
    out: str | Path,
    layout: str,
    space: str | None = None,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> Path:
    """Write a set (or a frepo file) into the folder `out` in `layout` (one of LAYOUTS), its images in
    `space` (one of SPACES; pt only; default: `default_space`); returns the manifest's path. `data_dir` and
    `download`: where ddranking-zca's dataset is found (`load_dataset`'s)."""
    check_argument("ds", ds, (DistilledSet, str, os.PathLike), "a DistilledSet or the path of a frepo file")
    check_path("out", out)
    check_choice("layout", layout, LAYOUTS)
    if space is not None:
        check_choice("space", space, SPACES)
    if space not in (None, "frepo") and layout != "pt":
        raise FrepoError(
            f"--space {space} applies to --format pt; imagefolder writes pixels and npz the official FRePo "
            "layout, both from the set's own space"
        )
    check_target(out)  # before the set is read (a foreign set's ZCA fit, then "not a folder")
    if not isinstance(ds, DistilledSet):
        ds = load_distilled(ds)
    else:  # one built by hand: as save_distilled checks it (labels[:5] of 10 images exported 5 PNGs)
        check_set(ds, f"not exported to {out}", preprocessing=False)
    space = space or default_space(layout, ds.dataset)
    # before the lock, whose file's folders a refused export left behind, empty (a dataset DD-Ranking lacks, or
    # ddranking-zca's dataset not found)
    dd_settings = None if space == "frepo" else ddranking.settings(ds.dataset, space, int(ds.images.shape[-1]))
    if dd_settings is not None:  # how the labels were renumbered, undone when frepo reads the export back
        dd_settings["frepo_class_ids"] = ddranking_class_ids(ds, data_dir)
    theirs = dd_settings["frepo_class_ids"] if dd_settings else []
    ds = in_space(ds, space, theirs, data_dir=data_dir, download=download)
    out = Path(out)
    with one_writer(out.resolve(), "--to"):  # one export into a folder at a time
        check_target(out)  # again: another export may have written it meanwhile
        return _export(ds, out, layout, space, dd_settings)


def check_target(given: str | os.PathLike) -> None:
    """Refuse `given` as an export's folder unless it is new, empty, or a previous export and nothing else (an
    export replaces it whole)."""
    if not os.fspath(given).strip():  # Path("") is ".", said to be "not empty"
        raise FrepoError("--to names no folder: give the folder to export into")
    out = Path(given)
    if out.exists() and not out.is_dir():
        raise FrepoError(f"--to {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise FrepoError(f"--to {out} is not empty and holds no frepo export; use another folder")
    if (out / MANIFEST).is_file():  # replaced whole: nothing but the old export may be in it
        try:
            entries = _entries(read_manifest(out / MANIFEST))
        except FrepoError as exc:  # a damaged export's own files were listed as strangers, with no way out said
            raise FrepoError(
                f"--to {out} holds a {MANIFEST} frepo cannot read ({exc}): use another folder (or, were it a frepo "
                "export's, remove the folder)"
            ) from None
        others = sorted(set(p.name for p in out.iterdir()) - entries)
        if others:
            raise FrepoError(
                f"--to {out} holds files besides its export ({', '.join(others[:5])}), which exporting again "
                "would delete; move them, or use another folder"
            )


def _export(ds: DistilledSet, out: Path, layout: str, space: str, dd_settings: dict | None) -> Path:
    """`export`'s writing of `ds`, already in `space`, under `out`'s write lock."""
    images, labels = ds.images.detach().cpu().float(), ds.labels.detach().cpu()
    # Written whole into a temp folder that then takes `out`'s place: a failed export (a full disk) leaves the
    # previous one as it was, never a mix of two sets or files without their manifest.
    with atomic_folder(out) as staging:
        written = WRITERS[layout](ds, images, labels, staging)
        image_space = space if written.space == "preprocessed" and space != "frepo" else written.space
        files: dict[str, str] = {
            PREPROCESSING: "the preprocessing tensors (pre_mean, pre_std; for ZCA pre_zca_mean and "
            "pre_whiten_upper_<float16|float32|int32>_zlib, the whitening matrix W's upper triangle row by row, its "
            "bytes grouped by significance and zlib-compressed (int32: zigzag-coded integers k, W = k·pre_whiten_step; "
            "W⁻¹ = its inverse), or in the low-rank form pre_zca_basis B, pre_zca_scale s: W = I + B diag(s - 1) Bᵀ). "
            "Applied to raw uint8 images N×H×W×C: x / 255, then (x - pre_mean) / pre_std per channel, then for ZCA "
            "each image flattened in C,H,W order (d = len(pre_zca_mean) values; not H,W,C) minus pre_zca_mean, "
            "times W (N×d @ d×d), and back to N×C×H×W (kind zca_block, for large images: W whitens each of the "
            "stride×stride interleaved sub-images x[:, :, i::stride, j::stride] instead; frepo.load_export applies it)",
            **written.files,
        }
        manifest: dict = dict(written.manifest)
        pre = ds.preprocessing
        atomic_save_safetensors(
            pre.tensors(), staging / PREPROCESSING, metadata={"frepo_preprocessing": json.dumps(pre.params())}
        )
        config = ds.meta.get("config") or {}
        manifest.update(
            {
                "format": "frepo-export",
                "export_version": EXPORT_VERSION,
                "layout": layout,
                "files": {MANIFEST: "this manifest", **files},
                "images": {"count": int(len(images)), "shape": list(images.shape[1:]), "space": image_space},
                "labels": _labels_record(ds, written.order),
                "classes": ds.classes,
                "dataset": ds.dataset,
                "preprocessing": {**pre.params(), "mean": pre.mean.tolist(), "std": pre.std.tolist()},
                "ddranking": dd_settings,
                "lr": {"sgd": SGD_LR, "frepo_protocol": FREPO_PROTOCOL_LR},
                "set": {
                    "kind": ds.meta.get("kind"),
                    "ipc": ds.meta.get("ipc"),
                    "step": ds.meta.get("step"),
                    "seed": ds.meta.get("seed"),
                    "use_flip": bool(config.get("use_flip") or False),
                    "depth": (config.get("model") or {}).get("depth"),  # its evaluation networks' (`network_depth`)
                    "mirror_invariant": ds.mirror_invariant,
                    "val_size": ds.meta.get("val_size"),
                    "holdout": Holdout.record(ds.meta),  # made from a narrowed run's settings, for older files
                    "test_fingerprint": ds.meta.get("test_fingerprint"),
                    "checksum": ds.meta.get("checksum"),
                    "data_dir": (config.get("data") or {}).get("data_dir"),
                },
                "frepo_version": __version__,
                "checksums": checksums(staging)[1],
            }
        )
        atomic_write_json(staging / MANIFEST, manifest)
    return out / MANIFEST


def export_entries(folder: Path) -> set[str]:
    """The top-level names the export in `folder` wrote, by its manifest (an unreadable one: none)."""
    try:
        return _entries(read_manifest(folder / MANIFEST))
    except FrepoError:
        return set()


def _entries(manifest: dict) -> set[str]:
    """The top-level names an export wrote, by its manifest."""
    names = [*manifest.get("files", {}), *manifest.get("image_files", [])]
    return {MANIFEST, PREPROCESSING} | {name.split("/")[0] for name in names if "<" not in name}


def find_manifest(path: str | Path) -> Path | None:
    """The export manifest of `path`: a folder's own, or the one beside a file that export wrote. Another file
    in an export's folder is not the export (a set copied there was read as the export's set), nor is a
    folder inside one (one class folder of an imagefolder export was read as the whole export)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    candidate = folder / MANIFEST
    if not candidate.is_file():
        return None
    try:
        manifest = read_manifest(candidate)
    except FrepoError:
        return candidate  # an export all the same: reading it says what is wrong with its manifest
    return candidate if folder == path or path.name in _entries(manifest) else None


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    # ValueError: JSONDecodeError, and UnicodeDecodeError (no UTF-8); RecursionError: arrays nested thousands deep
    except (OSError, ValueError, RecursionError) as exc:
        raise FrepoError(f"cannot read the export manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != "frepo-export":
        raise FrepoError(f"{path} is not a frepo export manifest")
    if manifest.get("export_version") != EXPORT_VERSION:
        raise FrepoError(f"{path}: export version {manifest.get('export_version')} is not supported")
    _check_fields(manifest, path)
    return manifest


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The manifest's fields that frepo reads back, each with what it must be (an edited or damaged manifest was
# a TypeError, KeyError or AttributeError deep in a reader; a missing one was "the manifest lacks 'dataset'").
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "layout": (lambda v: isinstance(v, str), "a layout name"),
    "dataset": (lambda v: isinstance(v, str) and bool(v), "a dataset name or path"),
    "classes": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(c, str) for c in v), "class names"),
    "images": (
        lambda v: (
            isinstance(v, dict)
            and isinstance(v.get("shape"), list)
            and len(v["shape"]) == 3
            and all(_is_int(n) and n >= 1 for n in v["shape"])
        ),
        'an object with "shape": [C, H, W]',
    ),
    "files": (lambda v: isinstance(v, dict), "an object of file names"),
    "image_files": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "a list of file names"),
    "set": (lambda v: isinstance(v, dict), "an object"),
}
_OPTIONAL = {"files", "image_files"}
# The fields of "set", where present and not null.
_SET_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "ipc": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),  # as a set file's metadata (check_meta)
    **{k: (lambda v: _is_int(v) and v >= 0, "an integer >= 0") for k in ("step", "val_size")},
    "seed": (_is_int, "an integer"),
    "depth": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    **{k: (lambda v: isinstance(v, bool), "true or false") for k in ("use_flip", "mirror_invariant")},
    **{k: (lambda v: isinstance(v, str), "a string") for k in ("kind", "test_fingerprint", "checksum", "data_dir")},
    "holdout": (lambda v: isinstance(v, dict), "an object"),
}


def _check_fields(manifest: dict, path: Path) -> None:
    """Each field frepo reads back is of the kind `frepo export` writes."""
    for key, (fits, what) in _FIELDS.items():
        if key not in manifest:
            if key in _OPTIONAL:
                continue
            raise FrepoError(f"{path}: the manifest lacks {key!r}")
        if not fits(manifest[key]):
            raise FrepoError(f"{path}: the manifest's {key!r} must be {what}, got {manifest[key]!r:.80}")
    for key, (fits, what) in _SET_FIELDS.items():
        value = manifest["set"].get(key)
        if value is not None and not fits(value):
            raise FrepoError(f"{path}: the manifest's set {key!r} must be {what}, got {value!r:.80}")


def read_preprocessing(folder: Path, image_shape: tuple[int, int, int]) -> Preprocessing:
    """The export's preprocessing, checked as a set file's is (`check_preprocessing_tensors`) for its images of
    `image_shape` (C, H, W, the manifest's)."""
    from safetensors import safe_open

    path = folder / PREPROCESSING
    try:
        with safe_open(str(path), framework="pt") as fh:
            params = json.loads((fh.metadata() or {})["frepo_preprocessing"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # missing, damaged, or not ours
        raise FrepoError(f"cannot read the export's preprocessing {path}: {exc}") from exc
    # One of another export (copied in) failed deep in the first transform ("shape '[1, 1, 1, 1]' is invalid").
    for name, size in (("pre_mean", image_shape[0]), ("pre_std", image_shape[0]), ("pre_zca_mean", prod(image_shape))):
        if name in tensors and tensors[name].numel() != size:
            raise FrepoError(
                f"{path} is for other images ({name} has {tensors[name].numel()} values, the manifest's images of "
                f"{'×'.join(map(str, image_shape))} need {size}): it is not this export's"
            )
    return Preprocessing.from_tensors(params, check_preprocessing_tensors(params, tensors, image_shape, str(path)))
