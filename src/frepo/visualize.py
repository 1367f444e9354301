"""Image grids of distilled sets, in pixel space (the preprocessing inverted), as PNG."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .base.atomic import atomic_write
from .io.artifact import DistilledSet


def class_grid(
    pixels: torch.Tensor, class_ids: torch.Tensor, num_classes: int, per_class: int = 10, max_classes: int = 100
) -> tuple[torch.Tensor, list[int]]:
    """C×H×W grid: one row per class (up to max_classes), up to per_class images each, 2-px gaps.

    pixels: N×C×H×W in [0, 1]. Returns the grid and the class of each row.
    """
    from torchvision.utils import make_grid

    if pixels.shape[-1] < 32:  # tiny images (8×8 digits) are upscaled so they can be seen
        factor = -(-32 // pixels.shape[-1])
        pixels = F.interpolate(pixels, scale_factor=factor, mode="nearest")
    rows, tiles = [], []
    for c in range(min(num_classes, max_classes)):
        members = torch.nonzero(class_ids == c).flatten()[:per_class]
        if len(members) == 0:
            continue
        row = list(pixels[members])
        row += [torch.ones_like(pixels[0])] * (per_class - len(row))
        tiles += row
        rows.append(c)
    grid = make_grid(torch.stack(tiles), nrow=per_class, padding=2, pad_value=1.0)
    return grid, rows


def save_grid(ds: DistilledSet, path: str | Path, per_class: int = 10, title: str | None = None) -> Path:
    """Save a labelled grid of the set's images (one row per class) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, rows = class_grid(ds.pixels(), ds.class_ids(), ds.num_classes, per_class)
    image = grid.permute(1, 2, 0).numpy()
    height = max(2.0, 0.45 * len(rows) + 0.6)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * per_class + 1.5), height), dpi=100)
    ax.imshow(
        image.squeeze(-1) if image.shape[-1] == 1 else image,
        cmap="gray" if image.shape[-1] == 1 else None,
        interpolation="nearest",
        vmin=0,
        vmax=1,
    )
    tile = grid.shape[1] / max(len(rows), 1)
    ax.set_yticks([tile * (i + 0.5) for i in range(len(rows))])
    ax.set_yticklabels([ds.classes[c] for c in rows], fontsize=7)
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return Path(path)
