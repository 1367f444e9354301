"""The validation hold-out: a fixed, stratified part of the training split.

It never depends on the run's seed, so every run and every baseline on a dataset distils from the
same images and is validated on the same others. The test split is not touched here.
"""

from __future__ import annotations

import numpy as np

VALIDATION_SEED = 0


def default_val_size(n_train: int) -> int:
    """5000 for the 50k-image datasets (the CIFARs), else 10% of the training split."""
    return 5000 if n_train >= 50_000 else n_train // 10


def holdout_split(labels: np.ndarray, val_size: int, seed: int = VALIDATION_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) into `labels`: val has `val_size` images, classes in proportion."""
    n = len(labels)
    val_size = int(min(max(val_size, 0), n))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    # Per-class share by largest remainder, so the total is exactly val_size.
    exact = counts * (val_size / n)
    share = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - share), kind="stable")[: val_size - share.sum()]:
        share[i] += 1
    val = []
    for cls, k in zip(classes, share):
        members = np.flatnonzero(labels == cls)
        val.append(rng.permutation(members)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx
