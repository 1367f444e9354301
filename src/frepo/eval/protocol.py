"""The plug-in interface of an evaluation protocol, and what every protocol shares.

A protocol is a module with a typed options dataclass and one train-and-test function, registered
in `frepo.eval.protocols.PROTOCOLS` as a `Protocol`. `frepo.eval.run.evaluate_set` drives it: it
asks the protocol once for its `plan` (which also rejects a set the options cannot use), then trains
and tests `models` fresh networks, each from its own named random stream, and collects the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..io.artifact import DistilledSet


@dataclass
class EvalSetup:
    """One set and the split it is tested on, for one architecture: what every model of a protocol needs."""

    ds: DistilledSet
    test_x: torch.Tensor  # M×C×H×W, already in the set's preprocessed space
    test_y: torch.Tensor  # (M,) class ids
    arch: str
    seed: int
    device: torch.device
    width: int = 128
    progress: bool = False  # a bar over each model's training steps


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
    # All streams' networks at once (`frepo.eval.together`), or None where it cannot (then one by one).
    train_and_test_many: Callable[[EvalSetup, Any, list[str]], list[float] | None] | None = None


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device, batch: int = 1000
) -> float:
    """Percent of images whose argmax prediction equals the label."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device, non_blocking=True)
        correct += int((model(x).argmax(-1).cpu() == labels[start : start + batch]).sum())
    return 100.0 * correct / max(len(images), 1)
