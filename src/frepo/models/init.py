"""Weight initialisation schemes, always drawn from an explicit generator (`INIT_SCHEMES`):

  lecun  Flax's defaults, as the reference (JAX) code gets them: LeCun-normal weights, zero biases.
         Flax's `lecun_normal` is a *truncated* normal: a standard normal truncated to [-2, 2], scaled
         so the weights have variance 1/fan_in (stddev sqrt(1/fan_in) / 0.8796...). The authors'
         PyTorch port lost points partly from using another init. Drawn as JAX draws it (inverse CDF of
         one uniform draw: `truncated_normal_`), not by `nn.init.trunc_normal_`, whose algorithm torch
         changed in 2.12.
  torch  torch's own default rule, as the DC/DSA/DM/MTT code gets it (its networks never re-initialise):
         Kaiming-uniform with a = sqrt(5) for weights (U(±1/sqrt(fan_in))), U(±1/sqrt(fan_in)) biases.
Norm layers get unit scale and zero shift under both.

The generator is a required keyword everywhere: there is no fallback on torch's global RNG, whose
state depends on whatever ran before, so every initialisation names the stream it draws from.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..base.device import host_to_device

# Standard deviation of a standard normal truncated to [-2, 2].
TRUNCATED_STD = 0.87962566103423978


def _draw_(
    tensor: torch.Tensor, generator: torch.Generator, fill: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """In place: fill(t) draws into t from `generator`. Our generators live on the CPU (rng.py), and
    torch refuses a CPU generator for a CUDA tensor, so the values are drawn on the generator's device
    and copied: a model re-initialised on a GPU (the pool's resets) gets the same weights as on a CPU.
    The scratch tensor keeps the parameter's memory layout, because torch fills in memory order."""
    if not isinstance(generator, torch.Generator):  # None would draw from the global RNG
        raise TypeError(f"weights are drawn from an explicit torch.Generator, not {type(generator).__name__}")
    with torch.no_grad():
        if tensor.device == generator.device:
            fill(tensor)
        else:
            # Queued from page-locked memory: the host does not wait for the GPU (a pool reset mid-run).
            tensor.copy_(host_to_device(fill(torch.empty_like(tensor, device=generator.device)), tensor.device))
    return tensor


def truncated_normal_(tensor: torch.Tensor, std: float, *, generator: torch.Generator) -> torch.Tensor:
    """In place: std × a standard normal truncated to [-2, 2], by the inverse CDF of one uniform draw per
    element, as JAX draws it (`jax.random.truncated_normal`, which Flax's initialisers call) and torch's own
    `nn.init.trunc_normal_` did up to 2.11, op for op (bit for bit): u uniform on (erf(-√2), erf(√2)) =
    (2Φ(-2)-1, 2Φ(2)-1), then std·√2·erfinv(u), clipped to the bounds against rounding. torch 2.12 changed
    `trunc_normal_` to draw normals and redraw those outside the bounds: other weights for the same seed, and
    6-8× the time (a width-128 Conv's re-initialisation, a pool reset: medians of 68-91 ms against 10-15 ms
    on 2 cores, docs/benchmarks.md). So frepo draws them itself: a seed gives the weights torch ≤ 2.11 gave,
    whichever torch runs it (as long as torch's uniform_ and erfinv_ kernels stay as they are)."""

    def normal_cdf(x: float) -> float:
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    tensor.uniform_(2 * normal_cdf(-2.0) - 1, 2 * normal_cdf(2.0) - 1, generator=generator)
    return tensor.erfinv_().mul_(std * math.sqrt(2.0)).clamp_(min=-2 * std, max=2 * std)


def lecun_normal_(weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """In place: truncated normal with variance 1/fan_in; fan_in = in_features (·kh·kw for convs)."""
    fan_in = weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / TRUNCATED_STD
    return _draw_(weight, generator, lambda t: truncated_normal_(t, std, generator=generator))


INIT_SCHEMES = ("lecun", "torch")


def init_torch_defaults_(module: nn.Module, *, generator: torch.Generator) -> nn.Module:
    """Re-initialise every conv/linear of `module` in place with torch's `reset_parameters` rule (weight,
    then bias, module by module) and every norm layer as `init_flax_defaults_` does, drawing only
    from `generator`."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _draw_(m.weight, generator, lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator))
            if m.bias is not None:
                bound = 1.0 / math.sqrt(m.weight[0].numel())

                def fill_bias(t: torch.Tensor, b: float = bound) -> torch.Tensor:
                    return t.uniform_(-b, b, generator=generator)

                _draw_(m.bias, generator, fill_bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            _reset_norm(m)
    return module


def initialise_(module: nn.Module, *, generator: torch.Generator, scheme: str = "lecun") -> nn.Module:
    """Initialise `module` in place with one of `INIT_SCHEMES`."""
    if scheme == "lecun":
        return init_flax_defaults_(module, generator=generator)
    if scheme == "torch":
        return init_torch_defaults_(module, generator=generator)
    raise ValueError(f"unknown init scheme {scheme!r}; use one of {INIT_SCHEMES}")


def _reset_norm(m: nn.BatchNorm2d | nn.GroupNorm) -> None:
    if m.weight is not None:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    if isinstance(m, nn.BatchNorm2d):
        m.reset_running_stats()


def init_flax_defaults_(module: nn.Module, *, generator: torch.Generator) -> nn.Module:
    """Re-initialise every conv/linear (LeCun normal, zero bias) and norm layer (unit scale, zero shift,
    fresh running statistics) of `module` in place, drawing only from `generator`."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            lecun_normal_(m.weight, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            _reset_norm(m)
    return module
