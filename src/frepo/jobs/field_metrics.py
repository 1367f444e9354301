"""DD-Ranking's metrics of a set, under one of frepo's evaluation protocols (`frepo evaluate --field-metrics`).

DD-Ranking (Li et al., 2025, "DD-Ranking: Rethinking the Evaluation of Dataset Distillation"; `ddranking`
on PyPI) ranks sets by what their images add over real data when the training recipe is held fixed. With
every accuracy a fraction in [0, 1], trained with the same recipe and on class ids ("hard labels"):

    IOR (improvement over random) = acc(set) − acc(random subset of the same images per class)
    HLR (hard-label recovery)     = acc(full training split) − acc(set)
    LRS (label-robust score)      = 100 · (e^α − e^−1) / (e − e^−1),   α = λ·IOR − (1 − λ)·HLR,   λ = 0.5

IOR > 0: the set beats real images; HLR → 0: it matches the full data; LRS ∈ [0, 100] rises with both.
These are the formulas of DD-Ranking's `LabelRobustScoreHard.compute_metrics` (ddranking 0.2.0); its
soft-label variant needs a teacher network, which frepo does not train. IOR and HLR are reported in points
(percent), as accuracies are; LRS takes them as fractions, the range its formula is built for, and is scaled
to 0..100. ddranking 0.2.0 passes its accuracies in percent to the same formula, so the LRS it prints leaves
[0, 1] by orders of magnitude: recompute it from its IOR and HLR to compare.

The recipe is the set's own evaluation: `frepo evaluate`'s protocol, architecture, models, seed and options.
- The set is trained on its class ids (`class_ids_of`: the argmax of learned labels); its usual accuracy
  (learned labels) is reported beside.
- The random subset is `frepo subset --method random --seed SEED` (SEED: the evaluation seed) drawn from the
  distillation part of the training split (the set's validation hold-out left out), in the set's own
  preprocessing.
- The full training split is that same distillation part, in the set's preprocessing.
The references are computed once and cached as JSON under `$FREPO_CACHE/field_metrics/` (a damaged entry is
recomputed): the random subset per dataset, preprocessing, recipe, machine and IPC; the full split per
dataset, preprocessing, recipe and machine (`_recipe`; with `--steps` given, its training is the same for
every IPC; without, the protocol's step table is read at the full split's size, as for any set).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..base.atomic import atomic_write_text
from ..base.device import host_tensor, machine_key, resolve_device
from ..base.errors import FrepoError
from ..config import STREAM_AUTO_BYTES
from ..data import RawDataset
from ..data.registry import default_data_dir
from ..data.splits import Holdout, holdout_split
from ..eval import EvalConfig, EvalResult, evaluate_set
from ..eval.finished import FinishedNetworks, set_digest
from ..eval.protocols.dsa import epochs_of
from ..io.artifact import DistilledSet, class_ids_of
from ..method.synthetic import pick_real

log = logging.getLogger(__name__)

LRS_LAMBDA = 0.5
KEYS = ("ior", "hlr", "lrs", "set_hard", "random", "full", "set_own_labels", "lrs_lambda", "recipe")


def label_robust_score(ior: float, hlr: float, lam: float = LRS_LAMBDA) -> float:
    """LRS (0..100) from IOR and HLR as fractions (−1..1)."""
    alpha = lam * ior - (1 - lam) * hlr
    return 100.0 * (math.exp(alpha) - math.exp(-1)) / (math.exp(1) - math.exp(-1))


def _hard(ds: DistilledSet) -> DistilledSet:
    """The set with its class ids as labels."""
    return ds if ds.labels.ndim == 1 else dataclasses.replace(ds, labels=class_ids_of(ds.labels))


def _training_part(ds: DistilledSet, raw: RawDataset) -> np.ndarray:
    """Indices of the training split without the set's validation hold-out: the whole split's, even for a set
    distilled from a chunk or some classes (the references are of the full training split)."""
    train_idx, _ = holdout_split(raw.y_train, _holdout_size(ds, raw))
    return train_idx


def _holdout_size(ds: DistilledSet, raw: RawDataset) -> int:
    """The size of the hold-out of the whole training split (a narrowed run's count is its part of it)."""
    return Holdout.of_set(ds.meta, len(raw.y_train)).size


def random_subset(ds: DistilledSet, raw: RawDataset, ipc: int, seed: int) -> DistilledSet:
    """`frepo subset --method random --seed seed` of the set's dataset, in the set's preprocessing."""
    train_idx = _training_part(ds, raw)
    labels = host_tensor(np.asarray(raw.y_train[train_idx]))
    picked = pick_real(labels, range(raw.num_classes), ipc, seed).numpy()
    rows = train_idx[picked]
    images = ds.preprocessing(raw.x_train[rows])
    return DistilledSet(images, labels[picked].clone(), ds.preprocessing, {**ds.meta, "kind": "subset-random"})


def full_split(ds: DistilledSet, raw: RawDataset) -> DistilledSet:
    """The whole distillation part of the training split, in the set's preprocessing, with class ids."""
    train_idx = _training_part(ds, raw)
    _refuse_too_large(raw, len(train_idx))
    images = ds.preprocessing(raw.x_train[train_idx])
    labels = host_tensor(np.asarray(raw.y_train[train_idx])).clone()
    return DistilledSet(images, labels, ds.preprocessing, {**ds.meta, "kind": "full-training-split"})


def _refuse_too_large(raw: RawDataset, count: int) -> None:
    """Refuse a full-split reference of `count` training images that would not fit in memory as float32."""
    size = count * int(np.prod(raw.x_train.shape[1:])) * 4
    if size > STREAM_AUTO_BYTES:
        raise FrepoError(
            f"field metrics: the full-data reference of {raw.name} is {size / 1e9:.1f} GB of preprocessed images, "
            f"more than frepo trains on in memory ({STREAM_AUTO_BYTES / 1e9:.1f} GB); HLR and LRS cannot be "
            "computed here"
        )


def _recipe(config: EvalConfig, arch: str) -> dict:
    """What a reference's accuracy depends on besides the data: the recipe, how its networks train (one by one
    or stacked round differently), and the machine (a cache may be shared between machines; a reference from
    another device or version made the IOR of a random subset other than 0)."""
    return {
        "protocol": config.protocol,
        "arch": arch,
        "models": config.models,
        "seed": config.seed,
        "width": config.width,
        "depth": config.depth,  # resolved by `field_metrics` (the cache of an IOR at depth 3 was read at depth 4)
        "split": config.split,
        "together": config.together,
        "options": dataclasses.asdict(config.options()),
        "dsa_epochs": epochs_of(config.dsa),  # what the options resolve to (a default may change within a version)
        **machine_key(resolve_device(config.device)),
    }


def _data_identity(ds: DistilledSet, raw: RawDataset) -> str:
    """What both references depend on besides the recipe: the dataset, its test split, the set's hold-out and
    its preprocessing (the tensors as held: a 64×64 file's matrix is not re-packed just to be hashed)."""
    pre = ds.preprocessing
    digest = hashlib.sha256(f"{raw.name}|{raw.test_fingerprint()}|{_holdout_size(ds, raw)}|".encode())
    digest.update(json.dumps(pre.params(), sort_keys=True).encode())
    for tensor in (pre.mean, pre.std, pre.zca_mean, pre.whiten, pre.basis, pre.scale):
        if tensor is not None:
            digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cache_key(identity: str, recipe: dict, what: str, ipc: int) -> str:
    digest = hashlib.sha256(json.dumps({"what": what, "ipc": ipc, **recipe}, sort_keys=True).encode())
    digest.update(identity.encode())
    return f"{what}-{digest.hexdigest()[:20]}"


def _summary(result: EvalResult) -> dict:
    return {"mean": result.mean, "std": result.std, "accuracies": result.accuracies, "steps": result.steps}


def _cached_accuracy(path: Path, compute: Callable[[], EvalResult], what: str) -> dict:
    """`_summary` of a reference's evaluation (`what`): read from `path` (said), or computed and written there."""
    if path.is_file():
        try:
            entry = json.loads(path.read_text())
            if isinstance(entry, dict) and isinstance(entry.get("mean"), float):
                log.info(f"frepo: field metrics: the {what}'s accuracy read from {path}")
                return entry
        except (OSError, ValueError):
            pass
    entry = _summary(compute())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entry, indent=1))
    except (OSError, FrepoError) as exc:  # atomic_write_text's WriteError too: the result is not lost with it
        log.warning(f"frepo: cannot keep the {what}'s accuracy in {path} ({exc}): it is computed again next time")
    return entry


