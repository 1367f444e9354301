"""Images in class folders (`root/<class>/<image>`), read into uint8 arrays: the one image-folder reader
of frepo, used for ImageFolder datasets (`frepo.data.registry`) and for sets saved as images by other
tools or by `frepo export` (`frepo.io.foreign`).

Listing follows torchvision's ImageFolder: class folders sorted by name, each walked recursively with folders
and files in sorted order, files kept by extension (case-insensitive). Unlike it, hidden folders and files
(.ipynb_checkpoints, macOS's ._ files) are left out, and an image is read as it is shown (its EXIF orientation).
"""

from __future__ import annotations

import contextlib
import os
import struct
import unicodedata
from pathlib import Path

import numpy as np

from ..base.errors import FrepoError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Photo formats PIL does not decode without plugins, named in the warning rather than skipped silently: an
# iPhone's HEIC, a camera's raw files.
UNDECODED_PHOTOS = (".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2")
# The modes read as one channel (16-bit greyscale in any byte order, greyscale with alpha); a palette image
# whose colours it uses are greys is one too (`_is_grey`).
GREY_MODES = ("L", "1", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N")
ORIENTATION = 0x0112  # the EXIF tag: 5-8 turn the image a quarter, so it is shown with its sides swapped


def class_folders(root: Path) -> list[Path]:
    """The class folders of `root`, sorted by name as torchvision sorts them; hidden ones (.ipynb_checkpoints,
    .git) are no classes (torchvision's ImageFolder would count them), and two that spell one name in two Unicode
    forms are refused."""
    folders = sorted(
        (p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )
    spelt = [unicodedata.normalize("NFC", p.name) for p in folders]  # é as one character, or e and an accent (macOS)
    twice = sorted({name for name in spelt if spelt.count(name) > 1})
    if twice:
        raise FrepoError(f"{root} has two class folders named {twice[0]!r}, in two Unicode spellings: merge them")
    return folders


def _walk(folder: Path) -> list[tuple[str, list[str]]]:
    """(folder, visible file names) under `folder`, sorted by folder path, hidden folders and files left out. A
    linked folder is followed, but one that leads to a folder above it, or to one the walk reaches otherwise, is
    refused: the walk would loop (reading other classes' images as this one's), or read images twice."""
    found, seen = [], {Path(folder).resolve(): Path(folder)}  # real folder -> the path the walk reached it by
    for dirpath, dirnames, names in os.walk(folder, followlinks=True):
        chain = {Path(dirpath).resolve(), *Path(dirpath).resolve().parents}
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            path = Path(dirpath) / d
            real = path.resolve()
            if real in chain:
                raise FrepoError(f"{path} leads to {real}, a folder above it: reading it would loop; remove the link")
            if real in seen:
                raise FrepoError(
                    f"{path} and {seen[real]} lead to the same folder {real} (a loop, or its images read twice): "
                    "remove the link"
                )
            seen[real] = path
        found.append((dirpath, [n for n in names if not n.startswith(".")]))
    return sorted(found)


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, recursively, in torchvision's ImageFolder order (hidden ones left out)."""
    return [Path(d) / n for d, names in _walk(folder) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]


def unread_images(folder: Path) -> list[Path]:
    """Files under `folder` that are images frepo does not read (.gif, .jfif, .heic...), sorted: named in a
    warning, as torchvision's list of extensions left them out without a word."""
    from PIL import Image, ImageFile

    Image.init()  # every plugin registered: OPEN lists the formats PIL opens (registered_extensions, writers too)
    stub = ImageFile.StubImageFile  # formats PIL identifies but cannot decode (HDF5, GRIB, WMF on Linux)
    decoded = {
        fmt for fmt, (opener, _) in Image.OPEN.items() if not (isinstance(opener, type) and issubclass(opener, stub))
    }
    decoded.discard("MPEG")  # a film's header, no image
    known = {s for s, fmt in Image.registered_extensions().items() if fmt in decoded}
    known = (known | set(UNDECODED_PHOTOS)) - set(IMAGE_SUFFIXES)
    return [Path(d) / n for d, names in _walk(folder) for n in sorted(names) if Path(n).suffix.lower() in known]


@contextlib.contextmanager
def _opened(path: Path):
    """The image at `path`, open; what a damaged or hostile file raises in PIL (a corrupt header's ValueError or
    struct.error, a picture over PIL's pixel limit) is a FrepoError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            yield image
    except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError) as exc:
        raise FrepoError(f"cannot read image {path}: {exc}") from exc


# The formats whose 32-bit integer mode ("I") holds 16-bit levels (a 16-bit PNG as some writers store it, a 16-bit
# PGM as PIL opens it); a TIFF's may hold any range.
SIXTEEN_BIT_I = ("PNG", "PPM")


def _checked_mode(image, path: Path) -> None:
    if image.mode in ("I", "F") and not (image.mode == "I" and image.format in SIXTEEN_BIT_I):
        kind = "integer" if image.mode == "I" else "float"
        raise FrepoError(
            f"{path} is a 32-bit {kind} image, whose range of levels frepo cannot know: save it as an 8- or 16-bit PNG"
        )


def image_header(path: Path) -> tuple[tuple[int, int], bool]:
    """((width, height) as the image is shown, whether it is greyscale), read from the file's header (a palette
    image's pixels are decoded to see which colours it uses, and let go)."""
    with _opened(path) as image:
        _checked_mode(image, path)
        w, h = image.size
        if image.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):
            w, h = h, w
        return (w, h), _is_grey(image)


def open_image(path: Path, shown: bool = True):
    """The PIL image at `path`, decoded and turned as it is shown (a phone's portrait photo is stored sideways,
    with its EXIF orientation), or a FrepoError naming the file. `shown=False` keeps it as stored, as the
    reference's decoders (and torchvision's) read the published datasets."""
    from PIL import Image, ImageOps

    with _opened(path) as image:
        _checked_mode(image, path)
        image.load()
        if image.mode == "I":  # 16-bit levels (SIXTEEN_BIT_I): as to_array reads a 16-bit image's
            image = Image.fromarray(np.asarray(image).astype(np.uint16))
        return ImageOps.exif_transpose(image) if shown else image.copy()  # a copy, the file closed


def read_image(path: Path, channels: int, size: int | None = None, shown: bool = True) -> np.ndarray:
    """uint8 H×W×C array of the image at `path` (`to_array`); the decoded picture is let go at once."""
    return to_array(open_image(path, shown), channels, size)


def _is_grey(image) -> bool:
    if image.mode != "P":
        return image.mode in GREY_MODES or (image.mode == "I" and image.format in SIXTEEN_BIT_I)
    colours = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    indices = np.unique(np.asarray(image))
    used = colours[indices[indices < len(colours)]]  # a palette holds colours no pixel takes
    return bool((used == used[:, :1]).all())


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
