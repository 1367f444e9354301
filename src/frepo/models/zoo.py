"""Cross-architecture evaluation networks: the small-image variants of the DC/DSA/DM literature.

Definitions follow `networks.py` of GitHub VICO-UoE/DatasetCondensation (layer types, widths, norms,
pooling, the 28×28 greyscale padding), written anew:

  convnet      DC ConvNet-3: [Conv3×3(width, bias) -> norm -> ReLU -> AvgPool 2×2] × depth, same width
               at every layer (128), instance norm = GroupNorm(C, C, affine); linear classifier.
  alexnet      Conv5×5 128 -> MaxPool -> Conv5×5 192 -> MaxPool -> Conv3×3 256, 192, 192 -> MaxPool; ReLU
               after every conv, no norm; linear classifier.
  vgg11        VGG-11 configuration (64 M 128 M 256 256 M 512 512 M 512 512 M), Conv3×3 -> norm -> ReLU,
               max pooling; instance norm (DC's VGG11 default), or batch norm.
  resnet18     ResNet-18 with 3×3 stride-1 stem and no stem pooling (CIFAR style), bias-free convs,
               instance norm (DC's ResNet18) or batch norm (DC's ResNet18BN); global average pool.
  mlp          Flatten -> 128 -> ReLU -> 128 -> ReLU -> classifier.

A 1-channel 28×28 input gets padding 3 on the first conv of convnet and vgg11 (padding 4 on AlexNet's
5×5) so it becomes 32×32, as DC does; resnet18 and mlp take it as it is.

Initialisation (`init`): `lecun` (Flax's defaults, as the frepo protocol's networks get them) or
`torch` (torch's default rule, as the DC code's networks get it; the dsa protocol uses it), both
drawn from the evaluation seed's generator instead of torch's global RNG, so that every evaluation
model is reproducible. Deliberate differences from the DC code: ResNet's final `avg_pool2d(4)` is
an adaptive average pool to 1×1, identical for the 32×32 and 28×28 inputs DC uses (final map 4×4)
and defined for other sizes too; the classifier size is computed from the input size instead of
being hard-coded for 32×32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import FrepoError
from .init import initialise_
from .registry import ModelSpec, register_model

VGG11_LAYOUT: tuple[int | Literal["M"], ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def dc_norm(kind: str, channels: int) -> nn.Module | None:
    """DC's norm layers: instance = GroupNorm with one group per channel (affine, torch eps 1e-5);
    batch = torch BatchNorm2d with torch defaults (momentum 0.1, eps 1e-5)."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return None
    raise FrepoError(f"unknown normalisation {kind!r}; use instance, batch or none")


def _block_norm(kind: str, channels: int) -> nn.Module:
    """dc_norm of a network that always normalises: ResNet18 takes instance or batch norm only (checked)."""
    layer = dc_norm(kind, channels)
    assert layer is not None, f"a ResNet block needs instance or batch norm, not {kind!r}"
    return layer


def _feature_dim(features: nn.Module, image_shape: tuple[int, int, int], arch: str) -> int:
    """Size of the flattened features for one image of `image_shape` (C, H, W), by a shape-only pass on
    the meta device; a clear error if the image is too small for the network's pooling."""
    try:
        with torch.no_grad():
            return int(features(torch.zeros(1, *image_shape, device="meta")).numel())
    except (RuntimeError, ValueError) as exc:  # a pooling or conv layer (or a norm) got too small a map
        raise FrepoError(f"images of {tuple(image_shape[1:])} are too small for {arch}") from exc


class _Embedder(nn.Module):
    """Common body of every evaluation network: `features` (a module whose flattened output is the
    embedding), a linear `classifier`, `embed` (N×C×H×W -> N×feature_dim) and `forward` (-> N×classes).

    The layers are built on the meta device, then allocated and initialised from `generator`: this skips
    torch's default initialisation, which would draw from the global RNG (and costs as much again for
    the large networks)."""

    def __init__(
        self,
        arch: str,
        image_shape: tuple[int, int, int],
        num_classes: int,
        build: Callable[[], nn.Module],
        *,
        generator: torch.Generator,
        init: str = "lecun",
    ):
        super().__init__()
        with torch.device("meta"):
            self.features = build()
            self.feature_dim = _feature_dim(self.features, image_shape, arch)
            self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.to_empty(device="cpu")
        initialise_(self, generator=generator, scheme=init)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _check_norm(arch: str, norm: str, allowed: tuple[str, ...]) -> None:
    if norm not in allowed:
        raise FrepoError(f"{arch} takes {' or '.join(allowed)} norm, not {norm!r}")