def computable(ds: DistilledSet, raw: RawDataset) -> int:
    """The set's images per class, once it is clear that its field metrics can be computed: the same number of
    images in every class, and a full-split reference that fits in memory. Checked before any network trains:
    both were found only after the set's own networks had trained (the size after the random subset's too)."""
    counts = torch.bincount(class_ids_of(ds.labels), minlength=raw.num_classes)
    if not bool((counts == counts[0]).all()) or int(counts[0]) < 1:
        raise FrepoError(f"field metrics need the same number of images in every class; the set has {counts.tolist()}")
    n = len(raw.y_train)
    _refuse_too_large(raw, n - min(max(_holdout_size(ds, raw), 0), n))  # the size of `_training_part`, not drawn
    return int(counts[0])


def field_metrics(
    ds: DistilledSet,
    raw: RawDataset,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: EvalConfig,
    arch: str,
    own: EvalResult,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    resume: bool = False,
) -> dict:
    """IOR, HLR, LRS (module docstring) of `ds` under `config` on `arch`, given `own`: its evaluation with its
    own labels under the same config. Returns the dict of `KEYS` (accuracies in percent). With `resume`, each
    network of the three evaluations is kept as it finishes (`FinishedNetworks`), so an interrupted reference
    trains only its networks still missing when the same command runs again."""
    ipc = computable(ds, raw)
    # the references are the set's dataset's subsets: their networks take the set's depth, not their own default
    config = config.replace(depth=config.network_depth(ds.meta))
    recipe, identity = _recipe(config, arch), _data_identity(ds, raw)
    folder = Path(cache_dir) if cache_dir is not None else default_data_dir() / "field_metrics"

    def record(key: str) -> FinishedNetworks:
        return FinishedNetworks({"field_metrics": key}, default_data_dir())

    def evaluated(data: DistilledSet, label: str, key: str) -> EvalResult:  # the bars say which of the four
        kept = record(key) if resume else None
        return evaluate_set(data, test_x, test_y, config, arch, progress=progress, label=label, finished=kept)

    hard = _hard(ds)
    # the set as read (another tool's file checksum covers its images file alone)
    digest = None if hard is ds else set_digest(hard.images, hard.labels, hard.preprocessing.tensors())[:20]
    set_key = None if digest is None else f"set-{digest}-{_cache_key(identity, recipe, 'set', ipc)}"
    set_hard = _summary(own if set_key is None else evaluated(hard, "the set on class ids", set_key))
    random_key = _cache_key(identity, recipe, "random", ipc)
    rand = _cached_accuracy(
        folder / f"{raw.name}-{random_key}.json",
        lambda: evaluated(random_subset(ds, raw, ipc, config.seed), f"random subset, IPC {ipc}", random_key),
        "random subset",
    )
    full_key = _cache_key(identity, recipe, "full", 0)
    full = _cached_accuracy(
        folder / f"{raw.name}-{full_key}.json",  # one for every IPC
        lambda: evaluated(full_split(ds, raw), "full training split", full_key),
        "full training split",
    )
    # All done: nothing of them left to resume (the set's is cached nowhere else: kept until now; a reference's
    # read back from the cache, too).
    for key in [k for k in (set_key, random_key, full_key) if k is not None] if resume else []:
        record(key).clear()
    ior = set_hard["mean"] - rand["mean"]
    hlr = full["mean"] - set_hard["mean"]
    return {
        "ior": ior,
        "hlr": hlr,
        "lrs": label_robust_score(ior / 100, hlr / 100),
        "set_hard": set_hard,
        "random": {**rand, "ipc": ipc, "seed": config.seed},
        "full": full,
        "set_own_labels": own.mean,
        "lrs_lambda": LRS_LAMBDA,
        "recipe": recipe,
    }


def field_table(results: list[EvalResult]) -> str:
    """The field metrics of each architecture's result, a line each, in points (LRS: 0..100)."""
    lines = []
    for r in results:
        m = r.extra["field_metrics"]
        lines.append(
            f"{r.arch} ({r.protocol}, class ids): set {m['set_hard']['mean']:.2f}, random {m['random']['mean']:.2f} "
            f"(IPC {m['random']['ipc']}), full {m['full']['mean']:.2f} -> IOR {m['ior']:+.2f}, HLR {m['hlr']:.2f}, "
            f"LRS {m['lrs']:.2f}"
        )
    return "\n".join(lines)
