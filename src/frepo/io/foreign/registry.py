"""The registry of other tools' readers, in the style of timm's `register_model`: each reader registers
itself under the format name `detect_format` gives its files, with what the format implies besides its
tensors (the preprocessing its images are in unless told, raw pixels, several sets in one file, FRePo's
flip). `load_foreign` then needs no per-format branch, and a new format is one decorated function.

`READERS` (format -> Reader) is the registry itself, in registration order: `readers.py`'s, which is the
order of `FORMATS` after frepo's own two formats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...base.registry import registering
from ...data import RawDataset

# What a reader gives: (images, labels, what else `source` records). Images are float32 N×C×H×W in the
# tool's space, or uint8 N×H×W×C raw pixels from a `pixels` reader; labels are (N,) int64 class ids or
# N×K float32 learned labels.
Read = tuple[torch.Tensor | np.ndarray, torch.Tensor, dict]
# A reader: (the file, the dataset it belongs to, the set to read from a file of several) -> Read.
ReadFn = Callable[[Path, RawDataset, int], Read]


@dataclass(frozen=True)
class Reader:
    """A registered reader, and what its format implies."""

    read: ReadFn
    claim: Callable[[RawDataset], str]  # the recipe (of CLAIMS) its images are in, unless --preprocess says
    pixels: bool = False  # raw pixels, put through frepo's own preprocessing (a folder of images)
    entries: bool = False  # a file of several sets, one of which --entry picks (DC/DSA's res_*.pt)
    flip: bool = False  # FRePo's own files: the flip trick follows its per-dataset table


READERS: dict[str, Reader] = {}


def register_reader(
    name: str,
    *,
    claim: str | Callable[[RawDataset], str],
    pixels: bool = False,
    entries: bool = False,
    flip: bool = False,
) -> Callable[[ReadFn], ReadFn]:
    """Decorator: register the reader of format `name`, with what it needs to say about itself (once)."""
    default = claim if callable(claim) else lambda raw: claim
    return registering(READERS, name, "format", lambda read: Reader(read, default, pixels, entries, flip))
