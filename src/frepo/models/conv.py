"""The reference `Conv` network of FRePo (depth 3, width 128 by default).

Block i (0-based): [norm if i > 0] -> Conv3×3 (width·2^i channels, bias) -> ReLU -> AvgPool 2×2.
Single-channel input gets padding 3 on the first conv (28×28 -> 32×32), as the reference does for
every 1-channel input. Features are the flattened output of the last block (8192 at 32×32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import FrepoError
from .init import initialise_
from .registry import ModelSpec, register_model


class FlaxBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm with Flax's running-statistics update.

    Flax keeps `momentum`·old + (1-momentum)·batch with momentum 0.1 and updates the running
    variance with the *biased* batch variance; torch would use the unbiased one. Normalisation
    itself is identical (biased variance, eps 1e-5).
    """

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-5, momentum=0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var, self.momentum)
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return FlaxBatchNorm2d(channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels, eps=1e-6)  # Flax GroupNorm(group_size=1) defaults
    raise FrepoError(f"unknown normalisation {kind!r}")


class Conv(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        norm: str = "none",
        *,
        generator: torch.Generator,
        init: str = "lecun",
    ):
        super().__init__()
        h, w = image_size
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            if i > 0 and norm != "none":
                layers.append(make_norm(norm, channels))
            pad = 3 if i == 0 and in_channels == 1 else 1
            out = width * 2**i
            # In-place ReLU: the conv's backward does not need its output, so this is safe and saves
            # one activation-sized allocation per block.
            layers += [nn.Conv2d(channels, out, 3, padding=pad), nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            h, w = (h + 2 * pad - 2) // 2, (w + 2 * pad - 2) // 2
            channels = out
            if h < 1 or w < 1:
                raise FrepoError(f"images of {image_size} are too small for a Conv of depth {depth}")
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        initialise_(self, generator=generator, scheme=init)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W -> N×feature_dim."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


# The Conv family's architecture names: norm -> name (the pool's `--norm` picks one of these).
CONV_ARCHS = {"none": "conv", "batch": "conv_bn", "instance": "conv_in"}


def conv_arch(norm: str) -> str:
    """The architecture name of a Conv with normalisation `norm` (none, batch or instance)."""
    if norm not in CONV_ARCHS:
        raise FrepoError(f"unknown normalisation {norm!r}")
    return CONV_ARCHS[norm]


def _conv(spec: ModelSpec, norm: str, generator: torch.Generator) -> Conv:
    c, size = spec.in_channels, spec.image_size
    return Conv(c, spec.num_classes, size, spec.width, spec.depth, norm, generator=generator, init=spec.init)


@register_model("conv", "FRePo Conv, no norm (the frepo protocol's network)", sized=True)
def conv(spec: ModelSpec, *, generator: torch.Generator) -> Conv:
    return _conv(spec, "none", generator)


@register_model("conv_bn", "FRePo Conv, batch norm (the distillation's pool network)", sized=True)
def conv_bn(spec: ModelSpec, *, generator: torch.Generator) -> Conv:
    return _conv(spec, "batch", generator)


@register_model("conv_in", "FRePo Conv, instance norm", sized=True)
def conv_in(spec: ModelSpec, *, generator: torch.Generator) -> Conv:
    return _conv(spec, "instance", generator)
