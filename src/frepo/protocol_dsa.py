"""The `dsa` evaluation protocol: how DC, DSA, DM, MTT and DD-Ranking train a fresh network on a
distilled set (`evaluate_synset` in GitHub VICO-UoE/DatasetCondensation `utils.py`).

SGD (momentum 0.9, weight decay 5e-4, lr 0.01), batches of 256 from a fresh shuffle every epoch (the
last batch of an epoch may be smaller), one DSA group per batch, cross-entropy on hard labels (or on
soft label distributions). The groups come from a strategy string spelled as in the DSA code
(default `color_crop_cutout_flip_scale_rotate`, which DSA/DM/MTT use for every dataset; `none` trains
without augmentation). The DC code runs `range(epochs + 1)`, i.e. epochs + 1 passes over the set,
and after the pass with index epochs // 2 + 1 it multiplies the lr by 0.1 and builds a NEW optimiser
(the momentum buffers restart); both details are reproduced here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .augment_dsa import DSA_OPS, dsa_augment
from .errors import FrepoError
from .models import build_model, eval_layout

LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
BATCH_SIZE = 256
EPOCHS = 1000
STRATEGY = "_".join(DSA_OPS)  # color_crop_cutout_flip_scale_rotate


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """'color_crop_cutout_flip_scale_rotate' -> its groups, in the given order (the order in which a
    draw picks them, as in the DSA code); 'none' -> () (no augmentation)."""
    names = tuple(name for name in strategy.strip().lower().split("_") if name)
    if names == ("none",):
        return ()
    unknown = [name for name in names if name not in DSA_OPS]
    if not names or unknown:
        raise FrepoError(
            f"unknown DSA strategy {strategy!r}: join groups from {', '.join(DSA_OPS)} with '_' "
            f"(default {STRATEGY}), or say none"
        )
    if len(set(names)) != len(names):
        raise FrepoError(f"DSA strategy {strategy!r} names a group twice")
    return names


def dsa_steps(num_images: int, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE) -> int:
    """Optimiser steps of one model: (epochs + 1) passes of ceil(N / batch) batches."""
    return (epochs + 1) * -(-num_images // batch_size)


def soft_targets(labels: torch.Tensor) -> torch.Tensor:
    """Class distributions (N×K) from learned labels: rows that already are distributions are kept;
    anything else (e.g. FRePo's centred regression labels) is read as logits and softmaxed."""
    labels = labels.float()
    if bool((labels >= 0).all()) and torch.allclose(labels.sum(-1), torch.ones(len(labels)), atol=1e-4):
        return labels
    return labels.softmax(-1)


def train_dsa_model(
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_classes: int,
    arch: str,
    init_gen: torch.Generator,
    train_gen: torch.Generator,
    device: torch.device,
    epochs: int = EPOCHS,
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
    ops: tuple[str, ...] = DSA_OPS,
    width: int = 128,
) -> nn.Module:
    """Train one fresh `arch` network. images: N×C×H×W on `device`; targets: (N,) int64 class ids or
    N×K class distributions, on `device`. `init_gen` draws the weights, `train_gen` the shuffles and
    augmentations; `ops` are the DSA groups one of which each batch gets (() for none)."""
    # torch's default init, as the DC code's networks get it (drawn from init_gen, not the global RNG).
    model = build_model(arch, tuple(images.shape[1:]), num_classes, generator=init_gen, width=width, init="torch")
    layout = eval_layout(images)
    model = model.to(device, memory_format=layout)
    images = images.contiguous(memory_format=layout)

    def optimiser(rate: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=rate, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    opt = optimiser(lr)
    n = len(images)
    for epoch in range(epochs + 1):
        model.train()
        order = torch.randperm(n, generator=train_gen).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = dsa_augment(images[idx], train_gen, ops) if ops else images[idx]
            loss = F.cross_entropy(model(x), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch == epochs // 2 + 1:
            lr *= 0.1
            opt = optimiser(lr)
    return model
