"""Each tool's preprocessing of a real dataset, so that a set saved by another tool can be evaluated in the
space its images live in (the test split must go through the very same transform, or the accuracy
collapses to chance), and a check that images look like the space they are claimed to be in.

Claims (`CLAIMS`, the `--preprocess` of `frepo evaluate`):
  reference  official FRePo: standardised per channel with the reference's fixed constants, then, for
             colour data, ZCA whitening with regulariser 0.1·trace(cov)/d fitted on the FULL training
             split (the official code holds nothing out)
  mtt-zca    MTT with --zca (its CIFAR setting): kornia's ZCAWhitening(eps=0.1) on [0, 1] pixels, fitted
             on the full training split: unbiased covariance, eps added to the eigenvalues as is (not
             scaled by the trace), no per-channel standardisation before it
  dc         DC/DSA/DM (and MTT without --zca): per-channel normalisation with DC's fixed constants
  frepo      frepo's own preprocessing of the dataset (fitted on the distillation part of train)
  pixels     raw pixels in [0, 1] (an image folder: 0..255), which frepo preprocesses its own way
  ddranking  DD-Ranking with use_zca false (and `frepo export --format pt`'s default space): per-channel
             normalisation with DD-Ranking's constants (CIFAR-10's for CIFAR-100 too, ImageNet's for the others)
  ddranking-zca  DD-Ranking with use_zca true: as mtt-zca (kornia's ZCAWhitening, eps 0.1)
All fits use frepo's one covariance routine and one disk cache (`frepo.data.preprocess`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..base.errors import FrepoError
from ..base.log import warn
from .preprocess import (
    Images,
    Preprocessing,
    cached,
    cached_preprocessing,
    channel_stats,
    mean_covariance,
    resolve_kind,
    rows_of,
    whitening_matrices,
)
from .registry import RawDataset, default_data_dir
from .splits import default_val_size, holdout_split

CLAIMS = {
    "reference": "official FRePo: reference constants, plus ZCA (reg 0.1) on the full training split for colour data",
    "mtt-zca": "MTT --zca: kornia ZCAWhitening(eps=0.1) of [0, 1] pixels, fitted on the full training split",
    "dc": "DC/DSA/DM (and MTT without --zca): per-channel normalisation with DC's constants",
    "frepo": "frepo's own preprocessing of the dataset",
    "pixels": "raw pixels in [0, 1] (0..255 for image files)",
    "ddranking": "DD-Ranking, use_zca false (frepo export --format pt's default): normalisation with its constants",
    "ddranking-zca": "DD-Ranking, use_zca true: kornia ZCAWhitening(eps=0.1) of [0, 1] pixels, full training split",
}

# Per-channel (mean, std) of pixels in [0, 1], as hard-coded by each tool.
REFERENCE_STATS = {  # official FRePo, lib/dataset/dataloader.py `data_stats`
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2861], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
}
DC_STATS = {  # DC/DSA utils.py `get_dataset` (MTT uses the CIFAR-10 pair for CIFAR-100 too)
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2861], [0.3530]),
    "svhn": ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
}
# DD-Ranking's ddranking.utils.get_dataset: the Normalize of its use_zca-false pipeline
_CIFAR10_DC, _IMAGENET = DC_STATS["cifar10"], ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
DDRANKING_STATS = {
    "cifar10": _CIFAR10_DC,
    "cifar100": _CIFAR10_DC,  # CIFAR-10's constants for CIFAR-100 too
    "tiny_imagenet": _IMAGENET,
    "imagenette": _IMAGENET,
    "imagewoof": _IMAGENET,
}
ZCA_REG = 0.1  # official FRePo
MTT_ZCA_EPS = 0.1  # MTT's kornia ZCAWhitening(eps=0.1)


def reference_preprocessing(raw: RawDataset, cache_dir: Path | None = None) -> Preprocessing:
    """The official FRePo's transform: standardise with its constants (fitted on the full training split
    for datasets it has none for), then for colour data ZCA (reg 0.1·trace/d) fitted on the full split."""

    def stats() -> tuple[torch.Tensor, torch.Tensor]:
        if raw.name in REFERENCE_STATS:
            mean, std = REFERENCE_STATS[raw.name]
            return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        return channel_stats(raw.x_train)  # a pass over the split: made only to fit

    if raw.image_shape[0] == 1:
        return Preprocessing("standard", *stats())

    def build() -> Preprocessing:
        mean, std = stats()
        zca_mean, cov = mean_covariance(raw.x_train, Preprocessing("standard", mean, std))
        whiten, unwhiten = whitening_matrices(cov, len(raw.x_train), ZCA_REG)
        return Preprocessing("zca", mean, std, ZCA_REG, zca_mean.float(), whiten, unwhiten)

    if raw.name in REFERENCE_STATS:  # the constants name the fit (the tag of the entries cached so far)
        constants = np.asarray(REFERENCE_STATS[raw.name], dtype=np.float32).tobytes()
        tag = "reference-zca-" + hashlib.sha256(constants).hexdigest()[:8]
    else:  # statistics of the split, which the fingerprint already names: not read on a cache hit
        tag = "reference-zca-fitted"
    return cached(tag, whole_split(raw), ZCA_REG, cache_dir or default_data_dir(), build)


def mtt_zca_preprocessing(raw: RawDataset, cache_dir: Path | None = None, eps: float = MTT_ZCA_EPS) -> Preprocessing:
    """MTT's transform: kornia ZCAWhitening(eps) of [0, 1] pixels fitted on the full training split.

    kornia: cov = X_c^T X_c / (N - 1); U, S = svd(cov); W = U diag((S + eps)^-1/2) U^T and the inverse
    U diag((S + eps)^1/2) U^T; out = (x - mean) W. For a symmetric PSD matrix the SVD is the
    eigen-decomposition, used here in float64."""
    c = raw.image_shape[0]
    unit = Preprocessing("standard", torch.zeros(c), torch.ones(c))

    def build() -> Preprocessing:
        zca_mean, cov = mean_covariance(raw.x_train, unit, ddof=1)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0.0) + eps
        whiten = (evecs * evals.rsqrt()) @ evecs.T
        unwhiten = (evecs * evals.sqrt()) @ evecs.T
        return Preprocessing("zca", unit.mean, unit.std, eps, zca_mean.float(), whiten.float(), unwhiten.float())

    return cached("mtt-zca", whole_split(raw), eps, cache_dir or default_data_dir(), build)


def whole_split(raw: RawDataset) -> Images:
    """The training split as a cache key reads it: a cached dataset's rows by its source (a fingerprint of
    ImageNet's 15.7 GB hashed every image, on every call, hit or miss); an in-memory split itself."""
    return rows_of(raw.x_train, np.arange(len(raw.x_train)), raw.source_id) if raw.source_id else raw.x_train


