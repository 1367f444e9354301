"""The validation hold-out: a fixed, stratified part of the training split.

It never depends on the run's seed, so every run and every baseline on a dataset distils from the
same images and is validated on the same others. The test split is not touched here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base.errors import FrepoError
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
    train_mask: np.ndarray = np.ones(n, dtype=bool)
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
        return self.narrow(labels, *holdout_split(labels, self.size))

    def narrow(self, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) of the whole split (`holdout_split(labels, size)`) narrowed to the chunk and the classes."""
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

    @staticmethod
    def record(meta: dict) -> dict | None:
        """A set's hold-out record: its own; for a file written before the record, one made from its settings
        (meta "config"), when they narrowed the run ("size" None: the dataset's default); else None: the count
        "val_size" says it all (a run on the whole split, or another tool's set). An export carries it."""
        if meta.get("holdout") is not None:
            return meta["holdout"]
        data = (meta.get("config") or {}).get("data")
        if not isinstance(data, dict) or (data.get("classes") is None and data.get("train_chunk") is None):
            return None
        try:
            return _settings_record(
                DataConfig(**{k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__})
            )
        except (TypeError, ValueError, FrepoError) as exc:
            raise FrepoError(f"the set's recorded data settings are damaged ({exc})") from exc

    @classmethod
    def of_set(cls, meta: dict, n_train: int) -> Holdout:
        """The hold-out of a set with this meta (`record`), whose dataset has `n_train` training images."""
        record = cls.record(meta)
        if record is None:
            return cls(int(meta.get("val_size") or 0))
        try:
            size, chunk, classes = record["size"], record["chunk"], record["classes"]
            return cls(
                default_val_size(n_train) if size is None else int(size),
                (int(chunk[0]), int(chunk[1])) if chunk is not None else None,
                tuple(int(c) for c in classes) if classes is not None else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FrepoError(f"the set's hold-out record is damaged: {record!r}") from exc

    @classmethod
    def of_config(cls, config: DataConfig, n_train: int) -> Holdout:
        """The hold-out a run with these data settings holds out of `n_train` training images."""
        return cls.of_set({"holdout": _settings_record(config)}, n_train)


def _settings_record(config: DataConfig) -> dict:
    """The hold-out record of a run with these data settings ("size" None: the dataset's default)."""
    chunk = None
    if config.train_chunk is not None:
        chunk = [config.train_chunk * config.train_chunk_size, config.train_chunk_size]
    classes = config.class_ids() if config.classes is not None else None
    return {"size": config.val_size, "chunk": chunk, "classes": classes}
