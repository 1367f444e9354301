"""The validation hold-out: a fixed, stratified part of the training split.

It never depends on the run's seed, so every run and every baseline on a dataset distils from the
same images and is validated on the same others. The test split is not touched here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import DataConfig

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


@dataclass(frozen=True)
class Holdout:
    """The hold-out a set was distilled without, as its file records it (meta "holdout"): the hold-out of the
    whole training split (`holdout_split`, `size` images), narrowed as the run's training images were, to a
    chunk of the training split (`chunk`: first index, number of images) and to some classes. The count alone
    (meta "val_size") names another hold-out once a run was narrowed: `--split val` drew 25 images of all ten
    digits for a set validated on 25 of its two classes."""

    size: int
    chunk: tuple[int, int] | None = None
    classes: tuple[int, ...] | None = None

    def split(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices (train, val) into `labels`, the training split's: what the run distilled from and held out."""
        train_idx, val_idx = holdout_split(labels, self.size)
        if self.chunk is not None:
            start, count = self.chunk
            train_idx, val_idx = (idx[(idx >= start) & (idx < start + count)] for idx in (train_idx, val_idx))
        if self.classes is not None:
            train_idx, val_idx = (idx[np.isin(labels[idx], self.classes)] for idx in (train_idx, val_idx))
        return train_idx, val_idx

    def to_meta(self) -> dict:
        return {
            "size": self.size,
            "chunk": list(self.chunk) if self.chunk is not None else None,
            "classes": list(self.classes) if self.classes is not None else None,
        }

    @classmethod
    def of_set(cls, meta: dict, n_train: int) -> Holdout:
        """The hold-out of a set with this meta, whose dataset has `n_train` training images: its record, or for a
        file written before the record its settings (meta "config"; a narrowed run recorded only its count),
        or the count alone (a set of another tool's: 0, none)."""
        record = meta.get("holdout")
        if isinstance(record, dict):
            chunk, classes = record.get("chunk"), record.get("classes")
            return cls(
                int(record["size"]),
                (int(chunk[0]), int(chunk[1])) if chunk is not None else None,
                tuple(int(c) for c in classes) if classes is not None else None,
            )
        data = (meta.get("config") or {}).get("data")
        if isinstance(data, dict) and (data.get("classes") is not None or data.get("train_chunk") is not None):
            config = DataConfig(**{k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__})
            return cls.of_config(config, n_train)
        return cls(int(meta.get("val_size") or 0))

    @classmethod
    def of_config(cls, config: DataConfig, n_train: int) -> Holdout:
        """The hold-out a run with these data settings (a `DataConfig`) holds out of `n_train` training images."""
        size = config.val_size if config.val_size is not None else default_val_size(n_train)
        chunk = None
        if config.train_chunk is not None:
            chunk = (config.train_chunk * config.train_chunk_size, config.train_chunk_size)
        classes = tuple(config.class_ids()) if config.classes is not None else None
        return cls(int(size), chunk, classes)
