"""Model registry."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FrepoError
from .conv import Conv, FlaxBatchNorm2d
from .init import init_flax_defaults_, lecun_normal_

__all__ = ["Conv", "FlaxBatchNorm2d", "build_model", "init_flax_defaults_", "lecun_normal_"]


def build_model(
    arch: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    generator: torch.Generator | None = None,
    width: int = 128,
    depth: int = 3,
) -> nn.Module:
    """A freshly initialised network. image_shape is (C, H, W)."""
    c, h, w = image_shape
    variants = {"conv": "none", "conv_bn": "batch", "conv_in": "instance"}
    if arch in variants:
        return Conv(c, num_classes, (h, w), width, depth, variants[arch], generator)
    raise FrepoError(f"unknown architecture {arch!r}; known: {', '.join(variants)}")
