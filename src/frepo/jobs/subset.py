"""Same-format files of real images (coreset baselines), evaluated by the very same command.

Methods (`METHODS`), all per class, all from the distillation part of the training split (never the
validation hold-out or the test split), all preprocessed as a distillation of that dataset would be:
  random   `ipc` images per class with the distillation's own initialisation stream, so
           `frepo subset --seed S` is exactly the starting point of `frepo distill --seed S`
  herding  greedy herding (Welling 2009, as used by iCaRL and the DC baselines): repeatedly add the
           image whose addition brings the mean feature of the chosen images closest to the class's
           mean feature
  kcenter  k-center greedy (Sener & Savarese 2018): start from the image nearest the class's mean
           feature, then repeatedly add the image farthest from its nearest chosen image
Herding and k-center work on features (the flattened last conv block) of a seeded FRePo Conv (no norm)
trained briefly with Adam and cross-entropy on the same distillation images (`feature_steps` steps
at batch 256; 0 = the freshly initialised network). Ties go to the lower index. Labels are integer
class ids, as for `random`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F

from ..base.device import resolve_device
from ..base.errors import FrepoError, check_argument
from ..base.fields import check_type, to_dict
from ..base.log import messages_shown
from ..base.rng import generator
from ..config import DataConfig
from ..data import StreamingImages, prepare, whole_data_dir
from ..eval.training import NetworkUpdate, Schedule, train
from ..io.artifact import DistilledSet
from ..method.synthetic import check_class_sizes, pick_real
from ..models import build_model, embed_batched

log = logging.getLogger(__name__)

METHODS = ("random", "herding", "kcenter")
FEATURE_STEPS = 300
FEATURE_BATCH = 256
FEATURE_LR = 1e-3


def _rows(images: torch.Tensor | StreamingImages, positions: torch.Tensor) -> torch.Tensor | StreamingImages:
    """The images at `positions`: copied from a tensor, or a still-unread view of a stream."""
    return images.subset(positions) if isinstance(images, StreamingImages) else images[positions]


def _first_min(values: torch.Tensor) -> int:
    """Index of the smallest value; the lowest such index on ties."""
    return int(torch.nonzero(values == values.min())[0])


def herding_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (k,) chosen by herding from features (n×d): step j picks the unchosen i minimising
    ‖μ - (Σ_chosen φ + φ_i) / j‖, μ the mean of all n features."""
    features = features.double()
    mu = features.mean(0)
    total = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    chosen = []
    for j in range(1, k + 1):
        gap = (mu - (total + features) / j).norm(dim=1)
        gap[~available] = float("inf")
        i = _first_min(gap)
        chosen.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(chosen, dtype=torch.int64)


