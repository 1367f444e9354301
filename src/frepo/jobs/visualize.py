"""Pictures of distilled sets, in pixel space (the preprocessing inverted): a labelled grid (PNG), the
plain grid a run keeps as a snapshot every few steps, and an animated GIF of those snapshots, the
synthetic set over training."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..base.atomic import atomic_write
from ..base.errors import FrepoError
from ..io.artifact import DistilledSet

log = logging.getLogger(__name__)

SNAPSHOT = re.compile(r"step(\d+)\.png$")
GIF_LONGEST_MS = 655_350  # a GIF frame's delay: 16 bits of hundredths of a second
# The image formats a grid is written in (matplotlib's Agg writes these without other programs; .pgf needs
# LaTeX, .raw and .rgba are no image files)
GRID_FORMATS = ("eps", "jpeg", "jpg", "pdf", "png", "ps", "svg", "svgz", "tif", "tiff", "webp")

# The PNG text chunk a grid carries, so that `frepo show` may replace a grid it wrote beside a set, and no other
# file of that name (a user's own x.png beside x.safetensors was overwritten without a word).
GRID_MARK = ("Software", "frepo image grid")


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
    per_class = shown_per_class(class_ids, per_class)
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


def set_grid(ds: DistilledSet, per_class: int = 10, max_classes: int = 100) -> tuple[torch.Tensor, list[int]]:
    """`class_grid` of a set, taking back to pixels only the images the grid shows: the whole set's
    `pixels()` was a dense ZCA's inverse of every image (CIFAR-100 IPC 50: 5000 × 3072², 94 GFLOP on the host)
    at every TensorBoard log step, for 10 images a class."""
    ids = ds.class_ids()
    shown = [torch.nonzero(ids == c).flatten()[:per_class] for c in range(min(ds.num_classes, max_classes))]
    rows = torch.cat(shown).sort().values  # in the set's order, as class_grid takes them
    pixels = ds.preprocessing.to_unit(ds.images[rows]).clamp(0, 1)  # as ds.pixels() of those rows
    return class_grid(pixels, ids[rows], ds.num_classes, per_class, max_classes)


def shown_per_class(class_ids: torch.Tensor, per_class: int) -> int:
    """The columns of a grid: `per_class`, or the largest class's count if smaller (`--per-class 2000` of a
    10-image set drew 20 000 blank tiles in a figure 900 inches wide: 8.8 GB, not finished)."""
    return min(per_class, int(torch.bincount(class_ids).max()) if len(class_ids) else 1)


def grid_format(path: str | Path) -> str:
    """The image format `save_grid` writes to `path`: its suffix's (a .jpg grid is JPEG data, a .pdf a PDF), PNG
    for a name without one; a suffix not in GRID_FORMATS is an error (it was PNG data under that name)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix and suffix not in GRID_FORMATS:
        known = ", ".join(f".{f}" for f in GRID_FORMATS)
        raise FrepoError(f"cannot write an image grid as .{suffix} ({path}): name it with one of {known}")
    return suffix or "png"


def save_grid(ds: DistilledSet, path: str | Path, per_class: int = 10, title: str | None = None) -> Path:
    """Save a labelled grid of the set's images (one row per class) as an image in the format of the file's
    suffix (`grid_format`: PNG without one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmt = grid_format(path)
    per_class = shown_per_class(ds.class_ids(), per_class)
    grid, rows = set_grid(ds, per_class)
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
    metadata = dict([GRID_MARK]) if fmt == "png" else None
    atomic_write(path, lambda p: fig.savefig(p, format=fmt, metadata=metadata))
    plt.close(fig)
    return Path(path)


def is_grid(path: str | Path) -> bool:
    """Whether `path` is a PNG grid that `save_grid` wrote (it carries GRID_MARK)."""
    return png_marked(path, GRID_MARK)


def png_marked(path: str | Path, mark: tuple[str, str]) -> bool:
    """Whether `path` is a PNG whose text chunk `mark[0]` reads `mark[1]`: a picture frepo drew, which it may
    replace (anything else, or unreadable, is not)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get(mark[0]) == mark[1]
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return False


def grid_array(ds: DistilledSet, per_class: int = 10) -> np.ndarray:
    """The set's class grid (`class_grid`) as uint8 H×W×3, rounded as an 8-bit export is."""
    grid, _ = set_grid(ds, per_class)
    grid = grid.expand(3, -1, -1) if grid.shape[0] == 1 else grid
    return grid.clamp(0, 1).mul(255).add_(0.5).floor_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def save_snapshot(ds: DistilledSet, folder: str | Path, step: int, per_class: int = 10) -> Path:
    """folder/stepNNNNNNN.png: the plain grid of the set at `step` (a frame of `animate`)."""
    from PIL import Image

    path = Path(folder) / f"step{step:07d}.png"
    image = Image.fromarray(grid_array(ds, per_class))
    atomic_write(path, lambda p: image.save(p, format="PNG"))
    return path


def snapshots(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the snapshots in `folder`, in step order."""
    found = []
    for path in Path(folder).glob("step*.png"):
        match = SNAPSHOT.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def animate(folder: str | Path, out: str | Path, fps: float = 8.0, title: str = "") -> Path:
    """An animated GIF (looping, the last frame held for a second) of the snapshots in `folder`, each
    captioned with its step: the synthetic set over training."""
    from PIL import Image, ImageDraw

    if Path(out).suffix.lower() not in ("", ".gif"):
        raise FrepoError(f"an animation is written as a GIF: name it .gif, not {Path(out).name}")
    frames_found = snapshots(folder)
    if not frames_found:
        raise FrepoError(f"{folder} holds no snapshots (stepNNNNNNN.png); a run keeps them with --snapshot-every")
    if not fps > 0 or fps == float("inf"):  # NaN fails the first test
        raise FrepoError(f"fps must be a finite number > 0, got {fps}")
    if 1000 / fps > GIF_LONGEST_MS:  # PIL's writer failed with "int too big to convert"
        least = math.ceil(1e6 * 1000 / GIF_LONGEST_MS) / 1e6  # rounded up: the figure shown is accepted
        raise FrepoError(f"fps must be at least {least} (a GIF frame lasts at most 655.35 s), got {fps}")
    frames, damaged = [], []
    for step, path in frames_found:
        try:
            with Image.open(path) as im:
                grid = im.convert("RGB")
        except (OSError, SyntaxError, ValueError):  # PIL: unidentified or truncated (OSError), broken chunks
            damaged.append(path.name)
            continue
        canvas = Image.new("RGB", (grid.width, grid.height + 14), "white")
        canvas.paste(grid, (0, 14))
        ImageDraw.Draw(canvas).text((2, 1), f"{title}step {step}".strip(), fill="black")
        frames.append(canvas.convert("P", palette=Image.ADAPTIVE))
    if damaged:
        if not frames:
            raise FrepoError(f"every snapshot in {folder} is damaged (not a readable PNG)")
        log.warning(f"frepo: left out {len(damaged)} damaged snapshot(s) of {folder}: {', '.join(damaged[:5])}")
    durations = [int(1000 / fps)] * len(frames)
    durations[-1] = max(durations[-1], 1000)

    def save(p: Path) -> None:
        frames[0].save(p, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)

    atomic_write(out, save)
    return Path(out)
