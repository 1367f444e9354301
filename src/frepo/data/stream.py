"""Real images gathered and preprocessed per batch, so host memory is O(batch), not O(dataset).

ImageNet at 64×64 is 15.7 GB as uint8 and 63 GB as float32: its training split stays uint8 (memory-mapped
from the dataset cache) and each real batch is gathered, converted and preprocessed when a step needs
it (`frepo.base.prefetch` does it for the next step in a background thread).
"""

from __future__ import annotations

import numpy as np
import torch

from .cache import release
from .preprocess import Preprocessing


class StreamingImages:
    """A read-only N×C×H×W float32 view of uint8 rows `images[idx]` (N×H×W×C, memory-mapped or not) in the
    preprocessed space: `stream[batch_idx]` gathers and preprocesses those rows only."""

    def __init__(self, images: np.ndarray, idx: np.ndarray, preprocessing: Preprocessing, channels_last: bool = False):
        self.images, self.idx = images, np.asarray(idx, dtype=np.int64)
        self.preprocessing, self.channels_last = preprocessing, channels_last
        _, h, w, c = images.shape
        self.shape = torch.Size((len(self.idx), c, h, w))

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def device(self) -> torch.device:
        """Where a gathered batch lands: the host."""
        return torch.device("cpu")

    def subset(self, positions: torch.Tensor | np.ndarray) -> StreamingImages:
        """The rows at `positions` (0..N-1), still unread."""
        rows = self.idx[np.asarray(torch.as_tensor(positions).cpu(), dtype=np.int64)]
        return StreamingImages(self.images, rows, self.preprocessing, self.channels_last)

    def __getitem__(self, batch_idx: slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B,) positions in 0..N-1, or a slice of them -> float32 B×C×H×W, in the order given."""
        if isinstance(batch_idx, slice):
            batch_idx = np.arange(len(self.idx))[batch_idx]
        rows = self.idx[np.asarray(torch.as_tensor(batch_idx).cpu(), dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # read the file front to back
        gathered = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        gathered[order] = self.images[rows[order]]
        release(self.images)  # a long run's random rows do not pile up in its resident set
        return self.preprocessing(gathered, channels_last=self.channels_last)


def large(rows: int, image_shape: tuple[int, ...], limit: int) -> bool:
    """Whether `rows` images of `image_shape` would take more than `limit` bytes as float32."""
    return rows * int(np.prod(image_shape)) * 4 > limit


def split_view(
    images: np.ndarray, idx: np.ndarray, preprocessing: Preprocessing, limit: int
) -> StreamingImages | torch.Tensor:
    """`images[idx]` in the preprocessed space: a float32 tensor when it fits in `limit` bytes (as every split
    of the CIFARs does, bit for bit as before), else a `StreamingImages` view preprocessed a batch at a time
    (the hold-out or test split of an ImageNet-sized dataset: memory O(batch))."""
    if large(len(idx), images.shape[1:], limit):
        return StreamingImages(images, idx, preprocessing)
    return preprocessing(images[idx] if len(idx) != len(images) else images)
