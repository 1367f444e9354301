"""The distilled-set file: images, labels and the preprocessing they live in, in one safetensors file.

Tensors: `images` (N×C×H×W float32, preprocessed space), `labels` (N×K float32 learned targets, or
N int64 class ids), `pre_*` (preprocessing). Metadata: one JSON string under the key "frepo" with
format version, dataset, classes, IPC, config, seed, step, frepo version and a sha256 checksum of
all of it, so a modified or damaged file is rejected instead of silently giving wrong numbers.
safetensors holds no pickle: loading a file from the internet cannot run code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..base.atomic import atomic_save_safetensors
from ..base.errors import FrepoError
from ..base.version import __version__
from ..data.preprocess import Preprocessing
from ..method.krr import centered_one_hot, label_scale

FORMAT_VERSION = 1


@dataclass
class DistilledSet:
    images: torch.Tensor  # N×C×H×W float32, preprocessed
    labels: torch.Tensor  # N×K float32 learned targets, or (N,) int64 class ids
    preprocessing: Preprocessing
    meta: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    def targets(self) -> torch.Tensor:
        """N×K regression targets: the learned labels, or scaled centred one-hot for class ids."""
        if self.labels.ndim == 2:
            return self.labels.float()
        return centered_one_hot(self.labels.long(), self.num_classes) / label_scale(self.num_classes)

    def class_ids(self) -> torch.Tensor:
        return self.labels.argmax(-1) if self.labels.ndim == 2 else self.labels.long()

    def transform(self, raw_images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw uint8 N×H×W×C images (e.g. a test split) -> this set's preprocessed space."""
        return self.preprocessing(raw_images)

    def pixels(self) -> torch.Tensor:
        """Images back in pixel space, clipped to [0, 1], for viewing."""
        return self.preprocessing.to_unit(self.images).clamp(0, 1)


def _checksum(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    body = {k: v for k, v in meta.items() if k != "checksum"}
    digest.update(json.dumps(body, sort_keys=True).encode())
    return digest.hexdigest()


def _tensors(ds: DistilledSet) -> dict[str, torch.Tensor]:
    labels = ds.labels.detach().cpu()
    labels = labels.float() if labels.ndim == 2 else labels.long()
    return {
        "images": ds.images.detach().cpu().float().contiguous(),
        "labels": labels.contiguous(),
        **ds.preprocessing.tensors(),
    }


def save_distilled(ds: DistilledSet, path: str | Path) -> Path:
    tensors = _tensors(ds)
    meta = dict(ds.meta)
    meta.update(
        format_version=FORMAT_VERSION,
        frepo_version=__version__,
        preprocessing=ds.preprocessing.params(),
        image_shape=list(ds.images.shape[1:]),
        num_images=int(ds.images.shape[0]),
    )
    meta["checksum"] = _checksum(tensors, meta)
    atomic_save_safetensors(tensors, path, metadata={"frepo": json.dumps(meta, sort_keys=True)})
    return Path(path)


def load_distilled(path: str | Path) -> DistilledSet:
    """Load and verify a distilled-set file; every problem is a FrepoError that says what is wrong."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FrepoError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise FrepoError(f"cannot read {path}: not a safetensors file, or corrupt or truncated ({exc})") from exc
    if "frepo" not in header:
        raise FrepoError(
            f"{path} is a safetensors file without frepo metadata; to evaluate images from "
            "another tool, pass --dataset NAME"
        )
    try:
        meta = json.loads(header["frepo"])
    except json.JSONDecodeError as exc:
        raise FrepoError(f"{path}: the frepo metadata is not valid JSON ({exc})") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise FrepoError(
            f"{path}: format version {meta.get('format_version')} is not supported "
            f"(this frepo reads version {FORMAT_VERSION})"
        )
    if meta.get("checksum") != _checksum(tensors, meta):
        raise FrepoError(f"{path}: checksum mismatch: the file was modified or damaged after it was written")
    for key in ("images", "labels"):
        if key not in tensors:
            raise FrepoError(f"{path}: the tensor {key!r} is missing")
    images, labels = tensors["images"], tensors["labels"]
    if images.ndim != 4 or labels.ndim not in (1, 2) or len(labels) != len(images):
        raise FrepoError(f"{path}: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    if labels.ndim == 2 and labels.shape[1] != len(meta["classes"]):
        raise FrepoError(f"{path}: labels have {labels.shape[1]} columns for {len(meta['classes'])} classes")
    pre = Preprocessing.from_tensors(meta["preprocessing"], tensors)
    return DistilledSet(images, labels, pre, meta)
