"""The plug-in interface of an evaluation protocol, and what every protocol shares.

A protocol is a module with a typed options dataclass and one train-and-test function, registered
in `frepo.eval.protocols.PROTOCOLS` as a `Protocol`. `frepo.eval.run.evaluate_set` drives it: it
asks the protocol once for its `plan` (which also rejects a set the options cannot use), then trains
and tests `models` fresh networks, each from its own named random stream, and collects the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..base.device import host_to_device
from ..io.artifact import DistilledSet, class_ids_of, regression_targets
from ..method.optim import warmup_cosine
from ..models import inference_batch
from .training import Schedule

log = logging.getLogger(__name__)

# The reference evaluation (frepo protocol) trains on batches of min(N, REFERENCE_BATCH) images, in order.
REFERENCE_BATCH = 500


def reference_schedule(steps: int, lr: float = 3e-4, warmup: int = 500, batch_size: int = REFERENCE_BATCH) -> Schedule:
    """The reference evaluation's batches (in order, the set repeated) and learning rate: a linear
    warm-up, then a cosine decay to 0.01×. Warm-up takes at most half the run: the reference table
    never asks for fewer than 1000 steps, so its evaluations are unchanged, and short validation runs
    still reach the cosine phase. One network (`protocols.frepo`) and N stacked (`together`) share it."""
    return Schedule(steps, batch_size, "cycle", warmup_cosine(lr, min(warmup, steps // 2), steps, alpha=0.01))


@dataclass(frozen=True)
class ReferenceTraining:
    """How every network of one set trains under the reference protocol, whether one at a time
    (`protocols.frepo.train_reference_model`), stacked (`together.train_reference_models`) or on CUDA
    streams (`protocols.frepo.train_reference_models_on_streams`): an `arch` network of `width` for
    `num_classes` classes (`depth` blocks where the architecture has a depth), `steps` Adam steps on `device`
    under `reference_schedule(steps, lr, warmup, batch_size)`, one augmentation op of `ops` per step; `compile`
    runs each network under torch.compile (not for stacked networks); `progress` shows a bar over the steps."""

    num_classes: int
    steps: int
    ops: tuple[str, ...]
    device: torch.device
    arch: str = "conv"
    lr: float = 3e-4
    warmup: int = 500
    batch_size: int = REFERENCE_BATCH
    width: int = 128
    depth: int = 3
    compile: bool = False
    progress: bool = False

    def schedule(self) -> Schedule:
        return reference_schedule(self.steps, self.lr, self.warmup, self.batch_size)


@dataclass
class EvalSetup:
    """One set and the split it is tested on, for one architecture: what every model of a protocol needs.

    The set's tensors that networks train on are `images` and `labels`, on `device`; `ds` (host, by its
    contract) says what the set is: classes, shape, its metadata. The test split stays on the host and
    goes to the device a batch at a time."""

    ds: DistilledSet
    images: torch.Tensor  # N×C×H×W float32 on `device`: the set's images
    labels: torch.Tensor  # on `device`, as ds.labels: N×K learned labels or (N,) class ids
    test_x: torch.Tensor  # M×C×H×W on the host, already in the set's preprocessed space
    test_y: torch.Tensor  # (M,) class ids on the host
    arch: str
    seed: int
    device: torch.device
    width: int = 128
    depth: int = 3  # blocks of the conv family and convnet (`EvalConfig.network_depth`)
    progress: bool = False  # a bar over each model's training steps

    def targets(self) -> torch.Tensor:
        """N×K regression targets on `device` (`DistilledSet.targets` of the device tensors)."""
        return regression_targets(self.labels, self.ds.num_classes)

    def class_ids(self) -> torch.Tensor:
        return class_ids_of(self.labels)


@dataclass
class Plan:
    """What a protocol will do with a set: optimiser steps per model and its own record of the settings."""

    steps: int
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str  # one line for --help
    options: type  # its options dataclass (defaults: "not given"); validate() checks them
    default_arch: str
    stream: str  # model i draws from the random stream f"{stream}/model{i}" of the evaluation seed
    plan: Callable[[EvalSetup, Any], Plan]
    train_and_test: Callable[[EvalSetup, Any, str], float]  # (setup, options, stream name) -> accuracy %
    # All streams' networks at once, (setup, options, stream names, "stacked" or "streams") -> accuracies
    # (`frepo.eval.together`, or one CUDA stream per network), or None where it cannot (then one by one).
    train_and_test_many: Callable[[EvalSetup, Any, list[str], str], list[float] | None] | None = None


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    batch: int | None = None,
) -> float:
    """Percent of images whose argmax prediction equals the label (images M×C×H×W, labels (M,), on any
    device: each batch, `inference_batch` images by default, goes to `device`). Counted on the device,
    read once at the end."""
    model.eval()
    batch = batch or inference_batch(images)
    counts = torch.zeros(2, dtype=torch.long, device=device)  # correct, outputs not finite
    for start in range(0, len(images), batch):
        x = host_to_device(images[start : start + batch], device)
        y = host_to_device(labels[start : start + batch], device)
        logits = model(x)
        counts += torch.stack(((logits.argmax(-1) == y).sum(), not_finite_rows(logits).sum()))
    correct, not_finite = counts.tolist()
    warn_not_finite([not_finite], len(images))
    return 100.0 * correct / max(len(images), 1)


def not_finite_rows(logits: torch.Tensor) -> torch.Tensor:
    """(…×K) -> (…) bool: outputs holding a NaN or an infinity, whose argmax is no prediction."""
    return ~torch.isfinite(logits).all(-1)


def warn_not_finite(not_finite: list[int], total: int) -> None:
    """A warning for each network whose outputs were not finite on some of `total` test images: it
    diverged in training (or ran a broken kernel), so its accuracy measures nothing about the set."""
    for m, count in enumerate(not_finite):
        if count:
            which = (
                f"evaluation network {m + 1} of {len(not_finite)}" if len(not_finite) > 1 else "an evaluation network"
            )
            log.warning(
                f"frepo: {which} gave NaN or infinite outputs on {count} of {total} test images "
                "(it diverged in training): its accuracy is meaningless"
            )
