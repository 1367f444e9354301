"""Datasets, the validation hold-out and preprocessing, assembled for distillation and evaluation."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..base.device import host_tensor
from ..base.errors import FrepoError
from ..config import STREAM_AUTO_BYTES, DataConfig
from .preprocess import Preprocessing, cached_preprocessing, fit_preprocessing, resolve_kind, rows_of
from .registry import BUILTIN, RawDataset, default_data_dir, load_dataset, whole_data_dir
from .splits import Holdout, holdout_split
from .stream import StreamingImages, split_view

__all__ = [
    "BUILTIN",
    "PreparedData",
    "Preprocessing",
    "RawDataset",
    "StreamingImages",
    "default_data_dir",
    "fit_preprocessing",
    "load_dataset",
    "prepare",
    "whole_data_dir",
]


@dataclass
class PreparedData:
    """A dataset with its hold-out split and the preprocessing fitted on the distillation part."""

    raw: RawDataset
    preprocessing: Preprocessing
    train_idx: np.ndarray  # indices into raw.x_train that distillation may use
    val_idx: np.ndarray  # indices into raw.x_train held out for validation
    holdout: Holdout  # how they were chosen: what a set's file records, so `--split val` finds val_idx again

    def train(self, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 N×C×H×W preprocessed images, int64 labels) of the distillation part."""
        images = self.preprocessing(self.raw.x_train[self.train_idx], channels_last=channels_last)
        return images, host_tensor(self.raw.y_train[self.train_idx])

    def train_digest(self, sample: int = 256) -> str:
        """sha256 of the whole training split's labels, of the indices distillation uses and of `sample` of
        their raw images, evenly spaced: what a resumed run checks so that it goes on with the data it began
        with. (Hashing all of ImageNet's 15 GB at every start would take minutes; a changed file changes its
        labels or sampled images. Images are sampled from the run's own part only: a continual-learning task
        reads no image of another task's classes, tests/test_downstream.py.)"""
        digest = hashlib.sha256(np.ascontiguousarray(self.raw.y_train).astype(np.int64).tobytes())
        digest.update(np.ascontiguousarray(self.train_idx).astype(np.int64).tobytes())
        picked = self.train_idx[np.linspace(0, len(self.train_idx) - 1, min(sample, len(self.train_idx))).astype(int)]
        digest.update(np.ascontiguousarray(self.raw.x_train[np.sort(picked)]).tobytes())
        return digest.hexdigest()

    def streams(self, mode: str) -> bool:
        """Whether distillation gathers its real batches per step (`DataConfig.stream`)."""
        if mode != "auto":
            return mode == "on"
        return len(self.train_idx) * int(np.prod(self.raw.x_train.shape[1:])) * 4 > STREAM_AUTO_BYTES

    def train_stream(self, channels_last: bool = False) -> tuple[StreamingImages, torch.Tensor]:
        """The distillation part as uint8 rows preprocessed per batch (memory O(batch)), and its labels."""
        stream = StreamingImages(self.raw.x_train, self.train_idx, self.preprocessing, channels_last)
        return stream, host_tensor(np.asarray(self.raw.y_train[self.train_idx]))

    def val(self) -> tuple[torch.Tensor | StreamingImages, torch.Tensor]:
        """The hold-out, preprocessed whole, or a batch at a time when it would pass STREAM_AUTO_BYTES."""
        images = split_view(self.raw.x_train, self.val_idx, self.preprocessing, STREAM_AUTO_BYTES)
        return images, host_tensor(np.asarray(self.raw.y_train[self.val_idx]))

    def test(self) -> tuple[torch.Tensor | StreamingImages, torch.Tensor]:
        images = split_view(self.raw.x_test, np.arange(len(self.raw.x_test)), self.preprocessing, STREAM_AUTO_BYTES)
        return images, host_tensor(np.asarray(self.raw.y_test))


def prepare(cfg: DataConfig, device: torch.device | None = None) -> PreparedData:
    """The dataset, its hold-out, and the preprocessing fitted on the training split minus the hold-out
    (a ZCA fitted on `device`, a run's GPU, when given); then, when `cfg` names classes or a chunk, the
    images distillation may use narrowed to them (the preprocessing stays the whole split's, so every
    task or chunk of a dataset shares one space)."""
    raw = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    if cfg.mirror_invariant is not None:  # the user's word on their own data (a copy: a loaded dataset may be shared)
        raw = dataclasses.replace(raw, mirror_invariant=cfg.mirror_invariant)
    holdout = Holdout.of_config(cfg, len(raw.y_train))
    val_size = holdout.size
    train_idx, val_idx = holdout_split(raw.y_train, val_size)  # of the whole split: the preprocessing's
    if not len(train_idx):  # the preprocessing would be fitted on nothing (NaN), then every class found empty
        raise FrepoError(
            f"val_size {val_size} leaves no training images: {raw.name} has {len(raw.y_train)}; give a smaller "
            "--val-size (0 turns validation off)"
        )
    # Before the fit (ImageNet's: a pass over 15.7 GB): a chunk or class id the dataset does not have
    if holdout.chunk is not None and holdout.chunk[0] >= len(raw.y_train):
        chunks = -(-len(raw.y_train) // cfg.train_chunk_size)
        raise FrepoError(
            f"chunk {cfg.train_chunk} is beyond the training split: {len(raw.y_train)} images make {chunks} chunks "
            f"of {cfg.train_chunk_size} (0..{chunks - 1})"
        )
    if cfg.classes is not None:
        cfg.class_ids(raw.num_classes)  # ids beyond the dataset's classes are an error
    kind = resolve_kind(cfg.preprocess, raw.image_shape)
    cache = Path(cfg.data_dir) if cfg.data_dir is not None else default_data_dir()
    pre = cached_preprocessing(rows_of(raw.x_train, train_idx, raw.source_id), kind, cfg.zca_reg, cache, device)
    train_idx, val_idx = holdout.narrow(raw.y_train, train_idx, val_idx)  # to the chunk and the classes
    return PreparedData(raw, pre, train_idx, val_idx, holdout)
