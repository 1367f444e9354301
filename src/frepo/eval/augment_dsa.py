"""DSA augmentation (Zhao & Bilen, ICML 2021) as the DC/DSA/DM/MTT evaluations apply it.

Strategy `color_crop_cutout_flip_scale_rotate` in single mode: for each batch ONE group is drawn
uniformly; its parameters are drawn independently per sample (the evaluation is not Siamese). The
parameters are those of `ParamDiffAug` in GitHub VICO-UoE/DatasetCondensation `utils.py`:

  color    brightness x + (u - 0.5)·1.0, then saturation (x - m_c)·(2u) + m_c with m_c the per-pixel
           channel mean, then contrast (x - m)·(u + 0.5) + m with m the per-image mean; u ~ U(0, 1),
           a fresh u for each of the three
  crop     integer translation by (dy, dx), each uniform in [-s, s], s = round(0.125·size); pixels that
           come from outside the image are zero (one-pixel zero padding, clamped indices)
  cutout   zero a square of side k = round(0.5·size) whose centre row/column o is uniform in
           [0, size - (k mod 2)]; the square covers [o - k//2, o - k//2 + k) clipped to the image
  flip     horizontal, probability 0.5
  scale    x and y factors uniform in [1/1.2, 1.2] (x drawn first) on the affine grid
  rotate   angle uniform in ±15°, counter-clockwise for positive angles in normalised coordinates
Scale and rotate resample bilinearly with zeros outside the image (`grid_sample` defaults,
align_corners=False), as the DSA code does. "round" is round-half-up (int(v + 0.5)), as there.

Every op is a pure function of explicit parameters (`apply_*`) plus a `draw_*` that draws them from a
CPU `torch.Generator`, so a seed gives the same augmentation on every device and tests can check
each op against its closed form.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..base.device import host_to_device

DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")

BRIGHTNESS = 1.0
SATURATION = 2.0
CONTRAST = 0.5
CROP_RATIO = 0.125
CUTOUT_RATIO = 0.5
FLIP_PROB = 0.5
SCALE_RATIO = 1.2
ROTATE_DEGREES = 15.0


def round_half_up(value: float) -> int:
    return int(value + 0.5)


def _per_sample(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return host_to_device(u, x.device, x.dtype).view(-1, 1, 1, 1)


# ---- colour -----------------------------------------------------------------------------------
def apply_brightness(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """x: N×C×H×W; u: (N,) in [0, 1)."""
    return x + (_per_sample(u, x) - 0.5) * BRIGHTNESS


def apply_saturation(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_per_sample(u, x) * SATURATION) + mean


def apply_contrast(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_sample(u, x) + CONTRAST) + mean


def color(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = len(x)
    x = apply_brightness(x, torch.rand(n, generator=gen))
    x = apply_saturation(x, torch.rand(n, generator=gen))
    return apply_contrast(x, torch.rand(n, generator=gen))


# ---- crop (integer translation with zero fill) ----------------------------------------------------
def draw_crop(n: int, height: int, width: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dx): (N,) integer shifts of rows and columns."""
    sy, sx = round_half_up(height * CROP_RATIO), round_half_up(width * CROP_RATIO)
    dy = torch.randint(-sy, sy + 1, (n,), generator=gen)
    dx = torch.randint(-sx, sx + 1, (n,), generator=gen)
    return dy, dx


def apply_crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """out[n, :, i, j] = x[n, :, i + dy[n], j + dx[n]] where that pixel exists, else 0."""
    n, _, h, w = x.shape
    # Index a one-pixel zero-padded copy; clamping to the padding gives the zeros.
    rows = host_to_device((torch.arange(h).view(1, h) + dy.view(n, 1) + 1).clamp(0, h + 1), x.device)
    cols = host_to_device((torch.arange(w).view(1, w) + dx.view(n, 1) + 1).clamp(0, w + 1), x.device)
    padded = F.pad(x, (1, 1, 1, 1))
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # Advanced indices on dims 0, 2, 3 separated by a slice: the result is N×H×W×C.
    return padded[batch, :, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)


def crop(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return apply_crop(x, *draw_crop(len(x), x.shape[2], x.shape[3], gen))


# ---- cutout -------------------------------------------------------------------------------------
def cutout_size(height: int, width: int) -> tuple[int, int]:
    return round_half_up(height * CUTOUT_RATIO), round_half_up(width * CUTOUT_RATIO)


def draw_cutout(n: int, height: int, width: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(row centre, column centre), (N,) each."""
    kh, kw = cutout_size(height, width)
    cy = torch.randint(0, height + (1 - kh % 2), (n,), generator=gen)
    cx = torch.randint(0, width + (1 - kw % 2), (n,), generator=gen)
    return cy, cx


def apply_cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    kh, kw = cutout_size(h, w)
    top = host_to_device((cy - kh // 2).view(n, 1, 1), x.device)
    left = host_to_device((cx - kw // 2).view(n, 1, 1), x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= top) & (rows < top + kh) & (cols >= left) & (cols < left + kw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def cutout(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return apply_cutout(x, *draw_cutout(len(x), x.shape[2], x.shape[3], gen))


# ---- flip ---------------------------------------------------------------------------------------
def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = host_to_device(torch.rand(len(x), generator=gen) < FLIP_PROB, x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


# ---- scale and rotate (affine grid, bilinear, zeros outside) -------------------------------------------
def apply_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """theta: N×2×3 in normalised coordinates (output -> input), as `F.affine_grid` takes it."""
    grid = F.affine_grid(host_to_device(theta, x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def draw_scale(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    low = 1.0 / SCALE_RATIO
    sx = torch.rand(n, generator=gen) * (SCALE_RATIO - low) + low
    sy = torch.rand(n, generator=gen) * (SCALE_RATIO - low) + low
    return sx, sy


def scale_theta(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    theta = torch.zeros(len(sx), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    return theta


def scale(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return apply_affine(x, scale_theta(*draw_scale(len(x), gen)))


def draw_rotate(n: int, gen: torch.Generator) -> torch.Tensor:
    """Angles in radians, (N,)."""
    return (torch.rand(n, generator=gen) - 0.5) * 2 * ROTATE_DEGREES / 180 * math.pi


def rotate_theta(angle: torch.Tensor) -> torch.Tensor:
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(len(angle), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    return theta


def rotate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return apply_affine(x, rotate_theta(draw_rotate(len(x), gen)))


OPS = {"color": color, "crop": crop, "cutout": cutout, "flip": flip, "scale": scale, "rotate": rotate}


def dsa_augment(x: torch.Tensor, gen: torch.Generator, ops: tuple[str, ...] = DSA_OPS) -> torch.Tensor:
    """One DSA group, drawn uniformly from `ops`, applied with per-sample parameters. x: N×C×H×W."""
    name = ops[int(torch.randint(len(ops), (1,), generator=gen))]
    return OPS[name](x, gen)
