"""The next batch gathered in a background thread while the current step computes.

Used for real batches gathered from uint8 images per step (`frepo.data.stream`): numpy's row gather and
torch's kernels release the GIL, so the gather overlaps the step. The batch order is decided by the
caller (its seeded sampler), never by the thread, so results do not depend on timing.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch


class Prefetcher:
    """Gathers the batch of the next step in a background thread. `get(idx, upcoming)` returns
    `gather(idx)` (the prefetched one when `idx` is what was announced, else gathered now), then starts
    gathering `upcoming`."""

    def __init__(self, gather: Callable[[torch.Tensor], torch.Tensor]):
        self.gather = gather
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frepo-prefetch")
        self.pending: tuple[torch.Tensor, Future] | None = None

    def get(self, idx: torch.Tensor, upcoming: torch.Tensor | None) -> torch.Tensor:
        batch = None
        if self.pending is not None:
            want, future = self.pending
            self.pending = None
            if torch.equal(want, idx):
                batch = future.result()
        if batch is None:
            batch = self.gather(idx)
        if upcoming is not None:
            self.pending = (upcoming.clone(), self.pool.submit(self.gather, upcoming))
        return batch