def dc_preprocessing(raw: RawDataset) -> Preprocessing:
    if raw.name not in DC_STATS:
        raise FrepoError(
            f"DC/DSA have no normalisation constants for dataset {raw.name!r} (known: {', '.join(DC_STATS)}); "
            "pass --preprocess with the preprocessing the file was saved in"
        )
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in DC_STATS[raw.name])
    return Preprocessing("standard", mean, std)


def ddranking_preprocessing(raw: RawDataset) -> Preprocessing:
    """DD-Ranking's space without ZCA; its ZCA space is mtt_zca_preprocessing's."""
    if raw.name not in DDRANKING_STATS:
        raise FrepoError(f"DD-Ranking evaluates {', '.join(DDRANKING_STATS)}, not {raw.name!r}")
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in DDRANKING_STATS[raw.name])
    return Preprocessing("standard", mean, std)


def frepo_preprocessing(raw: RawDataset, cache_dir: Path | None = None) -> Preprocessing:
    """What `frepo distill`/`frepo subset` use by default: fitted on the distillation part of train."""
    train_idx, _ = holdout_split(raw.y_train, default_val_size(len(raw.y_train)))
    kind = resolve_kind("auto", raw.image_shape)
    # As `prepare` fits it (ImageNet's split was copied whole here, and its ZCA fitted again under another key)
    return cached_preprocessing(rows_of(raw.x_train, train_idx, raw.source_id), kind, ZCA_REG, cache_dir)


