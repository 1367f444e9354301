"""Real images gathered and preprocessed per batch, so host memory is O(batch), not O(dataset).

ImageNet at 64×64 is 15.7 GB as uint8 and 63 GB as float32: its training split stays uint8 (memory-mapped
from the dataset cache) and each real batch is gathered, converted and preprocessed when a step needs
it (`frepo.base.prefetch` does it for the next step in a background thread).
"""

from __future__ import annotations

import numpy as np
import torch

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

    def __getitem__(self, batch_idx: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B,) positions in 0..N-1 -> float32 B×C×H×W, in the order given."""
        rows = self.idx[np.asarray(torch.as_tensor(batch_idx).cpu(), dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # read the file front to back
        gathered = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        gathered[order] = self.images[rows[order]]
        return self.preprocessing(gathered, channels_last=self.channels_last)
