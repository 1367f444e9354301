"""Distilled sets written by other tools, read into a `DistilledSet` in memory.

Formats (`detect_format`):
  frepo        frepo's own `.safetensors` (carries its preprocessing; nothing to guess)
  frepo-npz    the official FRePo `np/stepNNNNNN.npz`: `image` N×H×W×C, `label` N×K learned labels
  mtt          MTT's `images_*.pt` (N×C×H×W) with its sibling `labels_*.pt` (N class ids, or N×K)
  dc           DC/DSA/DM's `res_*.pt`: a dict whose 'data' is a list of [images, labels] pairs
  safetensors  a plain safetensors file with `images` and `labels` tensors (no frepo metadata)
  imagefolder  a folder of class folders of images (raw pixels)

Distilled images live in the space their tool preprocessed the real data into, and the test split
must be put through the very same transform, or the accuracy collapses to chance. What each tool does
(`--preprocess`, see `PREPROCESSING`):
  reference  official FRePo: standardised per channel with the reference's fixed constants, then, for
             colour data, ZCA whitening with regulariser 0.1·trace(cov)/d fitted on the FULL training
             split (the official code holds nothing out)
  mtt-zca    MTT with --zca (its CIFAR setting): kornia's ZCAWhitening(eps=0.1) on [0, 1] pixels, fitted
             on the full training split: unbiased covariance, eps added to the eigenvalues as is (not
             scaled by the trace), no per-channel standardisation before it
  dc         DC/DSA/DM (and MTT without --zca): per-channel normalisation with DC's fixed constants
  frepo      frepo's own preprocessing of the dataset (fitted on the distillation part of train)
  pixels     the file holds raw pixels in [0, 1] (an image folder: 0..255); frepo preprocesses them
             its own way
Because a mismatch is silent otherwise, the statistics of the file's images are compared with those
of real training images put through the claimed preprocessing, and a clear warning names the likely
problem (`preprocessing_mismatch`).

`.pt` files are loaded with `torch.load(weights_only=True)`: tensors, containers and plain numbers
only (numpy scalars allowed, since DC stores its accuracies as such), never arbitrary objects.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .artifact import DistilledSet, load_distilled
from .data import RawDataset, default_data_dir, load_dataset
from .data.preprocess import Preprocessing, cached_preprocessing, fingerprint, resolve_kind, whitening_matrices
from .data.splits import default_val_size, holdout_split
from .errors import FrepoError

FORMATS = ("frepo", "frepo-npz", "mtt", "dc", "safetensors", "imagefolder")

PREPROCESSING = {
    "reference": "official FRePo: reference constants, plus ZCA (reg 0.1) on the full training split for colour data",
    "mtt-zca": "MTT --zca: kornia ZCAWhitening(eps=0.1) of [0, 1] pixels, fitted on the full training split",
    "dc": "DC/DSA/DM (and MTT without --zca): per-channel normalisation with DC's constants",
    "frepo": "frepo's own preprocessing of the dataset",
    "pixels": "raw pixels in [0, 1] (0..255 for image files)",
}

# Per-channel (mean, std) of pixels in [0, 1], as hard-coded by each tool.
REFERENCE_STATS = {  # official FRePo, lib/dataset/dataloader.py `data_stats`
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2861], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
}
DC_STATS = {  # DC/DSA utils.py `get_dataset` (MTT uses the CIFAR-10 pair for CIFAR-100 too)
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2861], [0.3530]),
    "svhn": ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "cifar100": ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
}
ZCA_REG = 0.1  # official FRePo
MTT_ZCA_EPS = 0.1  # MTT's kornia ZCAWhitening(eps=0.1)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


# ---- format detection and checksums -----------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """The format of `path` from its name and, for .pt files, its content."""
    path = Path(path)
    if path.is_dir():
        return "imagefolder"
    if not path.is_file():
        raise FrepoError(f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "frepo" if _has_frepo_metadata(path) else "safetensors"
    if suffix == ".npz":
        return "frepo-npz"
    if suffix in (".pt", ".pth"):
        # By the names the tools give their files; anything else by its content.
        if path.name.startswith("res_"):
            return "dc"
        if path.name.startswith("images_"):
            return "mtt"
        return "dc" if isinstance(torch_load(path), dict) else "mtt"
    raise FrepoError(
        f"cannot tell the format of {path}: expected a .safetensors file, an official FRePo .npz, an MTT "
        "images_*.pt, a DC/DSA res_*.pt, or a folder of class folders of images"
    )


def _has_frepo_metadata(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return "frepo" in (fh.metadata() or {})
    except Exception:  # damaged files: load_distilled gives the precise error
        return True


def file_checksum(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and bytes, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def torch_load(path: str | Path):
    """torch.load with weights_only=True; numpy scalars and dtypes (DC's accuracy lists) are allowed."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core; files carry either name
    scalar = core.multiarray.scalar
    allowed: list = [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if match is None:  # not a pickle torch can parse at all
            raise FrepoError(f"cannot read {path}: not a torch file, or corrupt or truncated") from exc
        raise FrepoError(
            f"{path} holds objects other than tensors and numbers ({match.group(1)}), which frepo does not "
            "unpickle (it loads .pt files with weights_only=True); save the images and labels as plain tensors"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise FrepoError(f"cannot read {path}: not a torch file, or corrupt or truncated ({exc})") from exc


# ---- preprocessing of each tool ---------------------------------------------------------------
def _cache_dir(data_dir: str | Path | None) -> Path:
    return Path(data_dir) if data_dir is not None else default_data_dir()


def _cached(tag: str, images: np.ndarray, param: float, cache_dir: Path, build: Callable[[], Preprocessing]):
    """`build()`, cached on disk under a fingerprint of the fitting images (ZCA fits take a while)."""
    from safetensors.torch import load_file

    from .io import atomic_save_safetensors

    path = cache_dir / "preprocessing" / f"{tag}-{fingerprint(images, tag, param)}.safetensors"
    params = {"kind": "zca", "zca_reg": param}
    if path.is_file():
        try:
            return Preprocessing.from_tensors(params, load_file(str(path)))
        except Exception:  # a corrupt cache entry is recomputed, never trusted
            path.unlink(missing_ok=True)
    pre = build()
    try:
        atomic_save_safetensors(pre.tensors(), path)
    except (OSError, FrepoError):
        pass  # a read-only or full cache only costs a recomputation next time
    return pre


def _mean_cov(images: np.ndarray, standardise: Preprocessing, ddof: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and covariance (D×D), float64, of uint8 N×H×W×C images after `standardise`, flattened
    in C,H,W order; the covariance divides by N - ddof."""
    n = len(images)
    d = int(np.prod(images.shape[1:]))
    total = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, 4096):
        total += standardise(images[start : start + 4096]).reshape(-1, d).double().sum(0)
    mean = total / n
    cov = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, 4096):  # float32 products, float64 sums, as frepo's own fit
        flat = standardise(images[start : start + 4096]).reshape(-1, d) - mean.float()
        cov += (flat.T @ flat).double()
    return mean, cov / (n - ddof)


def _channel_stats(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.from_numpy(np.ascontiguousarray(images)).double().div_(255.0)
    return pixels.mean(dim=(0, 1, 2)).float(), pixels.std(dim=(0, 1, 2), unbiased=False).float()


def reference_preprocessing(raw: RawDataset, cache_dir: Path | None = None) -> Preprocessing:
    """The official FRePo's transform: standardise with its constants (fitted on the full training split
    for datasets it has none for), then for colour data ZCA (reg 0.1·trace/d) fitted on the full split."""
    if raw.name in REFERENCE_STATS:
        mean, std = (torch.tensor(v, dtype=torch.float32) for v in REFERENCE_STATS[raw.name])
    else:
        mean, std = _channel_stats(raw.x_train)
    standard = Preprocessing("standard", mean, std)
    if raw.image_shape[0] == 1:
        return standard

    def build() -> Preprocessing:
        zca_mean, cov = _mean_cov(raw.x_train, standard, ddof=0)
        whiten, unwhiten = whitening_matrices(cov, len(raw.x_train), ZCA_REG)
        return Preprocessing("zca", mean, std, ZCA_REG, zca_mean.float(), whiten, unwhiten)

    stats = np.concatenate([mean.numpy(), std.numpy()]).tobytes()
    tag = "reference-zca-" + hashlib.sha256(stats).hexdigest()[:8]
    return _cached(tag, raw.x_train, ZCA_REG, cache_dir or default_data_dir(), build)


def mtt_zca_preprocessing(raw: RawDataset, cache_dir: Path | None = None, eps: float = MTT_ZCA_EPS) -> Preprocessing:
    """MTT's transform: kornia ZCAWhitening(eps) of [0, 1] pixels fitted on the full training split.

    kornia: cov = X_c^T X_c / (N - 1); U, S = svd(cov); W = U diag((S + eps)^-1/2) U^T and the inverse
    U diag((S + eps)^1/2) U^T; out = (x - mean) W. For a symmetric PSD matrix the SVD is the
    eigen-decomposition, used here in float64."""
    c = raw.image_shape[0]
    unit = Preprocessing("standard", torch.zeros(c), torch.ones(c))

    def build() -> Preprocessing:
        zca_mean, cov = _mean_cov(raw.x_train, unit, ddof=1)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0.0) + eps
        whiten = (evecs * evals.rsqrt()) @ evecs.T
        unwhiten = (evecs * evals.sqrt()) @ evecs.T
        return Preprocessing("zca", unit.mean, unit.std, eps, zca_mean.float(), whiten.float(), unwhiten.float())

    return _cached("mtt-zca", raw.x_train, eps, cache_dir or default_data_dir(), build)


def dc_preprocessing(raw: RawDataset) -> Preprocessing:
    if raw.name not in DC_STATS:
        raise FrepoError(
            f"DC/DSA have no normalisation constants for dataset {raw.name!r} (known: {', '.join(DC_STATS)}); "
            "pass --preprocess with the preprocessing the file was saved in"
        )
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in DC_STATS[raw.name])
    return Preprocessing("standard", mean, std)


def frepo_preprocessing(raw: RawDataset, cache_dir: Path | None = None) -> Preprocessing:
    """What `frepo distill`/`frepo subset` use by default: fitted on the distillation part of train."""
    train_idx, _ = holdout_split(raw.y_train, default_val_size(len(raw.y_train)))
    kind = resolve_kind("auto", raw.image_shape[0])
    return cached_preprocessing(raw.x_train[train_idx], kind, ZCA_REG, cache_dir)


def claimed_preprocessing(claim: str, raw: RawDataset, cache_dir: Path | None = None) -> Preprocessing:
    if claim == "reference":
        return reference_preprocessing(raw, cache_dir)
    if claim == "mtt-zca":
        return mtt_zca_preprocessing(raw, cache_dir)
    if claim == "dc":
        return dc_preprocessing(raw)
    if claim in ("frepo", "pixels"):
        return frepo_preprocessing(raw, cache_dir)
    raise FrepoError(f"unknown preprocessing {claim!r}; use one of {', '.join(PREPROCESSING)}")


# ---- the mismatch check -----------------------------------------------------------------------
def reference_sample(raw: RawDataset, count: int = 1000) -> np.ndarray:
    """Up to `count` training images, evenly spaced (deterministic, no RNG)."""
    idx = np.unique(np.linspace(0, len(raw.x_train) - 1, min(count, len(raw.x_train))).astype(np.int64))
    return raw.x_train[idx]


def preprocessing_mismatch(images: torch.Tensor, expected: torch.Tensor | None) -> str | None:
    """Why `images` (N×C×H×W) do not look like `expected` (real images put through the claimed
    preprocessing), or None. `expected` None means the claim is raw pixels in [0, 1].

    Distilled images drift from real ones, so only gross differences count: values confined to
    [0, 1] where the claimed space is largely negative (raw pixels), a spread 5× off, a mean more than
    1.5 real standard deviations off."""
    x = images.detach().float()
    lo, hi = float(x.min()), float(x.max())
    if expected is None:
        if lo < -0.1 or hi > 1.1:
            return f"values range over [{lo:.3g}, {hi:.3g}], not [0, 1] as raw pixels do"
        return None
    ref = expected.float()
    negative = float((ref < -0.05).float().mean())
    if lo >= 0.0 and hi <= 1.0 and negative > 0.05:
        return (
            f"every value lies in [0, 1], like raw pixels, while real images in that space are "
            f"{100 * negative:.0f}% negative"
        )
    std, ref_std = float(x.std()), max(float(ref.std()), 1e-12)
    if std > 5 * ref_std or std < ref_std / 5:
        return f"their spread (std {std:.3g}) is {std / ref_std:.3g}× that of real images in that space ({ref_std:.3g})"
    mean, ref_mean = float(x.mean()), float(ref.mean())
    if abs(mean - ref_mean) > 1.5 * ref_std:
        return f"their mean ({mean:.3g}) is far from that of real images in that space ({ref_mean:.3g} ± {ref_std:.3g})"
    return None


def check_preprocessing(images: torch.Tensor, claim: str, pre: Preprocessing, raw: RawDataset, where: str) -> None:
    """Warn (warnings.warn) when the images do not look like the claimed preprocessing."""
    expected = None if claim == "pixels" else pre(reference_sample(raw))
    reason = preprocessing_mismatch(images, expected)
    if reason is None:
        return
    others = ", ".join(k for k in PREPROCESSING if k != claim)
    warnings.warn(
        f"{where}: the images do not look like '{claim}' preprocessing ({PREPROCESSING[claim]}): {reason}. "
        f"The accuracy will be wrong unless --preprocess names what the file holds ({others})",
        stacklevel=3,
    )


# ---- readers ----------------------------------------------------------------------------------
def _labels(labels, n: int, num_classes: int, where: str) -> torch.Tensor:
    """(N,) int64 class ids or N×K float32 learned labels, validated."""
    labels = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels)
    if labels.ndim == 2 and labels.shape == (n, num_classes):
        return labels.float()
    if labels.ndim == 1 and len(labels) == n:
        if labels.is_floating_point():
            if not bool((labels == labels.round()).all()):
                raise FrepoError(f"{where}: 1-D labels must be integer class ids")
        labels = labels.long()
        if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise FrepoError(f"{where}: class ids must lie in 0..{num_classes - 1} for this dataset")
        return labels
    raise FrepoError(
        f"{where}: labels of shape {tuple(labels.shape)} do not fit {n} images of {num_classes} classes "
        f"(expected ({n},) class ids or ({n}, {num_classes}) learned labels)"
    )


def _images(images, raw: RawDataset, where: str, channels_last: bool = False) -> torch.Tensor:
    """Float32 N×C×H×W images matching the dataset's image shape."""
    x = torch.as_tensor(images)
    if not x.is_floating_point():
        raise FrepoError(f"{where}: images must be floating point, got {x.dtype}")
    if channels_last and x.ndim == 4:
        x = x.permute(0, 3, 1, 2)
    shape = tuple(raw.image_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        layout = "N×H×W×C" if channels_last else "N×C×H×W"
        raise FrepoError(f"{where}: images of shape {tuple(x.shape)}, expected {layout} with (C, H, W) = {shape}")
    if not bool(torch.isfinite(x).all()):
        raise FrepoError(f"{where}: images contain NaN or infinite values")
    return x.detach().float().contiguous()  # MTT saves its leaf tensors with requires_grad set


def read_npz(path: Path, raw: RawDataset) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not {"image", "label"} <= set(archive.files):
                raise FrepoError(f"{path} is not an official FRePo file: it needs the arrays 'image' and 'label'")
            image, label = archive["image"], archive["label"]
    except FrepoError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FrepoError(f"cannot read {path}: not an .npz file, or corrupt or truncated ({exc})") from exc
    images = _images(image, raw, str(path), channels_last=True)
    return images, _labels(label, len(images), raw.num_classes, str(path))


def mtt_labels_path(images_path: Path) -> Path:
    name = images_path.name
    if not name.startswith("images_"):
        raise FrepoError(f"{images_path}: an MTT file is named images_<tag>.pt, with labels_<tag>.pt beside it")
    return images_path.with_name("labels_" + name[len("images_") :])


def read_mtt(path: Path, raw: RawDataset) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch_load(path)
    if not isinstance(images, torch.Tensor):
        raise FrepoError(f"{path}: expected a tensor of images (MTT's images_*.pt), got {type(images).__name__}")
    labels_path = mtt_labels_path(path)
    if not labels_path.is_file():
        raise FrepoError(f"{path}: its labels file {labels_path.name} is missing; MTT saves both side by side")
    labels = torch_load(labels_path)
    if not isinstance(labels, torch.Tensor):
        raise FrepoError(f"{labels_path}: expected a tensor of labels, got {type(labels).__name__}")
    images = _images(images, raw, str(path))
    return images, _labels(labels, len(images), raw.num_classes, str(labels_path))


def read_dc(path: Path, raw: RawDataset, entry: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images, labels, number of sets in the file) of set `entry` of a DC/DSA/DM res_*.pt."""
    obj = torch_load(path)
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, (list, tuple)) or not data:
        raise FrepoError(f"{path}: a DC/DSA res_*.pt is a dict whose 'data' is a non-empty list of [images, labels]")
    if not 0 <= entry < len(data):
        raise FrepoError(f"{path} holds {len(data)} distilled sets (entries 0..{len(data) - 1}); --entry {entry}")
    pair = data[entry]
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise FrepoError(f"{path}: entry {entry} of 'data' is not an [images, labels] pair")
    images = _images(pair[0], raw, f"{path} entry {entry}")
    return images, _labels(pair[1], len(images), raw.num_classes, f"{path} entry {entry}"), len(data)


def read_safetensors(path: Path, raw: RawDataset) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise FrepoError(f"cannot read {path}: corrupt or truncated ({exc})") from exc
    for key in ("images", "labels"):
        if key not in tensors:
            raise FrepoError(f"{path}: a safetensors file from another tool needs 'images' and 'labels' tensors")
    images = _images(tensors["images"], raw, str(path))
    return images, _labels(tensors["labels"], len(images), raw.num_classes, str(path))


def read_image_folder(root: Path, raw: RawDataset) -> tuple[np.ndarray, torch.Tensor]:
    """uint8 N×H×W×C images and (N,) class ids from root/<class>/<image>. Class folders are named by
    the dataset's class names or by class number."""
    from PIL import Image

    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise FrepoError(f"{root} holds no class folders: expected {root}/<class>/<image>.png")
    names = [p.name for p in folders]
    if all(name in raw.classes for name in names):
        ids = [raw.classes.index(name) for name in names]
    elif all(name.isdigit() and int(name) < raw.num_classes for name in names):
        ids = [int(name) for name in names]
    else:
        raise FrepoError(
            f"{root}: class folders {names[:4]} match neither the class names of {raw.name} "
            f"({raw.classes[:4]}...) nor class numbers 0..{raw.num_classes - 1}"
        )
    c, h, w = raw.image_shape
    images, labels = [], []
    for folder, class_id in zip(folders, ids):
        for file in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(file) as im:
                    arr = np.asarray(im.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
            except OSError as exc:
                raise FrepoError(f"cannot read image {file}: {exc}") from exc
            if arr.shape[:2] != (h, w):
                raise FrepoError(f"{file} is {arr.shape[1]}×{arr.shape[0]}; {raw.name} images are {w}×{h}")
            images.append(arr.reshape(h, w, c))
            labels.append(class_id)
    if not images:
        raise FrepoError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return np.stack(images), torch.tensor(labels, dtype=torch.int64)


# ---- the entry point --------------------------------------------------------------------------
def _default_claim(fmt: str, raw: RawDataset) -> str:
    if fmt == "frepo-npz":
        return "reference"
    if fmt == "mtt":
        return "mtt-zca" if raw.image_shape[0] > 1 else "dc"
    if fmt == "dc":
        return "dc"
    if fmt == "imagefolder":
        return "pixels"
    return "frepo"


def _step_from_name(path: Path) -> int | None:
    match = re.search(r"step(\d+)", path.stem) or re.search(r"_(\d+)$", path.stem)
    return int(match.group(1)) if match else None


def load_foreign(
    path: str | Path,
    raw: RawDataset,
    *,
    fmt: str | None = None,
    preprocess: str = "auto",
    entry: int | None = None,
    cache_dir: str | Path | None = None,
) -> DistilledSet:
    """Read a distilled set written by another tool for dataset `raw` into a DistilledSet whose
    preprocessing is the one its images live in (so the test split gets the very same transform)."""
    from .presets import default_flip

    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "frepo":
        raise FrepoError(f"{path} is a frepo file; it carries its own dataset and preprocessing")
    cache = _cache_dir(cache_dir)
    claim = _default_claim(fmt, raw) if preprocess in (None, "auto") else preprocess
    if claim not in PREPROCESSING:
        raise FrepoError(f"unknown --preprocess {claim!r}; use auto or one of {', '.join(PREPROCESSING)}")
    if entry is not None and fmt != "dc":
        raise FrepoError("--entry selects a set inside a DC/DSA res_*.pt file; other formats hold one set")
    source: dict = {"path": str(path), "format": fmt, "preprocessing": claim}
    if fmt == "imagefolder":
        if claim != "pixels":
            raise FrepoError("a folder of images holds raw pixels; drop --preprocess (or use pixels)")
        pixels, labels = read_image_folder(path, raw)
        pre = frepo_preprocessing(raw, cache)
        images = pre(pixels)
    else:
        if fmt == "frepo-npz":
            images, labels = read_npz(path, raw)
        elif fmt == "mtt":
            images, labels = read_mtt(path, raw)
        elif fmt == "dc":
            images, labels, count = read_dc(path, raw, entry or 0)
            source.update(entry=entry or 0, entries=count)
        elif fmt == "safetensors":
            images, labels = read_safetensors(path, raw)
        else:
            raise FrepoError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
        pre = claimed_preprocessing(claim, raw, cache)
        check_preprocessing(images, claim, pre, raw, str(path))
        if claim == "pixels":
            images = pre.from_unit(images)
    n = len(images)
    counts = torch.bincount(labels.argmax(-1) if labels.ndim == 2 else labels, minlength=raw.num_classes)
    ipc = int(counts[0]) if bool((counts == counts[0]).all()) else None
    # The flip trick belongs to FRePo: official FRePo files follow its per-dataset table; other tools
    # never distilled with it.
    use_flip = default_flip(raw.name, ipc or max(1, n // raw.num_classes)) if fmt == "frepo-npz" else False
    meta = {
        "kind": f"foreign-{fmt}",
        "dataset": raw.name,
        "classes": raw.classes,
        "ipc": ipc,
        "seed": None,
        "step": _step_from_name(path) if path.is_file() else None,
        "config": {"use_flip": use_flip},
        "mirror_invariant": raw.mirror_invariant,
        "val_size": 0,  # other tools distil from the whole training split: there is no hold-out
        "checksum": file_checksum(path),
        "source": source,
    }
    return DistilledSet(images.float(), labels, pre, meta)


def load_set(
    file: str | Path,
    dataset: str | None = None,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    preprocess: str = "auto",
    entry: int | None = None,
) -> tuple[DistilledSet, RawDataset]:
    """Any supported distilled-set file -> (DistilledSet, the real dataset it belongs to)."""
    fmt = detect_format(file)
    if fmt == "frepo":
        ds = load_distilled(file)
        if preprocess not in (None, "auto"):
            raise FrepoError("a frepo file carries its own preprocessing; drop --preprocess")
        if entry is not None:
            raise FrepoError("--entry selects a set inside a DC/DSA res_*.pt file; a frepo file holds one set")
        if dataset is not None and not _same_dataset(dataset, ds.dataset):
            raise FrepoError(f"{file} was distilled from {ds.dataset}, not {dataset}; drop --dataset")
        return ds, load_dataset(ds.dataset, data_dir, download)
    if dataset is None:
        raise FrepoError(
            f"{file} is a {fmt} file, which does not say which dataset it belongs to: pass --dataset NAME "
            "(its test split and preprocessing are used)"
        )
    raw = load_dataset(dataset, data_dir, download)
    return load_foreign(file, raw, fmt=fmt, preprocess=preprocess, entry=entry, cache_dir=data_dir), raw


def _same_dataset(given: str, recorded: str) -> bool:
    if given == recorded:
        return True
    path = Path(given).expanduser()
    return path.exists() and str(path.resolve()) == recorded


def describe(ds: DistilledSet) -> str:
    """One line saying where a set came from, for the CLI."""
    source = ds.meta.get("source")
    if not source:
        return f"{ds.meta.get('kind', 'set')} of {ds.dataset}"
    extra = f", entry {source['entry']} of {source['entries']}" if "entries" in source else ""
    return f"{source['format']} file read as '{source['preprocessing']}' preprocessing{extra}"


__all__ = [
    "FORMATS",
    "PREPROCESSING",
    "check_preprocessing",
    "detect_format",
    "file_checksum",
    "load_foreign",
    "load_set",
    "mtt_zca_preprocessing",
    "preprocessing_mismatch",
    "reference_preprocessing",
    "torch_load",
]
