"""The entry points: any supported file read into a `DistilledSet` (with the real dataset it belongs to),
or into a run's starting set. frepo's own two formats carry their dataset and preprocessing; the others
are read by the reader registered under their format's name (`READERS`), which says which preprocessing
the images are in."""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ...base.errors import FrepoError
from ...base.lock import holder
from ...base.log import warn
from ...data import BUILTIN, RawDataset, default_data_dir, load_dataset
from ...data.folders import class_folders
from ...data.preprocess import Preprocessing
from ...data.recipes import CLAIMS, check_preprocessing, claimed_preprocessing, frepo_preprocessing
from ..artifact import DistilledSet, as_read, load_distilled, recorded_data_dir
from ..digests import file_checksum
from . import readers  # noqa: F401  (registers the readers of other tools' formats, in FORMATS' order)
from .exports import load_export
from .files import detect_format
from .readers import set_file_hint
from .registry import READERS, Reader

# frepo's own formats -> their loader: files that say their dataset and preprocessing themselves
OWN_FORMATS: dict[str, Callable[[str | Path], DistilledSet]] = {"frepo": load_distilled, "frepo-export": load_export}
FORMATS = (*OWN_FORMATS, *READERS)
# How a format is named to users where its key misleads ("frepo-npz" read as frepo's own format)
SHOWN = {"frepo-npz": "official FRePo .npz"}
RUN_SET = "distilled.safetensors"  # the set a run directory holds (`frepo.jobs.runs.RunDir`)


