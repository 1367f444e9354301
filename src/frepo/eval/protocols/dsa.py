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

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...base.device import host_to_device
from ...base.errors import FrepoError
from ...base.fields import COUNT_MAX, check_fields, opt
from ...base.log import progress_bar
from ...base.rng import generator
from ...method.optim import on_cuda
from ...models import build_model, eval_layout
from ..augment_dsa import DSA_OPS, dsa_augment
from ..protocol import EvalSetup, Plan, Protocol, accuracy

log = logging.getLogger(__name__)
_flips_said: set[str] = set()  # datasets whose flipped images the strategy was said to use (field metrics: 3 runs)
LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
BATCH_SIZE = 256
EPOCHS = 1000
EPOCHS_WITHOUT_AUGMENTATION = 300  # DC's main.py: epoch_eval_train = 1000 with DSA, 300 without
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
    if bool((labels >= 0).all()) and torch.allclose(labels.sum(-1), labels.new_ones(len(labels)), atol=1e-4):
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
    depth: int = 3,
    progress: bool = False,
) -> nn.Module:
    """Train one fresh `arch` network. images: N×C×H×W on `device`; targets: (N,) int64 class ids or
    N×K class distributions, on `device`. `init_gen` draws the weights, `train_gen` the shuffles and
    augmentations; `ops` are the DSA groups one of which each batch gets (() for none)."""
    # torch's default init, as the DC code's networks get it (drawn from init_gen, not the global RNG).
    shape = tuple(images.shape[1:])
    model = build_model(arch, shape, num_classes, generator=init_gen, width=width, depth=depth, init="torch")
    layout = eval_layout(images)
    model = model.to(device, memory_format=layout)
    images = images.contiguous(memory_format=layout)

    def optimiser(rate: float) -> torch.optim.Optimizer:
        params = list(model.parameters())
        return torch.optim.SGD(params, lr=rate, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, fused=on_cuda(params))

    sgd = optimiser(lr)
    n = len(images)
    with progress_bar(
        range(epochs + 1), desc="train", unit="epoch", leave=False, disable=not progress, mininterval=1.0
    ) as epochs_bar:
        for epoch in epochs_bar:
            model.train()
            order = host_to_device(torch.randperm(n, generator=train_gen), device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                x = dsa_augment(images[idx], train_gen, ops) if ops else images[idx]
                loss = F.cross_entropy(model(x), targets[idx])
                sgd.zero_grad(set_to_none=True)
                loss.backward()
                sgd.step()
            if epoch == epochs // 2 + 1:
                lr *= 0.1
                sgd = optimiser(lr)
    return model


@dataclass
class DsaOptions:
    epochs: int | None = opt(
        None, f"dsa protocol: epochs (default: {EPOCHS}, or {EPOCHS_WITHOUT_AUGMENTATION} with --dsa-strategy none)"
    )
    soft_labels: bool = opt(
        False,
        "dsa protocol: cross-entropy on the set's learned labels (as class distributions) instead of hard labels",
    )
    dsa_strategy: str | None = opt(
        None,
        f"dsa protocol: augmentation groups joined by '_' as in the DSA code (default: {STRATEGY}, as "
        "DSA/DM/MTT use for every dataset), or none; e.g. color_crop_cutout_scale_rotate keeps digits unmirrored",
    )

    def validate(self) -> None:
        check_fields(self)
        if self.epochs is not None and not 1 <= self.epochs <= COUNT_MAX:
            raise FrepoError(f"epochs must be in 1..{COUNT_MAX}, got {self.epochs}")
        if self.dsa_strategy is not None:
            parse_strategy(self.dsa_strategy)


def _targets(setup: EvalSetup, soft_labels: bool) -> torch.Tensor:
    """(N,) class ids, or N×K class distributions from the set's learned labels (on the setup's device)."""
    if not soft_labels:
        return setup.class_ids()
    if setup.labels.ndim != 2:
        raise FrepoError("--soft-labels needs a set with learned labels; this one holds class ids")
    return soft_targets(setup.labels)


def epochs_of(options: DsaOptions) -> int:
    """The epochs each model trains: given, or the protocol's for its augmentation (none: 300, as DC trains)."""
    if options.epochs:
        return options.epochs
    return EPOCHS if parse_strategy(options.dsa_strategy or STRATEGY) else EPOCHS_WITHOUT_AUGMENTATION


def plan(setup: EvalSetup, options: DsaOptions) -> Plan:
    _targets(setup, options.soft_labels)  # a class-id set cannot give soft labels: say so before training
    ops = parse_strategy(options.dsa_strategy or STRATEGY)
    flips_classes = "flip" in ops and not setup.ds.mirror_invariant
    if flips_classes and setup.ds.dataset not in _flips_said:  # faithful to the field, but said (once a dataset)
        _flips_said.add(setup.ds.dataset)
        log.info(
            "frepo: the dsa protocol's strategy flips images, though a flip changes this dataset's classes (the "
            "field's protocol flips MNIST too); --dsa-strategy without flip (crop_scale_rotate) leaves it out"
        )
    epochs = epochs_of(options)
    extra = {"epochs": epochs, "soft_labels": options.soft_labels, "dsa_strategy": "_".join(ops) or "none"}
    return Plan(dsa_steps(len(setup.ds.images), epochs), {**extra, "init": "torch"})


def train_and_test(setup: EvalSetup, options: DsaOptions, stream: str) -> float:
    ds, device = setup.ds, setup.device
    model = train_dsa_model(
        setup.images,
        _targets(setup, options.soft_labels),
        num_classes=ds.num_classes,
        arch=setup.arch,
        init_gen=generator(setup.seed, f"{stream}/init"),
        train_gen=generator(setup.seed, f"{stream}/train"),
        device=device,
        epochs=epochs_of(options),
        ops=parse_strategy(options.dsa_strategy or STRATEGY),
        width=setup.width,
        depth=setup.depth,
        progress=setup.progress,
    )
    return accuracy(model, setup.test_x, setup.test_y, device)


PROTOCOL = Protocol(
    name="dsa",
    summary="the DC/DSA/DM/MTT standard (ConvNet-3 IN, SGD, 1000 epochs, DSA)",
    options=DsaOptions,
    default_arch="convnet",
    stream="dsa",
    plan=plan,
    train_and_test=train_and_test,
)
