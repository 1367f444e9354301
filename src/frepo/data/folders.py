"""Images in class folders (`root/<class>/<image>`), read into uint8 arrays: the one image-folder reader
of frepo, used for ImageFolder datasets (`frepo.data.registry`) and for sets saved as images by other
tools or by `frepo export` (`frepo.io.foreign`).

Listing follows torchvision's ImageFolder: class folders sorted by name (hidden ones left out), each walked
recursively with folders and files in sorted order, files kept by extension (case-insensitive).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..base.errors import FrepoError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GREY_MODES = ("L", "1", "I;16")


def class_folders(root: Path) -> list[Path]:
    """The class folders of `root`, sorted by name; hidden ones (.ipynb_checkpoints, .git) are no classes
    (torchvision's ImageFolder would count them)."""
    return sorted((p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, recursively, in torchvision's ImageFolder order."""
    files = []
    for dirpath, _, names in sorted(os.walk(folder, followlinks=True)):
        files += [Path(dirpath) / n for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]
    return files


def unread_images(folder: Path) -> list[Path]:
    """Files under `folder` that PIL opens as images but frepo does not read (.gif, .jfif...), sorted: named in a
    warning, as torchvision's list of extensions left them out without a word."""
    from PIL import Image, ImageFile

    Image.init()  # every plugin registered: OPEN lists the formats PIL opens (registered_extensions, writers too)
    stub = ImageFile.StubImageFile  # formats PIL identifies but cannot decode (HDF5, GRIB, WMF on Linux)
    decoded = {
        fmt for fmt, (opener, _) in Image.OPEN.items() if not (isinstance(opener, type) and issubclass(opener, stub))
    }
    decoded.discard("MPEG")  # a film's header, no image
    known = {s for s, fmt in Image.registered_extensions().items() if fmt in decoded and s not in IMAGE_SUFFIXES}
    files = []
    for dirpath, _, names in sorted(os.walk(folder, followlinks=True)):
        files += [Path(dirpath) / n for n in sorted(names) if Path(n).suffix.lower() in known and n[0] != "."]
    return files


def open_image(path: Path):
    """The PIL image at `path`, decoded, or a FrepoError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.copy()  # decoded into memory; the file is closed
    except OSError as exc:
        raise FrepoError(f"cannot read image {path}: {exc}") from exc


def is_grey(images: list) -> bool:
    return all(im.mode in GREY_MODES for im in images)


def to_array(image, channels: int, size: int | None = None) -> np.ndarray:
    """uint8 H×W×C array of a PIL image in `channels` (1: greyscale, 3: RGB); with `size`, the reference's
    handling of images of any size: the largest centred square (offset half the excess, rounded down),
    resized to size×size by area averaging (PIL's box filter, antialiased; the official code's
    `tf.image.resize` with method area)."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        # 16-bit greyscale: PIL's convert clips each level to 255 (a black-and-white image); scale it instead
        levels = np.asarray(image).astype(np.float64) / 257  # 65535 -> 255
        image = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), "L")
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None:
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        if (w, h) != (side, side):
            image = image.crop((left, top, left + side, top + side))
        if side != size:
            image = image.resize((size, size), Image.Resampling.BOX)
    arr = np.asarray(image, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr
