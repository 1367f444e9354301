"""`frepo evaluate`: find a distilled set and its real dataset, take the split it is tested on, and
run the evaluation (`frepo.eval`) on each architecture — one result per architecture.

Where the set comes from is a `SourceConfig` (a loaded `DistilledSet`, or any file `frepo.io.foreign`
reads, with the dataset and preprocessing of a file from another tool); what the evaluation is, an
`EvalConfig`. Both are built and validated once; keyword overrides name their leaf fields.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.device import host_tensor
from ..base.errors import FrepoError, Interrupted, check_argument
from ..base.fields import check_fields, check_type, leaf_fields, opt, set_leaf
from ..base.log import warn
from ..config import DATA_DIR_HELP, STREAM_AUTO_BYTES
from ..data import RawDataset, default_data_dir
from ..data.recipes import CLAIMS
from ..data.splits import Holdout
from ..data.stream import split_view
from ..eval import EvalConfig, EvalResult, evaluate_set
from ..eval.finished import FinishedNetworks, evaluation_key, set_digest
from ..eval.results import count_of
from ..io.artifact import DistilledSet, check_set, still_as_read
from ..models import build_model

log = logging.getLogger(__name__)


@dataclass
class SourceConfig:
    """How to find a set's real dataset (and, for another tool's file, how to read the file)."""

    dataset: str | None = opt(
        None,
        "the real dataset a file from another tool belongs to: its test split and preprocessing (default: none; "
        "frepo's own files and exports record theirs)",
    )
    preprocess: str = opt(
        "auto",
        "files from other tools: the preprocessing their images are in (default: auto, the tool's own): "
        + "; ".join(f"{k} = {v}" for k, v in CLAIMS.items()),
        choices=("auto", *CLAIMS),
    )
    entry: int | None = opt(None, "DC/DSA res_*.pt: which of its distilled sets (default: 0)")
    data_dir: str | None = opt(
        None, DATA_DIR_HELP.replace("(default: ", "(default: the folder a frepo set was distilled from, else ", 1)
    )
    download: bool = opt(True, "download a missing dataset (torchvision's downloader, or the layout's public archive)")

    def validate(self) -> None:
        check_fields(self)
        if self.entry is not None and self.entry < 0:
            raise FrepoError(f"entry must be >= 0, got {self.entry}")


FOREIGN_WITHOUT_VAL = "another tool's set (other tools distil from the whole training split)"


def configure(
    config: EvalConfig | None = None, source: SourceConfig | None = None, **overrides: Any
) -> tuple[EvalConfig, SourceConfig]:
    """Copies of (config, source) with `overrides` (leaf names of either) applied, both validated."""
    options = "options go as keywords: evaluate(ds, models=1)"
    check_argument(
        "config", config, (EvalConfig, type(None)), f"an EvalConfig (EvalConfig.build(...)) or None; {options}"
    )
    check_argument("source", source, (SourceConfig, type(None)), f"a SourceConfig or None; {options}")
    config = EvalConfig() if config is None else copy.deepcopy(config)
    source = SourceConfig() if source is None else copy.deepcopy(source)
    source_names = leaf_fields(source)
    for name, value in overrides.items():
        set_leaf(source if name in source_names else config, name, value)
    config.validate()
    source.validate()
    return config, source


def open_set(file: DistilledSet | str | Path, source: SourceConfig) -> tuple[DistilledSet, RawDataset]:
    """(the set, its real dataset): a loaded set's own, or a file read by `frepo.io.foreign`."""
    if isinstance(file, DistilledSet):
        if source.preprocess != "auto" or source.entry is not None:
            raise FrepoError("preprocess and entry apply to files, not to a loaded DistilledSet")
        # One built by hand: NaN or uint8 images trained to chance accuracy silently. (Its Preprocessing was
        # checked when it was built.)
        check_set(file, "the set", preprocessing=False)
        from ..io.foreign.load import own_dataset

        return own_dataset(file, "the set", source.dataset, data_dir=source.data_dir, download=source.download)
    from ..io.foreign import load_set

    return load_set(
        file,
        source.dataset,
        data_dir=source.data_dir,
        download=source.download,
        preprocess=source.preprocess,
        entry=source.entry,
    )


