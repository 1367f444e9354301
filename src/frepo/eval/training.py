"""The one loop that trains networks on a fixed set of images: the reference evaluation (one network,
`frepo.eval.protocols.frepo`, or several stacked, `frepo.eval.together`), the privacy experiment's
victims and the herding features' network (`frepo.jobs.subset`). The batch order and the learning
rate schedule live here once; what differs between them is an `Update` (one optimiser step of one
network, or of N stacked networks) and a `Schedule`.

The dsa protocol keeps its own epoch loop (`frepo.eval.protocols.dsa`), as the DC/DSA reference does:
each epoch ends with a smaller last batch (its steps have two sizes), and the learning-rate drop at half
the epochs builds a new optimiser (the momentum restarts): an optimiser's lifetime and a batch size that
change inside the run, which none of the step-based trainings here have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..base.device import deterministic_kernels, host_to_device
from ..base.log import progress_bar
from ..method.optim import set_lr
from ..models import build_model, eval_layout
from .augment import random_op

ORDERS = ("cycle", "epochs", "draws")


@dataclass(frozen=True)
class Schedule:
    """What the loop does over `steps` steps: batches of min(N, batch_size) in `order`, and the learning
    rate of step t, `lr(t)` (None: the optimiser keeps its own constant rate).

    Orders: `cycle`, the reference's: the set repeated then batched, in order, batches running on across
    epoch ends (indices (t·B + 0..B-1) mod N, no randomness); `epochs`, mia.py's: a fresh permutation
    every epoch, a batch that would run past its end starts the next one; `draws`: an independent random
    batch every step (randperm(N)[:B])."""

    steps: int
    batch_size: int
    order: str = "cycle"
    lr: Callable[[int], float] | None = None


def batch_indices(schedule: Schedule, n: int, gen: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """The index tensors (B,) of each step, on `device`; `epochs` and `draws` draw from `gen` (a CPU
    generator) just before the step's augmentation draws."""
    bs = min(n, schedule.batch_size)
    if schedule.order == "cycle":
        offsets = torch.arange(bs, device=device)
        for t in range(schedule.steps):
            yield (t * bs + offsets) % n
    elif schedule.order == "epochs":
        order, pos = torch.randperm(n, generator=gen), 0
        for _ in range(schedule.steps):
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=gen), 0
            yield host_to_device(order[pos : pos + bs], device)
            pos += bs
    elif schedule.order == "draws":
        for _ in range(schedule.steps):
            yield host_to_device(torch.randperm(n, generator=gen)[:bs], device)
    else:
        raise ValueError(f"unknown batch order {schedule.order!r}; known: {', '.join(ORDERS)}")


Update = Callable[[torch.Tensor, torch.Tensor, "float | None"], None]  # (x B×C×H×W, targets B×…, lr)


def train(
    update: Update,
    images: torch.Tensor,
    targets: torch.Tensor,
    schedule: Schedule,
    *,
    gen: torch.Generator,
    device: torch.device,
    progress: bool = False,
) -> None:
    """The one loop: each step takes the next batch of (images N×C×H×W, targets N×…) and calls
    `update(x, y, lr)`; a batch is moved to `device` (a no-op when the set is there already; queued
    without waiting for the GPU when the set is on the host). cuDNN's choices are the deterministic ones
    (`deterministic_kernels`): every network frepo trains, an evaluation's, herding's feature network or a
    privacy victim, repeats with its seed on a GPU too."""
    indices = batch_indices(schedule, len(images), gen, images.device)
    # closed on an exception too: an open bar would keep a redirected log's later bars quiet (base/log.py)
    with (
        deterministic_kernels(device),
        progress_bar(
            range(schedule.steps), desc="train", unit="step", leave=False, disable=not progress, mininterval=1.0
        ) as bar,
    ):
        for t, idx in zip(bar, indices):
            x, y = host_to_device(images[idx], device), host_to_device(targets[idx], device)
            update(x, y, schedule.lr(t) if schedule.lr else None)


class Interleaved:
    """One step of N networks, each network's own update (`NetworkUpdate`) on its own CUDA stream: the host
    queues the N updates in turn and the GPU runs the streams side by side, so one network's small kernels
    fill the gaps another's leave. Each network computes exactly what it computes alone (its parameters,
    draws, optimiser; the same operations in the same order), so the results equal the sequential runs bit
    for bit where the kernels do not change: on a CPU, where the networks take turns step by step; on a GPU
    cuBLAS may pick another kernel when several streams run at once (its reproducibility notes), so there
    they agree to rounding (tests/test_cuda.py says which it measured). `join()` before
    reading the networks on the current stream."""

    def __init__(self, updates: Sequence[Update], device: torch.device):
        self.updates, self.device = updates, device
        self.streams = [torch.cuda.Stream(device) for _ in updates] if device.type == "cuda" else []

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float | None) -> None:
        if not self.streams:
            for update in self.updates:
                update(x, y, lr)
            return
        main = torch.cuda.current_stream(self.device)
        for update, stream in zip(self.updates, self.streams):
            stream.wait_stream(main)  # the batch was gathered on the current stream
            with torch.cuda.stream(stream):
                update(x, y, lr)
            x.record_stream(stream)  # its memory is reused only once this stream is done with it
            y.record_stream(stream)

    def join(self) -> None:
        for stream in self.streams:
            torch.cuda.current_stream(self.device).wait_stream(stream)


class NetworkUpdate:
    """One optimiser step of one network: one augmentation op drawn from `gen` (none when `ops` is empty),
    the step's learning rate, the loss of `forward(x)` against the targets, backward, step."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        ops: tuple[str, ...],
        gen: torch.Generator,
    ):
        self.forward, self.optimizer, self.loss, self.ops, self.gen = forward, optimizer, loss, ops, gen

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float | None) -> None:
        if self.ops:
            x = random_op(x, self.ops, self.gen)
        if lr is not None:
            set_lr(self.optimizer, lr)
        loss = self.loss(self.forward(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def fresh_network(
    arch: str,
    images: torch.Tensor,
    num_classes: int,
    *,
    gen: torch.Generator,
    device: torch.device,
    width: int = 128,
    depth: int = 3,
) -> tuple[torch.nn.Module, torch.Tensor]:
    """A network built from `gen` for (N×C×H×W) `images`, in training mode on `device` in the layout
    that trains fastest there (`eval_layout`), and the images on `device` in that layout."""
    model = build_model(arch, tuple(images.shape[1:]), num_classes, generator=gen, width=width, depth=depth)
    layout = eval_layout(images)
    model = model.to(device, memory_format=layout)
    model.train()
    return model, images.to(device).contiguous(memory_format=layout)