def is_run(path: str | Path) -> bool:
    """Whether `path` is a run directory: its set, or its config.json (a distillation's settings) beside what a
    run writes from its start (a checkpoint, metrics, snapshots). A folder of another tool's that holds a
    config.json, even with a metrics.jsonl, is no run."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / RUN_SET).is_file():
        return True
    started = any((path / f).is_file() for f in ("checkpoint.pt", "metrics.jsonl"))
    return (started or any((path / "images").glob("step*.png"))) and _distill_settings(path / "config.json")


def _distill_settings(file: Path) -> bool:
    """Whether `file` holds a distillation's settings (`frepo.jobs.runs.RunDir` writes them: ipc, data, ...)."""
    try:
        settings = json.loads(file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(settings, dict) and "ipc" in settings and isinstance(settings.get("data"), dict)


def run_set(path: str | Path) -> Path:
    """`path`, or for a run directory (`is_run`) the set it holds: every command takes a run for its set, as
    `frepo show RUN` does (its folder of snapshots was read as class folders). A run without its set yet is
    an error that says so; one continued past its set (a checkpoint written after it) warns."""
    path = Path(path)
    if not is_run(path):
        return path
    file = path / RUN_SET
    owner = holder(path)  # a distillation running in it now: its command is not to be run again
    finish = f"frepo process {owner} is distilling it now: wait for it" if owner else "rerun its distill command"
    if not file.is_file():
        sooner = ""
        if not owner and (path / "checkpoint.pt").is_file():  # a long run stopped early: its set is one step away
            best = (path / "best.safetensors").is_file()
            sooner = (
                " (or to end it where its checkpoint is: the same command with --steps <the checkpoint's step> "
                "--resume-with-changes writes its set at once"
                + ("; best.safetensors holds its best validated set so far)" if best else ")")
            )
        raise FrepoError(f"{path} is a run that has not written its set ({RUN_SET}) yet: {finish} to finish{sooner}")
    checkpoint = path / "checkpoint.pt"
    if owner or (checkpoint.is_file() and checkpoint.stat().st_mtime > file.stat().st_mtime):
        warn(f"{path} was continued after it wrote its set: this is the set of its last finish; {finish} to finish")
    return file


def _default_claim(reader: Reader | None, raw: RawDataset, path: Path) -> str:
    if path.name == "images.pt":
        # DD-Ranking's names (and frepo export --format pt's, out of its folder): its two spaces are equally
        # likely, and a wrong guess trains to a few points below the set's accuracy, silently.
        raise FrepoError(
            f"{path}: images.pt with labels.pt is how DD-Ranking (and frepo export --format pt) name a set, and the "
            "files do not say its space: pass --preprocess ddranking (use_zca false: the export's default for "
            "DD-Ranking's datasets), ddranking-zca, frepo (the export's default for the others), mtt-zca or dc"
        )
    return reader.claim(raw) if reader is not None else "frepo"  # an unknown format is refused after the checks


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
    advice: str | None = None,
) -> DistilledSet:
    """Read a distilled set written by another tool for dataset `raw` into a DistilledSet whose
    preprocessing is the one its images live in (so the test split gets the very same transform). `advice`:
    what the warning of images unlike their claimed space tells the user to do (default: name --preprocess)."""
    from ...config.presets import default_flip

    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "frepo":
        raise FrepoError(f"{path} is a frepo file; it carries its own dataset and preprocessing")
    cache = Path(cache_dir) if cache_dir is not None else default_data_dir()
    reader = READERS.get(fmt)
    claim = _default_claim(reader, raw, path) if preprocess in (None, "auto") else preprocess
    if claim not in CLAIMS:
        raise FrepoError(f"unknown --preprocess {claim!r}; use auto or one of {', '.join(CLAIMS)}")
    if entry is not None and not (reader is not None and reader.entries):
        raise FrepoError("--entry selects a set inside a DC/DSA res_*.pt file; other formats hold one set")
    if reader is None:
        raise FrepoError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if reader.pixels and claim != "pixels":
        raise FrepoError("a folder of images holds raw pixels; drop --preprocess (or use pixels)")
    images, labels, more = reader.read(path, raw, entry or 0)
    source: dict = {"path": str(path), "format": fmt, "preprocessing": claim, **more}
    if reader.pixels:
        pre = frepo_preprocessing(raw, cache)
        images = pre(images)
    else:
        pre = claimed_preprocessing(claim, raw, cache)
        images = torch.as_tensor(images)  # the pixel readers (image folders) give numpy arrays; the others tensors
        check_preprocessing(images, claim, pre, raw, str(path), advice)
        if claim == "pixels":
            images = pre.from_unit(images)
    n = len(images)
    counts = torch.bincount(labels.argmax(-1) if labels.ndim == 2 else labels, minlength=raw.num_classes)
    ipc = int(counts[0]) if bool((counts == counts[0]).all()) else None
    # The flip trick belongs to FRePo: official FRePo files follow its per-dataset table; other tools
    # never distilled with it.
    use_flip = default_flip(raw.name, ipc or max(1, n // raw.num_classes)) if reader.flip else False
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
    return as_read(DistilledSet(images.float(), labels, pre, meta))


def load_set(
    file: str | Path,
    dataset: str | None = None,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    preprocess: str = "auto",
    entry: int | None = None,
) -> tuple[DistilledSet, RawDataset]:
    """Any supported distilled-set file (or a run directory: its set) -> (DistilledSet, the real dataset it
    belongs to)."""
    file = run_set(file)
    fmt = detect_format(file)
    if fmt in OWN_FORMATS:
        ds = OWN_FORMATS[fmt](file)
        if preprocess not in (None, "auto"):
            raise FrepoError(f"a {fmt} file carries its own preprocessing; drop --preprocess")
        if entry is not None:
            raise FrepoError(f"--entry selects a set inside a DC/DSA res_*.pt file; a {fmt} file holds one set")
        return own_dataset(ds, str(file), dataset, data_dir=data_dir, download=download)
    check_holds_a_set(Path(file), fmt, preprocess)
    if dataset is None:
        kind = "folder (of class folders of images)" if Path(file).is_dir() else "file"
        shown = SHOWN.get(fmt, fmt)
        article = "an" if shown[0] in "aeiou" else "a"
        raise FrepoError(
            f"{file} is read as {article} {shown} {kind}, which does not say which dataset it belongs to: pass "
            "--dataset NAME (its test split and preprocessing are used)"
        )
    raw = load_dataset(dataset, data_dir, download)
    return load_foreign(file, raw, fmt=fmt, preprocess=preprocess, entry=entry, cache_dir=data_dir), raw


def check_holds_a_set(path: Path, fmt: str, preprocess: str | None = None) -> None:
    """Refuse, by a look inside, what is no set whatever --dataset says: a folder of runs (read as class
    folders), a dataset's .npz (read as an official FRePo file), a safetensors file without `images` and
    `labels` (a model's weights). Each asked for --dataset first, then failed on it with advice that did not fit.
    An npz export out of its folder is refused too, unless `preprocess` names its space (the user's word then)."""
    if fmt == "imagefolder":
        try:
            runs = sorted(child.name for child in path.iterdir() if is_run(child))
        except OSError:  # unreadable: the reader says so
            return
        if runs:
            shown = ", ".join(runs[:5]) + (", …" if len(runs) > 5 else "")
            raise FrepoError(f"{path} holds frepo runs ({shown}), not a set: pass one of them")
        if not class_folders(path):  # it asked for --dataset first, as if the folder were another tool's set
            raise FrepoError(f"{path} is no run, export or folder of class folders of images{set_file_hint(path)}")
    elif fmt == "frepo-npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = set(archive.files)
        except Exception:  # damaged: the reader says how
            return
        if {"x_train", "y_train"} <= names:
            raise FrepoError(f"{path} is a dataset (x_train, y_train, ...), not a set: give it as --dataset {path}")
        from ..export import MANIFEST, NPZ_MARK, PREPROCESSING

        if NPZ_MARK in names and preprocess in (None, "auto"):  # out of its export's folder: read as an official file,
            # the reference's preprocessing would be applied, not its set's
            raise FrepoError(
                f"{path} was written by frepo export, in its set's preprocessed space: read it in its export's "
                f"folder, with {MANIFEST} and {PREPROCESSING} beside it (they say how to put test images there), "
                "or name the preprocessing it is in (--preprocess frepo: frepo's own of the dataset)"
            )
    elif fmt == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                names, metadata = set(fh.keys()), fh.metadata() or {}
        except Exception:
            return
        from ..export import MANIFEST, PREPROCESSING

        if "frepo_export" in metadata and preprocess in (None, "auto"):  # a pt export's data.safetensors, copied out:
            # read as a plain set in frepo's preprocessing of its dataset, not its own space (a DD-Ranking one)
            raise FrepoError(
                f"{path} was written by frepo export, in the space its {MANIFEST} names (a DD-Ranking space by "
                f"default, which no --preprocess names): read it in its export's folder, with {MANIFEST} and "
                f"{PREPROCESSING} beside it; only for an export with --space frepo, --preprocess frepo reads it here"
            )
        if not {"images", "labels"} <= names:
            shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
            raise FrepoError(
                f"{path} is a safetensors file without a set's images and labels (it holds {shown or 'nothing'}: "
                "a model's weights?); a set's file holds `images` and `labels` tensors"
            )


def load_start(
    path: str | Path,
    raw: RawDataset,
    preprocessing: Preprocessing,
    classes: list[int],
    ipc: int,
    held_out: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A run's starting set from a file (`frepo distill --init FILE`): (ipc·K×C×H×W images in
    `preprocessing`, ipc·K×K labels), class-major like the seeded real-image start.

    Any format `load_set` reads; the images go through pixel space into the run's preprocessing (an
    official .npz is in the reference's, a frepo file in its own), untouched when that is the run's own.
    Class ids (a subset) become the reference's starting labels; learned labels are kept as they are.
    `held_out`: the run's validation images (indices into raw's training split), said if the set was made
    from them.
    """
    path = run_set(path)
    fmt = detect_format(path)
    if fmt in OWN_FORMATS:
        ds = OWN_FORMATS[fmt](path)
        if not _same_dataset(raw.name, ds.dataset) and not _moved_here(ds, raw):
            raise FrepoError(f"--init {path} was distilled from {ds.dataset}, not {raw.name}")
    else:
        if Path(path).name == "images.pt":  # DD-Ranking's names: load_foreign asks for --preprocess, distill has none
            raise FrepoError(
                f"--init {path}: a loose images.pt does not say its space (DD-Ranking's names); start from its "
                "frepo export folder, or from a file that records its preprocessing (a frepo .safetensors)"
            )
        # distill has neither --preprocess nor --entry: an export (a frepo file) of the set the user means is
        # the way to start from another space or entry.
        convert = f"frepo export {path} --dataset {raw.name} --format pt --to DIR"
        export = f"export the file with the --preprocess it holds ({convert} --preprocess ...), then --init DIR"
        check_holds_a_set(Path(path), fmt)  # a copied-out export, a dataset's .npz: as evaluate refuses them
        try:
            ds = load_foreign(path, raw, fmt=fmt, advice=f"The run would start from wrongly scaled images: {export}")
        except FrepoError as error:
            if "--preprocess" not in str(error):
                raise
            raise FrepoError(f"{error}. distill has no --preprocess: {export}") from None
        entries = ds.meta["source"].get("entries", 1)
        if entries > 1:  # say which set it starts from, and how to start from another
            warn(
                f"--init {path} holds {entries} distilled sets; the run starts from the first (to start from "
                f"another: {convert} --entry N, then --init DIR)"
            )
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
    if held_out is not None and len(held_out):
        _warn_of_seen_holdout(ds, raw, held_out, path)
    order = torch.cat([torch.nonzero(ids == c).flatten() for c in classes])
    images = ds.images[order]
    if not ds.preprocessing.same_as(preprocessing):
        images = preprocessing.from_unit(ds.preprocessing.to_unit(images))
    return images.float(), labels[order].float()


def _warn_of_seen_holdout(ds: DistilledSet, raw: RawDataset, held_out: np.ndarray, path: str | Path) -> None:
    """Say so when a start was made from training images the run holds out for validation (a subset made with
    --val-size 0, another tool's set made from the whole split): its validation accuracy, and the choice of
    best.safetensors by it, would be judged on images the start was made from."""
    from ...data.splits import Holdout

    made_from, _ = Holdout.of_set(ds.meta, len(raw.y_train)).split(raw.y_train)  # another tool's: all of them
    seen = int(np.intersect1d(held_out, made_from).size)
    if seen:
        # another tool's set: "val_size" 0 is frepo's reading (those tools distil from the whole split), not a record
        foreign = str(ds.meta.get("kind", "")).startswith("foreign-")
        recorded = not foreign and (Holdout.record(ds.meta) is not None or "val_size" in ds.meta)
        made = "was made from" if recorded else "records no hold-out, so may have been made from any of the"
        warn(
            f"--init {path} {made} training images this run holds out for validation ({seen} of its "
            f"{len(held_out)}): its validation accuracy, and best.safetensors, may be biased upward. Start from a "
            "set made with this run's hold-out (the same --val-size, classes and chunk) for an unbiased one"
        )


def own_dataset(
    ds: DistilledSet, where: str, dataset: str | None, *, data_dir: str | Path | None, download: bool
) -> tuple[DistilledSet, RawDataset]:
    """(the set, its real dataset) for a set of frepo's own, which records its dataset. A dataset of the
    user's own (a .npz file or an image folder) may have moved since, or the set come from another machine:
    `dataset` then names where that data is now, and is taken when its test split is the one the set was made
    with (the set's `test_fingerprint`); the set returned names it."""
    recorded = ds.dataset
    if dataset is None or _same_dataset(dataset, recorded):
        if recorded not in BUILTIN and not Path(recorded).exists():
            raise FrepoError(
                f"{where} was made from {recorded}, which is not there any more: pass --dataset PATH where that "
                "data is now (its test split is checked against the one the set was made with)"
            )
        raw = load_dataset(recorded, data_dir or recorded_data_dir(ds), download)
        _check_read_as_made(ds, raw, where)
        return ds, raw
    if recorded in BUILTIN:
        raise FrepoError(f"{where} was distilled from {recorded}, not {dataset}; drop --dataset")
    raw = load_dataset(dataset, data_dir, download)
    _check_read_as_made(ds, raw, where)  # before the fingerprint, which would call data read otherwise "other data"
    expected = ds.meta.get("test_fingerprint")
    if expected is None:
        raise FrepoError(
            f"{where} was made from {recorded} and records no fingerprint of its test split to check that "
            f"{dataset} holds the same data; evaluate it where {recorded} is"
        )
    if expected != raw.test_fingerprint():
        raise FrepoError(
            f"{where} was made from {recorded}; {dataset} is other data (its test split is not the one the set "
            "was made with)"
        )
    return dataclasses.replace(ds, meta={**ds.meta, "dataset": raw.name}), raw


def _check_read_as_made(ds: DistilledSet, raw: RawDataset, where: str) -> None:
    """A set's images have its dataset's shape, and its classes their names in its order: a folder of the user's
    own read otherwise now failed deep in the first transform ("N×H×W×C with C = 3 ..., got (..., 1)"), and class
    folders numbered otherwise would pair the set's labels with other classes."""
    recorded = [unicodedata.normalize("NFC", str(name)) for name in ds.meta.get("classes") or []]
    # the user's own data only: a registered dataset's numbering is fixed, and older sets may name its classes
    # otherwise (torchvision's "0 - zero" for MNIST's "0")
    own = raw.name not in BUILTIN
    if own and recorded and len(recorded) == raw.num_classes and recorded != raw.classes:
        moved = next(i for i, (a, b) in enumerate(zip(recorded, raw.classes)) if a != b)
        raise FrepoError(
            f"{where} numbers its classes otherwise than {raw.name} does now (class {moved}: {recorded[moved]!r} in "
            f"the set, {raw.classes[moved]!r} in the data): the data's class folders changed since; distil it again"
        )
    shape = tuple(ds.images.shape[1:])
    if shape == tuple(raw.image_shape):
        return
    shown = "×".join
    raise FrepoError(
        f"{where} holds images of {shown(map(str, shape))} (C×H×W), but {raw.name} reads as "
        f"{shown(map(str, raw.image_shape))} now: the data changed since the set was made, or frepo reads it "
        "otherwise (since 2026-12-07, an image folder's greyscale palette and greyscale-with-alpha images are one "
        "channel, and a photo is turned as its EXIF orientation shows it); distil it again"
    )


def _same_dataset(given: str, recorded: str) -> bool:
    if given == recorded:
        return True
    path, then = Path(given).expanduser(), Path(recorded).expanduser()
    if not path.exists():
        return False
    # a recorded relative path (a set built by hand) is its absolute form; a registered name is no path
    return str(path.resolve()) == recorded or (
        recorded not in BUILTIN and then.exists() and path.resolve() == then.resolve()
    )


def _moved_here(ds: DistilledSet, raw: RawDataset) -> bool:
    """Whether `raw` is the dataset of one's own that `ds` was made from, now elsewhere: its test split is the
    one the set records (`own_dataset`)."""
    expected = ds.meta.get("test_fingerprint")
    return ds.dataset not in BUILTIN and expected is not None and expected == raw.test_fingerprint()


def describe(ds: DistilledSet) -> str:
    """One line saying where a set came from, for the CLI."""
    source = ds.meta.get("source")
    if not source:
        return f"{ds.meta.get('kind', 'set')} of {ds.dataset}"
    if source["format"] == "frepo-export":
        return f"frepo export ({source['layout']}) read with its stored preprocessing"
    extra = f", entry {source['entry']} of {source['entries']}" if "entries" in source else ""
    return (
        f"{SHOWN.get(source['format'], source['format'])} file read as '{source['preprocessing']}' preprocessing{extra}"
    )
