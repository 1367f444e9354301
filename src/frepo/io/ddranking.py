"""The image spaces DD-Ranking (NUS-HPC-AI-Lab/DD-Ranking, `ddranking` 0.2.0 on PyPI) evaluates a set in, so that
`frepo export --format pt --space ddranking[-zca]` hands it images its own test pipeline matches.

DD-Ranking builds its real test split itself (`ddranking.utils.get_dataset`) and never reads a set's
preprocessing: the set's images must already live in the space of that pipeline, or it trains on one space and
tests on another (a FRePo set in frepo's ZCA space scored below a random subset, issue 25). Its two spaces:
  ddranking      `use_zca: false` (its hard-label configs): ToTensor, then Normalize with its constants per
                 dataset: CIFAR-10's pair for CIFAR-10 and CIFAR-100, ImageNet's for Tiny ImageNet and the
                 ImageNet subsets
  ddranking-zca  `use_zca: true` (its soft-label configs): ToTensor, then kornia's ZCAWhitening(eps=0.1)
                 fitted on the full training split: frepo's `mtt-zca` recipe (`frepo.data.recipes`), the same
                 transform (unbiased covariance, eps added to the eigenvalues as is). CIFAR-10, CIFAR-100 and
                 Tiny ImageNet only: for the ImageNet subsets DD-Ranking whitens after its normalisation.
A set moves between spaces through pixels: x_dd = T_dd(T_set⁻¹(x_set)), both linear, nothing clipped.

The labels DD-Ranking's two metrics take: class ids for `LabelRobustScoreHard` (`hard_labels`), and for
`LabelRobustScoreSoft` (`soft_labels`, mode "S") FRePo's learned labels, which are regression targets fitted
under MSE (the frepo protocol trains on them with MSE): its `mse_gt` criterion with mse_weight 1 and
ce_weight 0 trains on them as FRePo does. `settings()` names all of it for the export's manifest.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from ..base.errors import FrepoError
from ..data.preprocess import Preprocessing
from ..data.recipes import DDRANKING_STATS

SPACES = ("ddranking", "ddranking-zca")

# ddranking.utils.get_dataset: frepo dataset -> (DD-Ranking's name, its Normalize constants, image size)
_NAMES = {"cifar10": ("CIFAR10", 32), "cifar100": ("CIFAR100", 32), "tiny_imagenet": ("TinyImageNet", 64)}
_NAMES.update({"imagenette": ("ImageNette", 128), "imagewoof": ("ImageWoof", 128)})
DATASETS: dict[str, tuple[str, tuple[list[float], list[float]], int]] = {
    key: (name, DDRANKING_STATS[key], size) for key, (name, size) in _NAMES.items()
}
ZCA_DATASETS = ("cifar10", "cifar100", "tiny_imagenet")
# DD-Ranking's class ids where they are not frepo's (`ddranking.utils.get_dataset`): ImageWoof's class c is the c-th
# of its list of ImageNet indices (`imagenet_subsets`), which is not sorted, where frepo numbers the sorted wnid
# folders (ImageNet's indices follow the sorted wnids: frepo's class i is the i-th smallest index); Tiny ImageNet's
# are torchvision's ImageFolder's (sorted wnids), frepo's the lines of wnids.txt (as the reference numbers them).
# ImageNette's list is sorted, CIFAR's ids are the same.
IMAGEWOOF_INDICES = (193, 182, 258, 162, 155, 167, 159, 273, 207, 229)
WNID = re.compile(r"n\d{8}")
ZCA_EPS = 0.1  # kornia.enhance.ZCAWhitening(eps=0.1) in get_dataset
SYN_LR = 0.01  # DD-Ranking's `default_lr` in its configs (a FRePo set learns none)
# The soft-label criterion under which FRePo's labels mean what they meant in distillation (see above).
SOFT_LABELS = {
    "soft_label_mode": "S",
    "soft_label_criterion": "mse_gt",
    "loss_fn_kwargs": {"mse_weight": 1.0, "ce_weight": 0.0},
}


def _entry(dataset: str, space: str) -> tuple[str, tuple[list[float], list[float]], int]:
    if space not in SPACES:
        raise FrepoError(f"unknown DD-Ranking space {space!r}; use one of {', '.join(SPACES)}")
    if dataset not in DATASETS:
        raise FrepoError(
            f"DD-Ranking evaluates {', '.join(v[0] for v in DATASETS.values())} (frepo: {', '.join(DATASETS)}); "
            f"this set's dataset is {dataset!r}: export it with --space frepo"
        )
    if space == "ddranking-zca" and dataset not in ZCA_DATASETS:
        raise FrepoError(f"--space ddranking-zca covers {', '.join(ZCA_DATASETS)}; use --space ddranking for {dataset}")
    return DATASETS[dataset]


def preprocessing(
    dataset: str,
    space: str,
    cache_dir: Path | None = None,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
) -> Preprocessing:
    """The transform from [0, 1] pixels of `dataset` into DD-Ranking's `space` (the ZCA fitted once on the
    dataset's full training split, found as `load_dataset(dataset, data_dir, download)` finds it, and cached,
    as frepo's other recipes are)."""
    _, (mean, std), _ = _entry(dataset, space)
    if space == "ddranking":
        return Preprocessing("standard", torch.tensor(mean), torch.tensor(std))
    from ..data.recipes import mtt_zca_preprocessing
    from ..data.registry import load_dataset

    raw = load_dataset(dataset, data_dir, download)
    return mtt_zca_preprocessing(raw, cache_dir, eps=ZCA_EPS)  # the claim ddranking-zca