def read_set(file: str | Path, source: SourceConfig | None = None) -> DistilledSet:
    """The set at `file` (a run directory: its set) for `show` and `export`, without reading its dataset where
    it need not: frepo's own file or export by itself; another tool's file (or any, once `source` names a
    dataset, a preprocessing or an entry) through `frepo.io.foreign.load_set`, which needs the dataset."""
    from ..io.foreign import detect_format
    from ..io.foreign.load import OWN_FORMATS, run_set

    source = source or SourceConfig()
    path = run_set(file)
    fmt = detect_format(path)
    if fmt in OWN_FORMATS and (source.dataset, source.preprocess, source.entry) == (None, "auto", None):
        return OWN_FORMATS[fmt](path)  # source.data_dir alone: unused
    return open_set(path, source)[0]


def eval_split(ds: DistilledSet, raw: RawDataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in the set's preprocessed space, class ids) of the split the set is tested on: the test
    split, or the validation hold-out the set was distilled without."""
    if raw.num_classes != ds.num_classes:
        raise FrepoError(f"the set has {ds.num_classes} classes but dataset {raw.name} has {raw.num_classes}")
    if tuple(raw.image_shape) != tuple(ds.images.shape[1:]):
        raise FrepoError(f"the set's images are {tuple(ds.images.shape[1:])} but {raw.name} has {raw.image_shape}")
    images, labels = _split(ds, raw, split)
    _warn_of_missing_classes(ds, raw, labels.numpy(), split)
    return images, labels


def _warn_of_missing_classes(ds: DistilledSet, raw: RawDataset, labels: np.ndarray, split: str) -> None:
    """A set without images of some classes (a task of --classes, a truncated file, another dataset's) trains
    networks that never predict them: its accuracy is capped at the other classes' share of the split."""
    held = torch.bincount(ds.class_ids(), minlength=raw.num_classes).numpy() > 0
    missing = [c for c in np.unique(labels).tolist() if not held[c]]
    if missing:
        cap = float(np.isin(labels, np.flatnonzero(held)).mean())
        shown = ", ".join(str(raw.classes[c]) for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
        warn(
            f"the set holds no images of {len(missing)} of the {raw.num_classes} classes of {raw.name} ({shown}): "
            f"its networks are not taught them, and the other classes are {100 * cap:.1f}% of the {split} split"
        )


def _split(ds: DistilledSet, raw: RawDataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "test":
        expected = ds.meta.get("test_fingerprint")
        if expected and expected != raw.test_fingerprint():
            warn(
                f"the test split of {raw.name} found here differs from the one the set was made "
                "with; numbers may not be comparable"
            )
        everything = np.arange(len(raw.x_test))
        return split_view(raw.x_test, everything, ds.preprocessing, STREAM_AUTO_BYTES), host_tensor(raw.y_test)
    _, val_idx = Holdout.of_set(ds.meta, len(raw.y_train)).split(raw.y_train)
    if len(val_idx) == 0:
        foreign = (ds.meta.get("source") or {}).get("format") not in (None, "frepo-export")
        whose = FOREIGN_WITHOUT_VAL if foreign else "the set"
        raise FrepoError(f"{whose} records no validation hold-out (val_size 0): use --split test")
    if ds.meta.get("val_size") is not None and len(val_idx) != int(ds.meta["val_size"]):
        raise FrepoError(
            f"the set records a hold-out of {ds.meta['val_size']} images, but {len(val_idx)} of {raw.name}'s training "
            "images are found for it here: not the hold-out it was distilled without (use the test split)"
        )
    images = split_view(raw.x_train, val_idx, ds.preprocessing, STREAM_AUTO_BYTES)
    return images, host_tensor(np.asarray(raw.y_train[val_idx]))


def evaluate_archs(
    file: DistilledSet | str | Path,
    config: EvalConfig | None = None,
    source: SourceConfig | None = None,
    *,
    progress: bool = False,
    field_metrics: bool = False,
    resume: bool = False,
    **overrides: Any,
) -> list[EvalResult]:
    """Evaluate a set (a DistilledSet, or any file `frepo.io.foreign` reads: frepo, official FRePo .npz,
    MTT/DD-Ranking .pt, DC/DSA res_*.pt, safetensors, an image folder, a `frepo export` folder) on each
    architecture of `config`. Overrides name leaf fields: `evaluate_archs(path, models=3, arch="conv,mlp")`.
    `field_metrics`: also DD-Ranking's IOR, HLR and LRS, in each result's extra["field_metrics"] (keys "ior",
    "hlr", "lrs"). `resume`: each network's accuracy is kept as it finishes, and a call interrupted before
    (Ctrl-C: `Interrupted`) trains only the networks still missing (`frepo.eval.finished`)."""
    config, source = configure(config, source, **overrides)
    return run(file, config, source, progress=progress, field_metrics=field_metrics, resume=resume)


def evaluate(
    file: DistilledSet | str | Path,
    config: EvalConfig | None = None,
    source: SourceConfig | None = None,
    *,
    progress: bool = False,
    resume: bool = False,
    deliver: Callable[[list[EvalResult]], None] | None = None,
    **overrides: Any,
) -> EvalResult:
    """Train fresh networks of one architecture (default: the protocol's) on a set and test them on its
    dataset's split (test, or val: the hold-out the set was distilled without), preprocessed the set's
    way: `frepo.evaluate(ds, models=5)`. Several architectures: `evaluate_archs`; `resume`, `deliver`: as `run`."""
    config, source = configure(config, source, **overrides)
    if len(config.archs()) != 1:
        raise FrepoError("evaluate() takes one architecture; use evaluate_archs() for several")
    return run(file, config, source, progress=progress, resume=resume, deliver=deliver)[0]


def run(
    file: DistilledSet | str | Path,
    config: EvalConfig,
    source: SourceConfig,
    *,
    progress: bool = False,
    field_metrics: bool = False,
    resume: bool = False,
    deliver: Callable[[list[EvalResult]], None] | None = None,
) -> list[EvalResult]:
    """`evaluate_archs` with configs already validated (`configure`): read, split, one result per architecture;
    with `field_metrics`, each result's extra["field_metrics"] holds DD-Ranking's IOR, HLR and LRS under the
    same recipe (`frepo.jobs.field_metrics`). With `resume` (the command line's), each network's accuracy is
    kept as it finishes (`frepo.eval.finished`), so that after an interruption the same call trains only the
    networks still missing; the record is removed once `deliver` (the command line's table and files) has
    taken the results, so a failed write (a full disk) loses no network either."""
    from ..io.foreign.load import run_set

    check_argument("file", file, (DistilledSet, str, os.PathLike), "a DistilledSet or the path of a set")
    # field_metrics="no" computed them ("no" is true), field_metrics=0 passed as off
    progress = check_type("progress", progress, bool)
    field_metrics = check_type("field_metrics", field_metrics, bool)
    resume = check_type("resume", resume, bool)
    file = file if isinstance(file, DistilledSet) else run_set(file)  # a run's: its set
    if config.split == "val" and not isinstance(file, DistilledSet):  # said before the data loads (a ZCA fit)
        from ..io.foreign import detect_format
        from ..io.foreign.load import check_holds_a_set

        fmt = detect_format(file)
        if fmt not in ("frepo", "frepo-export"):
            check_holds_a_set(Path(file), fmt, source.preprocess)  # no set at all: said first
            raise FrepoError(f"{FOREIGN_WITHOUT_VAL} records no validation hold-out (val_size 0): use --split test")
    ds, raw = open_set(file, source)
    depth = config.network_depth(ds.meta)  # a Conv too deep for the images: before the first architecture trains
    for arch in config.archs()[1:]:  # each fits the images before the first trains (mlp,resnet18 on 8×8 lost mlp)
        probe = torch.Generator().manual_seed(0)  # a throwaway network: its weights are never used
        build_model(arch, tuple(ds.images.shape[1:]), ds.num_classes, generator=probe, width=config.width, depth=depth)
    test_x, test_y = eval_split(ds, raw, config.split)
    if field_metrics:
        from .field_metrics import computable

        computable(ds, raw)  # before any network trains
    # A set in memory may have changed since its file was read (`ds.images.add_(noise)`, dataclasses.replace):
    # its file's checksum then names another set, and resumed that set's finished networks.
    trusted = not isinstance(file, DistilledSet) or still_as_read(file)
    checksum = ds.meta.get("checksum") if trusted else None
    identity = {
        **({} if isinstance(file, DistilledSet) else {"file": str(file)}),
        "dataset": ds.dataset,
        "num_images": int(len(ds.images)),
        "file_checksum": checksum,
    }
    if ds.meta.get("source"):
        from ..io.foreign import describe

        identity["source"] = describe(ds)
    records: list[FinishedNetworks | None] = [None] * len(config.archs())
    if resume:
        set_id, split_id = _identity(ds, raw, config.split, checksum)
        records = [_finished(set_id, split_id, config, arch, ds.mirror_invariant, depth) for arch in config.archs()]
    for record in records:
        if record is not None and record.networks:
            log.info(
                f"frepo: {count_of(len(record.networks), 'network')} of this evaluation finished before: read back "
                f"from {record.path}"
            )
    results = []
    try:
        for arch, record in zip(config.archs(), records):
            result = evaluate_set(ds, test_x, test_y, config, arch, progress=progress, finished=record)
            result.extra = {**identity, **result.extra}
            if field_metrics:
                from .field_metrics import field_metrics as metrics

                result.extra["field_metrics"] = metrics(
                    ds, raw, test_x, test_y, config, arch, result, progress=progress, resume=resume
                )
            results.append(result)
    except KeyboardInterrupt as exc:
        if not resume or isinstance(exc, Interrupted):  # Interrupted: already said (a second Ctrl-C in a write)
            raise
        kept = sum(len(r.networks) for r in records if r is not None)
        if not kept:  # it said "0 finished networks kept in ...: run the same command to continue"
            raise Interrupted("stopped before any network finished: the same command starts it again") from None
        raise Interrupted(
            f"stopped; {count_of(kept, 'finished network')} kept in {default_data_dir() / 'evaluations'}: "
            "run the same command to continue"
        ) from None
    warn_of_untrained(results, test_y, config.split, set_classes=ds.class_ids().unique().tolist())
    if deliver is not None:
        deliver(results)
    for record in records:
        if record is not None:
            record.clear()
    return results


def warn_of_untrained(
    results: list[EvalResult], labels: torch.Tensor, split: str, set_classes: list[int] | None = None
) -> None:
    """Warn of an architecture whose every network scored exactly one class's share of the split (a split of
    two classes or more): each predicts a single class, so the budget taught it nothing (at 20 steps every set,
    the random subset and the full split scored the same 10.56 %, and DD-Ranking's metrics from them were
    printed as measured). A set whose images are of one class (`set_classes`, its class ids) can teach no
    other: more training would not help, and the warning says so instead."""
    counts = torch.bincount(labels.long().flatten())
    if int((counts > 0).sum()) < 2:  # a split of one class: every network predicts it, rightly
        return
    shares = (counts[counts > 0].double() * 100 / len(labels)).tolist()
    for r in results:
        if not (r.accuracies and all(min(abs(a - s) for s in shares) < 1e-6 for a in r.accuracies)):
            continue
        if set_classes is not None and len(set_classes) == 1:
            warn(
                f"every {r.arch} network scored exactly one class's share of the {split} split: the set's images "
                f"are all of class {set_classes[0]}, so a network trained on it predicts that class; evaluate a set "
                "of every class (a continual task's set is evaluated with the earlier tasks' sets: frepo continual)"
            )
        else:
            warn(
                f"every {r.arch} network scored exactly one class's share of the {split} split "
                f"({', '.join(f'{a:.2f}' for a in sorted(set(r.accuracies)))} %): it predicts a single class, so this "
                "budget taught it nothing; its accuracy (and any metric from it) says nothing of the set: give more "
                "training (--steps, or --epochs for dsa)"
            )


def _identity(ds: DistilledSet, raw: RawDataset, split: str, checksum: str | None) -> tuple[str, str]:
    """(the set's content, the split's data) as digests, for the record of finished networks. A frepo file's
    `checksum` covers its content (None: not known to, such as a set changed in memory); a file from another
    tool records the checksum of the whole file, which holds several sets (--entry) or is read in a chosen
    preprocessing, so its set is hashed as read."""
    if checksum is not None and not ds.meta.get("source"):
        set_id = checksum
    else:
        set_id = set_digest(ds.images, ds.labels, ds.preprocessing.tensors())
    if split == "test":
        return set_id, f"test:{raw.test_fingerprint()}"
    # The hold-out: the training split's labels and the set's record decide it (`Holdout`).
    labels = hashlib.sha256(np.ascontiguousarray(raw.y_train).astype(np.int64).tobytes()).hexdigest()
    holdout = json.dumps(Holdout.of_set(ds.meta, len(raw.y_train)).to_meta(), sort_keys=True)
    return set_id, f"val:{raw.name}:{labels}:{holdout}"


def _finished(
    set_id: str, split_id: str, config: EvalConfig, arch: str, mirror_invariant: bool, depth: int
) -> FinishedNetworks:
    """The record of this evaluation's finished networks (`frepo.eval.finished`), under a key of the set's
    content, the settings, the architecture, the split's data and this machine's device and versions."""
    key = evaluation_key(set_id, config, arch, split_id, mirror_invariant, depth)
    return FinishedNetworks(key, default_data_dir())