class ConvNet(_Embedder):
    """The DC/DSA/DM/MTT ConvNet (default: depth 3, width 128, instance norm, average pooling)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        *,
        generator: torch.Generator,
        init: str = "lecun",
    ):
        _check_norm("convnet", norm, ("instance", "batch", "none"))

        def build() -> nn.Module:
            layers: list[nn.Module] = []
            channels = in_channels
            for i in range(depth):
                layers.append(nn.Conv2d(channels, width, 3, padding=3 if i == 0 and in_channels == 1 else 1))
                if norm != "none":
                    layers.append(dc_norm(norm, width))
                layers += [nn.ReLU(), nn.AvgPool2d(2)]
                channels = width
            return nn.Sequential(*layers)

        super().__init__("convnet", (in_channels, *image_size), num_classes, build, generator=generator, init=init)


class AlexNet(_Embedder):
    """DC's AlexNet for small images (no normalisation)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        generator: torch.Generator,
        init: str = "lecun",
    ):
        def build() -> nn.Module:
            return nn.Sequential(
                nn.Conv2d(in_channels, 128, 5, padding=4 if in_channels == 1 else 2),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(128, 192, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(192, 256, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(256, 192, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(192, 192, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        super().__init__("alexnet", (in_channels, *image_size), num_classes, build, generator=generator, init=init)


class VGG11(_Embedder):
    """DC's VGG-11 for small images; norm 'instance' (DC's VGG11) or 'batch' (VGG11BN)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        norm: str = "instance",
        *,
        generator: torch.Generator,
        init: str = "lecun",
    ):
        _check_norm("vgg11", norm, ("instance", "batch"))

        def build() -> nn.Module:
            layers: list[nn.Module] = []
            channels = in_channels
            for i, item in enumerate(VGG11_LAYOUT):
                if item == "M":
                    layers.append(nn.MaxPool2d(2))
                    continue
                pad = 3 if i == 0 and in_channels == 1 else 1
                layers += [nn.Conv2d(channels, item, 3, padding=pad), dc_norm(norm, item), nn.ReLU()]
                channels = item
            return nn.Sequential(*layers)

        super().__init__("vgg11", (in_channels, *image_size), num_classes, build, generator=generator, init=init)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3×3(stride) -> norm -> ReLU -> conv3×3 -> norm, plus the shortcut (1×1 conv
    and norm when the shape changes), then ReLU. Convs have no bias, as in DC."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _block_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.norm2 = _block_norm(norm, planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), dc_norm(norm, planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(_Embedder):
    """DC's ResNet-18 for small images; norm 'instance' (DC's ResNet18) or 'batch' (ResNet18BN)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        norm: str = "instance",
        *,
        generator: torch.Generator,
        init: str = "lecun",
    ):
        _check_norm("resnet18", norm, ("instance", "batch"))

        def build() -> nn.Module:
            stem = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
            layers: list[nn.Module] = [stem, dc_norm(norm, 64), nn.ReLU()]
            in_planes = 64
            for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers += [BasicBlock(in_planes, planes, stride, norm), BasicBlock(planes, planes, 1, norm)]
                in_planes = planes
            layers.append(nn.AdaptiveAvgPool2d(1))
            return nn.Sequential(*layers)

        super().__init__("resnet18", (in_channels, *image_size), num_classes, build, generator=generator, init=init)


class MLP(_Embedder):
    """DC's MLP: two hidden layers of 128 units with ReLU."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        generator: torch.Generator,
        init: str = "lecun",
    ):
        h, w = image_size

        def build() -> nn.Module:
            return nn.Sequential(
                nn.Flatten(), nn.Linear(in_channels * h * w, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU()
            )

        super().__init__("mlp", (in_channels, *image_size), num_classes, build, generator=generator, init=init)


@register_model("convnet", "DC ConvNet-3, width 128, instance norm (the dsa protocol's network)", sized=True)
def convnet(spec: ModelSpec, *, generator: torch.Generator) -> ConvNet:
    c, size, k = spec.in_channels, spec.image_size, spec.num_classes
    return ConvNet(c, k, size, spec.width, spec.depth, "instance", generator=generator, init=spec.init)


@register_model("alexnet", "DC AlexNet, no norm")
def alexnet(spec: ModelSpec, *, generator: torch.Generator) -> AlexNet:
    return AlexNet(spec.in_channels, spec.num_classes, spec.image_size, generator=generator, init=spec.init)


@register_model("vgg11", "DC VGG-11, instance norm")
def vgg11(spec: ModelSpec, *, generator: torch.Generator) -> VGG11:
    c, size, k = spec.in_channels, spec.image_size, spec.num_classes
    return VGG11(c, k, size, "instance", generator=generator, init=spec.init)


@register_model("resnet18", "DC ResNet-18, instance norm")
def resnet18(spec: ModelSpec, *, generator: torch.Generator) -> ResNet18:
    c, size, k = spec.in_channels, spec.image_size, spec.num_classes
    return ResNet18(c, k, size, "instance", generator=generator, init=spec.init)


@register_model("resnet18_bn", "DC ResNet-18, batch norm")
def resnet18_bn(spec: ModelSpec, *, generator: torch.Generator) -> ResNet18:
    c, size, k = spec.in_channels, spec.image_size, spec.num_classes
    return ResNet18(c, k, size, "batch", generator=generator, init=spec.init)


@register_model("mlp", "DC MLP, 2 hidden layers of 128")
def mlp(spec: ModelSpec, *, generator: torch.Generator) -> MLP:
    return MLP(spec.in_channels, spec.num_classes, spec.image_size, generator=generator, init=spec.init)