def kcenter_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (k,) chosen by k-center greedy from features (n×d): first the point nearest the mean,
    then repeatedly the point whose distance to its nearest chosen point is largest."""
    features = features.double()
    first = _first_min((features - features.mean(0)).norm(dim=1))
    chosen = [first]
    nearest = (features - features[first]).norm(dim=1)
    for _ in range(1, k):
        gap = nearest.clone()
        gap[chosen] = -1.0
        i = _first_min(-gap)
        chosen.append(i)
        nearest = torch.minimum(nearest, (features - features[i]).norm(dim=1))
    return torch.tensor(chosen, dtype=torch.int64)


SELECTORS = {"herding": herding_select, "kcenter": kcenter_select}


def feature_network(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    steps: int,
    gen: torch.Generator,
    device: torch.device,
    width: int = 128,
    batch_size: int = FEATURE_BATCH,
    progress: bool = False,
) -> torch.nn.Module:
    """A seeded Conv (no norm), trained `steps` Adam steps with cross-entropy on random batches of
    (images N×C×H×W, labels (N,)). steps = 0 returns the freshly initialised network."""
    model = build_model("conv", tuple(images.shape[1:]), num_classes, generator=gen, width=width).to(device)
    model.train()
    update = NetworkUpdate(model, torch.optim.Adam(model.parameters(), lr=FEATURE_LR), F.cross_entropy, (), gen)
    train(update, images, labels, Schedule(steps, batch_size, "draws"), gen=gen, device=device, progress=progress)
    return model


def make_subset(
    data: DataConfig | str | os.PathLike | None = None,
    ipc: int | None = None,
    method: str = "random",
    seed: int = 0,
    *,
    feature_steps: int | None = None,
    feature_width: int | None = None,
    device: str = "auto",
    **data_options: Any,
) -> DistilledSet:
    """`ipc` real images per class chosen by `method`, as a DistilledSet with integer labels: `data` is a
    dataset (a name, .npz file or image folder: `make_subset("mnist", 10)`) or a `DataConfig`; its options
    (dataset, data_dir, download, preprocess, val_size, classes...) may also be keywords, as `distill` takes
    them (`make_subset(dataset="mnist", ipc=10, preprocess="zca")`, as `frepo subset --dataset mnist ...`).
    `feature_steps` and `feature_width` shape herding's and kcenter's feature network (default FEATURE_STEPS
    steps, width 128); random reads neither, and refuses them rather than ignore them."""
    known = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(data_options) - known)
    if unknown:  # a misspelt feature_steps too: the nearest keyword, then every one it takes
        every = sorted(known | {"ipc", "method", "seed", "feature_steps", "feature_width", "device"})
        near = difflib.get_close_matches(unknown[0], every, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise FrepoError(f"make_subset takes no option {', '.join(unknown)}{hint}; it takes: {', '.join(every)}")
    if data is None:
        if "dataset" not in data_options:
            raise FrepoError("make_subset needs a dataset: make_subset('mnist', ipc=10) or make_subset(dataset=...)")
        data = DataConfig(**data_options)
    elif isinstance(data, str | os.PathLike):
        if "dataset" in data_options:
            raise FrepoError("make_subset got its dataset twice: as `data` and as dataset=")
        data = DataConfig(dataset=os.fspath(data), **data_options)
    elif isinstance(data, DataConfig) and data_options:
        data = dataclasses.replace(data, **data_options)
    check_argument("data", data, DataConfig, "a dataset or a DataConfig: make_subset('mnist', ipc=10)")
    if ipc is None:
        raise FrepoError("make_subset needs ipc, the images per class: make_subset('mnist', ipc=10)")
    ipc, seed = check_type("ipc", ipc, int), check_type("seed", seed, int)
    method, device = check_type("method", method, str), check_type("device", device, str)
    if method not in METHODS:
        raise FrepoError(f"unknown subset method {method!r}; known: {', '.join(METHODS)}")
    features = {"feature_steps": feature_steps, "feature_width": feature_width}
    given = [name for name, value in features.items() if value is not None]
    if given and method == "random":  # as evaluate refuses what its protocol does not read
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise FrepoError(f"{' and '.join(given)} ({flags}): read by the herding and kcenter methods only, not random")
    feature_steps = FEATURE_STEPS if feature_steps is None else check_type("feature_steps", feature_steps, int)
    feature_width = 128 if feature_width is None else check_type("feature_width", feature_width, int)
    if ipc < 1:
        raise FrepoError(f"ipc must be >= 1, got {ipc}")
    if feature_steps < 0 or feature_width < 1:
        raise FrepoError("feature_steps must be >= 0 and feature_width >= 1")
    data.validate()
    dev = resolve_device(device)  # a device this machine lacks is refused by every method, before the data
    data = dataclasses.replace(data, data_dir=whole_data_dir(data.data_dir))  # recorded whole, as a run's
    prepared = prepare(data)
    raw = prepared.raw
    # An ImageNet-sized split stays uint8 (memory-mapped) and is preprocessed a batch at a time; the
    # CIFARs are preprocessed whole, as before (the same rule and flag as distillation's).
    x_train, y_train = prepared.train_stream() if prepared.streams(data.stream) else prepared.train()
    classes = data.class_ids(raw.num_classes)  # every class, or a continual-learning task's
    config = {"data": to_dict(data), "ipc": ipc, "method": method, "seed": seed}
    held_out = len(prepared.val_idx)
    if method == "random":
        check_class_sizes(y_train, classes, ipc, raw.classes, held_out)  # pick_real's own check cannot name them
        idx = pick_real(y_train, classes, ipc, seed)  # init_from_real's very draws
        images, labels = x_train[idx].clone(), y_train[idx].clone()
    else:
        check_class_sizes(y_train, classes, ipc, raw.classes, held_out)
        if feature_steps:  # minutes on a large split: said, with a bar where messages are shown (the command line)
            log.info(f"frepo: {method}: training the feature network ({feature_steps} Adam steps, --feature-steps)")
        net = feature_network(
            x_train,
            y_train,
            raw.num_classes,
            steps=feature_steps,
            gen=generator(seed, "subset/features"),
            device=dev,
            width=feature_width,
            progress=messages_shown(),
        )
        chosen = []
        for c in classes:  # one class's features at a time: memory O(class), not O(split)
            members = torch.nonzero(y_train == c).flatten()
            features = embed_batched(net, _rows(x_train, members), dev).cpu()
            if method == "herding":  # on the unit sphere, as iCaRL's herding (Rebuffi et al. 2017, §2.1) runs
                features = F.normalize(features.double(), dim=1)
            chosen.append(members[SELECTORS[method](features, ipc)])
        idx = torch.cat(chosen)
        images, labels = x_train[idx].clone(), y_train[idx].clone()
        config.update(feature_steps=feature_steps, feature_width=feature_width, feature_batch=FEATURE_BATCH)
        if method == "herding":
            config["features"] = "l2-normalised"  # (unnormalised before 2026-12-07)
    meta = {
        "kind": f"subset-{method}",
        "dataset": raw.name,
        "classes": raw.classes,
        "ipc": ipc,
        "seed": seed,
        "step": 0,
        "config": config,
        "mirror_invariant": raw.mirror_invariant,
        "val_size": int(len(prepared.val_idx)),
        "holdout": prepared.holdout.to_meta(),
        "test_fingerprint": raw.test_fingerprint(),
    }
    return DistilledSet(images, labels, prepared.preprocessing, meta)
