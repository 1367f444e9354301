"""Distilled sets written by other tools, read into a `DistilledSet` in memory.

Formats (`detect_format`):
  frepo        frepo's own `.safetensors` (carries its preprocessing; nothing to guess)
  frepo-export a `frepo export` folder (or a file in it): its manifest and stored preprocessing say all
  frepo-npz    the official FRePo `np/stepNNNNNN.npz`: `image` N×H×W×C, `label` N×K learned labels
  mtt          MTT's `images_*.pt` (N×C×H×W) with its sibling `labels_*.pt` (N class ids, or N×K); also
               DD-Ranking's `images.pt` with `labels.pt`
  dc           DC/DSA/DM's `res_*.pt`: a dict whose 'data' is a list of [images, labels] pairs
  safetensors  a plain safetensors file with `images` and `labels` tensors (no frepo metadata)
  imagefolder  a folder of class folders of images (raw pixels)

Distilled images live in the space their tool preprocessed the real data into, and the test split
must be put through the very same transform, or the accuracy collapses to chance: each tool's
transform is a recipe of `frepo.data.recipes` (`--preprocess`), and the statistics of the file's
images are compared with real images in the claimed space, with a warning that names a mismatch.

`.pt` files are loaded with `torch.load(weights_only=True)`: tensors, containers and plain numbers
only (numpy scalars allowed, since DC stores its accuracies as such), never arbitrary objects.

The package: `registry` (`register_reader`, `READERS`: format name -> reader), `readers` (the readers of
other tools' formats, each registered under its name), `files` (format detection, checksums, the safe
torch.load, the checks of every reader's tensors), `exports` (`frepo export` folders read back, a reader
registered per layout) and `load` (the entry points, which dispatch by format name).
"""

from __future__ import annotations

from ..digests import file_checksum
from .exports import load_export
from .files import detect_format, torch_load
from .load import FORMATS, describe, load_foreign, load_set, load_start, recorded_data_dir
from .registry import READERS, register_reader

__all__ = [
    "FORMATS",
    "describe",
    "load_export",
    "detect_format",
    "file_checksum",
    "load_foreign",
    "load_set",
    "torch_load",
    "load_start",
    "recorded_data_dir",
    "READERS",
    "register_reader",
]