def class_ids(dataset: str, classes: list[str], wnids: list[str] | None = None) -> list[int]:
    """DD-Ranking's class id of each of frepo's class ids of `dataset` (`classes`: the set's class names; `wnids`:
    Tiny ImageNet's wnids.txt, frepo's class order, for a set that names its classes by words): a set exported with
    frepo's ids trained DD-Ranking's networks on permuted labels (ImageWoof: chance accuracy)."""
    if dataset == "imagewoof":
        ranked = sorted(IMAGEWOOF_INDICES)
        return [IMAGEWOOF_INDICES.index(index) for index in ranked]
    if dataset == "tiny_imagenet":
        if all(WNID.fullmatch(name) for name in classes):
            wnids = classes
        if wnids is None or len(wnids) != len(classes):
            raise FrepoError(
                "DD-Ranking numbers Tiny ImageNet's classes by their sorted wnids, frepo by the lines of wnids.txt; "
                "this set names its classes by words, and no tiny-imagenet-200/wnids.txt was found in --data-dir, "
                "the folder the set was distilled from or $FREPO_DATA_DIR to put them in DD-Ranking's order: give "
                "--data-dir, or export with --space frepo"
            )
        ranked_names = sorted(wnids)
        return [ranked_names.index(name) for name in wnids]
    return list(range(len(classes)))


def settings(dataset: str, space: str, image_size: int) -> dict:
    """What the manifest says a DD-Ranking user sets to evaluate the export as it was meant."""
    name, _, size = _entry(dataset, space)
    if image_size != size:
        raise FrepoError(f"DD-Ranking evaluates {name} at {size}×{size}; this set's images are {image_size} wide")
    return {
        "dataset": name,
        "im_size": [size, size],
        "use_zca": space == "ddranking-zca",
        "hard_label": "LabelRobustScoreHard(...).compute_metrics(image_tensor=images.pt, hard_labels=hard_labels.pt, "
        "syn_lr=lr.pt)",
        "soft_label": {
            **SOFT_LABELS,
            "call": "LabelRobustScoreSoft(...).compute_metrics(image_tensor=images.pt, soft_labels=labels.pt, "
            "syn_lr=lr.pt)",
        },
    }


def re_expressed(images: torch.Tensor, source: Preprocessing, target: Preprocessing) -> torch.Tensor:
    """N×C×H×W images of space `source` in space `target`, through unclipped pixels, in float64: FRePo's ZCA
    is far from an isometry (W's condition number is ~10² on CIFAR-10), and a float32 way back to pixels
    costs 5e-3 of the target's spread where float64 costs nothing measurable (tests/test_ddranking_interop.py)."""
    if source.kind == "zca" and source.basis is None:  # W⁻¹ in float64 (a file stores W alone)
        assert source.whiten is not None  # a dense ZCA (basis None) holds W
        whiten = source.whiten.double()
        source = dataclasses.replace(source, whiten=whiten, unwhiten=torch.linalg.inv(whiten))
    return target.from_unit(source.to_unit(images.double())).float()
