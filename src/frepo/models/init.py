"""Flax's default initialisers, reproduced: LeCun-normal weights, zero biases.

Flax's `lecun_normal` is a *truncated* normal: a standard normal truncated to [-2, 2], scaled so the
weights have variance 1/fan_in (stddev sqrt(1/fan_in) / 0.8796...). torch's default (Kaiming
uniform) differs; the authors' PyTorch port lost points partly from using He init.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Standard deviation of a standard normal truncated to [-2, 2].
TRUNCATED_STD = 0.87962566103423978


def lecun_normal_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """In place: truncated normal with variance 1/fan_in; fan_in = in_features (·kh·kw for convs)."""
    fan_in = weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / TRUNCATED_STD
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std, generator=generator)


def init_flax_defaults_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-initialise every conv/linear (LeCun normal, zero bias) and norm layer (unit scale, zero shift,
    fresh running statistics) of `module` in place, drawing only from `generator`."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            lecun_normal_(m.weight, generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
    return module
