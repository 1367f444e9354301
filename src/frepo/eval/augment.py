"""Batched, per-sample augmentation of the reference evaluation (augmax in the official code).

Each training step draws ONE op uniformly from the list; its parameters are drawn per sample:
  flip       horizontal, probability 0.5
  color      brightness +U(±0.25), then contrast ×logU(e^±0.25) around the image mean, then
             saturation ×logU(e^±0.25) around each pixel's channel mean
  crop       random-sized crop: zoom logU(0.8, 1.25), centre offset within the zoomed margin
  rotate     U(±15°)
  translate  U(±1/8 of the size), continuous
  cutout     one hole of size res//4, fully inside the image, zero-filled
Geometric ops resample bilinearly with edge replication (augmax's mode='nearest'), which is
grid_sample(padding_mode='border', align_corners=False). Parameters are drawn from a CPU generator,
so a seed gives the same augmentations on every device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..base.device import host_to_device

REFERENCE_OPS = ("flip", "color", "crop", "rotate", "translate", "cutout")


def reference_ops(mirror_invariant: bool) -> tuple[str, ...]:
    """The reference drops flip for MNIST/Fashion-MNIST; frepo drops it for every flip-sensitive set."""
    return REFERENCE_OPS if mirror_invariant else tuple(op for op in REFERENCE_OPS if op != "flip")


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) * (high - low) + low


def _log_uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return _uniform(gen, n, math.log(low), math.log(high)).exp()


def affine_resample(x: torch.Tensor, linear: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Sample x (N×C×H×W) at input = linear @ output + shift, in pixel units about the image centre.

    linear: N×2×2 and shift: N×2, both in (x, y) order. Bilinear, edges replicated.
    """
    n, _, h, w = x.shape
    # Centred pixel units -> normalised [-1, 1] units (align_corners=False): u = 2c/W, v = 2c/H.
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64)
    theta = torch.empty(n, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = scale.view(1, 2, 1) * linear / scale.view(1, 1, 2)
    theta[:, :, 2] = scale * shift
    grid = F.affine_grid(host_to_device(theta, x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = host_to_device(torch.rand(len(x), generator=gen) < 0.5, x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


def color(x: torch.Tensor, gen: torch.Generator, strength: float = 0.25) -> torch.Tensor:
    n = len(x)
    draws = torch.stack(  # 3×N: brightness, contrast, saturation, in the generator's order
        (
            _uniform(gen, n, -strength, strength),
            _log_uniform(gen, n, math.exp(-strength), math.exp(strength)),
            _log_uniform(gen, n, math.exp(-strength), math.exp(strength)),
        )
    )
    bright, contrast, saturation = host_to_device(draws, x.device, x.dtype).view(3, -1, 1, 1, 1)  # one copy
    x = x + bright
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * saturation + mean


def crop(x: torch.Tensor, gen: torch.Generator, zoom_range=(0.8, 1.25)) -> torch.Tensor:
    n, _, h, w = x.shape
    zoom = _log_uniform(gen, n, *zoom_range)
    limit = torch.stack([((w * zoom) - w).abs() / 2, ((h * zoom) - h).abs() / 2], dim=1)  # (x, y)
    centre = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) * limit
    linear = torch.eye(2, dtype=torch.float64).expand(n, 2, 2) / zoom.view(-1, 1, 1)
    return affine_resample(x, linear, centre / zoom.view(-1, 1))


def rotate(x: torch.Tensor, gen: torch.Generator, degrees: float = 15.0) -> torch.Tensor:
    theta = _uniform(gen, len(x), -math.radians(degrees), math.radians(degrees))
    cos, sin = theta.cos(), theta.sin()
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1)
    return affine_resample(x, linear, torch.zeros(len(x), 2, dtype=torch.float64))


def translate(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    shift = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) * torch.tensor(
        [w * ratio, h * ratio], dtype=torch.float64
    )
    return affine_resample(x, torch.eye(2, dtype=torch.float64).expand(n, 2, 2), -shift)


def cutout(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    size_h, size_w = h // 4, w // 4
    top = torch.randint(0, h - size_h + 1, (n,), generator=gen)
    left = torch.randint(0, w - size_w + 1, (n,), generator=gen)
    top, left = host_to_device(torch.stack((top, left)), x.device).view(2, -1, 1, 1)  # one copy of both
    rows = torch.arange(h, device=x.device).view(1, -1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, -1)
    hole = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    return x.masked_fill(hole.unsqueeze(1), 0.0)


OPS = {"flip": flip, "color": color, "crop": crop, "rotate": rotate, "translate": translate, "cutout": cutout}


def random_op(x: torch.Tensor, ops: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    """Apply one op, drawn uniformly from `ops`, with per-sample parameters."""
    name = ops[int(torch.randint(len(ops), (1,), generator=gen))]
    return OPS[name](x, gen)