def claimed_preprocessing(claim: str, raw: RawDataset, cache_dir: Path | None = None) -> Preprocessing:
    """The preprocessing of `raw` that claim `claim` (a key of CLAIMS) names."""
    if claim == "reference":
        return reference_preprocessing(raw, cache_dir)
    if claim in ("mtt-zca", "ddranking-zca"):
        return mtt_zca_preprocessing(raw, cache_dir)
    if claim == "ddranking":
        return ddranking_preprocessing(raw)
    if claim == "dc":
        return dc_preprocessing(raw)
    if claim in ("frepo", "pixels"):
        return frepo_preprocessing(raw, cache_dir)
    raise FrepoError(f"unknown preprocessing {claim!r}; use one of {', '.join(CLAIMS)}")


def reference_sample(raw: RawDataset, count: int = 1000) -> np.ndarray:
    """Up to `count` training images, evenly spaced (deterministic, no RNG)."""
    idx = np.unique(np.linspace(0, len(raw.x_train) - 1, min(count, len(raw.x_train))).astype(np.int64))
    return raw.x_train[idx]


def preprocessing_mismatch(images: torch.Tensor, expected: torch.Tensor | None) -> str | None:
    """Why `images` (N×C×H×W) do not look like `expected` (real images put through the claimed
    preprocessing), or None. `expected` None means the claim is raw pixels in [0, 1].

    Distilled images drift from real ones, so only gross differences count: values confined to
    [0, 1] where the claimed space is largely negative (raw pixels), a spread 5× off, a mean more than
    1.5 real standard deviations off."""
    x = images.detach().float()
    lo, hi = float(x.min()), float(x.max())
    if expected is None:
        if lo < -0.1 or hi > 1.1:
            return f"values range over [{lo:.3g}, {hi:.3g}], not [0, 1] as raw pixels do"
        return None
    ref = expected.float()
    negative = float((ref < -0.05).float().mean())
    if lo >= 0.0 and hi <= 1.0 and negative > 0.05:
        return (
            f"every value lies in [0, 1], like raw pixels, while real images in that space are "
            f"{100 * negative:.0f}% negative"
        )
    std, ref_std = float(x.std()), max(float(ref.std()), 1e-12)
    if std > 5 * ref_std or std < ref_std / 5:
        return f"their spread (std {std:.3g}) is {std / ref_std:.3g}× that of real images in that space ({ref_std:.3g})"
    mean, ref_mean = float(x.mean()), float(ref.mean())
    if abs(mean - ref_mean) > 1.5 * ref_std:
        return f"their mean ({mean:.3g}) is far from that of real images in that space ({ref_mean:.3g} ± {ref_std:.3g})"
    return None


def check_preprocessing(
    images: torch.Tensor, claim: str, pre: Preprocessing, raw: RawDataset, where: str, advice: str | None = None
) -> None:
    """Warn (`frepo.base.log.warn`) when the images do not look like the claimed preprocessing; `advice` replaces the
    hint to name it with --preprocess (a command without that option says what to do instead)."""
    expected = None if claim == "pixels" else pre(reference_sample(raw))
    reason = preprocessing_mismatch(images, expected)
    if reason is None:
        return
    others = ", ".join(k for k in CLAIMS if k != claim)
    advice = advice or f"The accuracy will be wrong unless --preprocess names what the file holds ({others})"
    warn(f"{where}: the images do not look like '{claim}' preprocessing ({CLAIMS[claim]}): {reason}. {advice}")
