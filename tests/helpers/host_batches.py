"""A streamed real-image source for tests: `frepo.data.StreamingImages`'s interface over a host tensor."""

from __future__ import annotations

import torch


class HostBatches:
    """Host batches gathered per step from x (N×C×H×W), as a streamed dataset hands them to the trainer."""

    def __init__(self, x: torch.Tensor):
        self.x, self.shape = x, x.shape

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.x[idx].clone()
