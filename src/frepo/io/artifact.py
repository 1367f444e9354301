"""The distilled-set file: images, labels and the preprocessing they live in, in one safetensors file.

Tensors: `images` (N×C×H×W float32, preprocessed space), `labels` (N×K float32 learned targets, or
N int64 class ids), `pre_*` (preprocessing). Metadata: one JSON string under the key "frepo" with
format version, dataset, classes, IPC, config, seed, step, frepo version and a sha256 checksum of
all of it, so a modified or damaged file is rejected instead of silently giving wrong numbers.
safetensors holds no pickle: loading a file from the internet cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..base.atomic import atomic_save_safetensors
from ..base.device import host_tensor
from ..base.errors import FrepoError, check_argument, check_path
from ..base.fields import check_choice
from ..base.log import warn
from ..base.version import __version__
from ..data.preprocess import KINDS, PACKED, Preprocessing, unpack_upper, upper_size
from ..method.krr import centered_one_hot, label_scale

FORMAT_VERSION = 1


HOST = torch.device("cpu")


def regression_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """N×K regression targets: learned labels N×K as they are, class ids (N,) as scaled centred one-hot."""
    if labels.ndim == 2:
        return labels.float()
    return centered_one_hot(labels.long(), num_classes) / label_scale(num_classes)


def class_ids_of(labels: torch.Tensor) -> torch.Tensor:
    """(N,) class ids of learned labels N×K (argmax) or of class ids."""
    return labels.argmax(-1) if labels.ndim == 2 else labels.long()


# How many images `transform` compares with the preprocessing's pixel statistics: spread over the batch (a file
# may be sorted by class), a few hundred give the mean within a small fraction of a std.
STATISTICS_SAMPLE = 1024


def _spread(x: torch.Tensor) -> torch.Tensor:
    """At most STATISTICS_SAMPLE of x's images, evenly spaced, as float32 on the host (where the
    preprocessing's statistics are: a GPU batch is transformed on its device, and compared here)."""
    return x[:: max(1, -(-len(x) // STATISTICS_SAMPLE))].float().cpu()


@dataclass(eq=False, repr=False)
class DistilledSet:
    """A set as files, pictures, exports and reports receive it: host tensors only, by contract (checked
    here). A run hands its live device tensors to validation alone (`frepo.eval.evaluate_set(on_device=)`);
    everything else gets a host copy made in one place (`frepo.jobs.distill.Distiller.host_set`).
    `==` is identity (the generated one compared tensors and raised): two sets hold the same contents when
    their `meta["checksum"]` agree (`load_distilled`, `save_distilled` set it)."""

    images: torch.Tensor  # N×C×H×W float32, preprocessed
    labels: torch.Tensor  # N×K float32 learned targets, or (N,) int64 class ids
    preprocessing: Preprocessing
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, value, kind in (
            ("images", self.images, torch.Tensor),
            ("labels", self.labels, torch.Tensor),
            ("preprocessing", self.preprocessing, Preprocessing),
            ("meta", self.meta, dict),
        ):
            if not isinstance(value, kind):
                raise FrepoError(f"a DistilledSet's {name} must be a {kind.__name__}, got {type(value).__name__}")
        if self.images.ndim < 1 or self.labels.ndim < 1 or len(self.images) != len(self.labels):
            raise FrepoError(  # a set built by hand: it failed in torch_dataset, export or a network's training
                f"a DistilledSet holds one label per image; got images {tuple(self.images.shape)} and labels "
                f"{tuple(self.labels.shape)}"
            )
        pre = {f"preprocessing {k}": v for k, v in vars(self.preprocessing).items() if isinstance(v, torch.Tensor)}
        named = {"images": self.images, "labels": self.labels, **pre}
        away = {name: str(t.device) for name, t in named.items() if t.device != HOST}
        if away:
            where = ", ".join(f"{name} on {device}" for name, device in away.items())
            raise FrepoError(
                f"a DistilledSet holds host tensors (files, pictures and reports read it); got {where}: "
                "pass .cpu() copies"
            )

    def _described(self, key: str):
        """meta[key]; a set made by hand without it is told what to pass (it was a KeyError)."""
        if key not in self.meta:
            raise FrepoError(
                f"this set's meta has no {key!r}: a DistilledSet made by hand needs meta={{'classes': [a name per "
                "class], 'dataset': its name, ...}, as load_distilled gives"
            )
        return self.meta[key]

    @property
    def classes(self) -> list[str]:
        """The class names, in label order (meta["classes"])."""
        return list(self._described("classes"))

    @property
    def num_classes(self) -> int:
        """K, the number of classes (the width of learned labels)."""
        return len(self._described("classes"))

    @property
    def dataset(self) -> str:
        """The real dataset the set belongs to (a registry name, or a .npz/folder path): its test split evaluates it."""
        return self._described("dataset")

    @property
    def mirror_invariant(self) -> bool:
        """Whether a horizontal flip keeps the set's classes (the flip augmentation of its evaluation): as
        recorded in meta; for a set without the record (made by hand, an older export), what frepo knows of
        its dataset (MNIST: no), else yes. A MNIST set made by hand was trained on flipped digits."""
        if "mirror_invariant" in self.meta:
            return bool(self.meta["mirror_invariant"])
        from ..data.registry import known_mirror_invariant  # the readers' module: loaded when asked

        known = known_mirror_invariant(str(self.meta.get("dataset", "")))
        return True if known is None else known

    def targets(self) -> torch.Tensor:
        """N×K regression targets: the learned labels, or scaled centred one-hot for class ids."""
        return regression_targets(self.labels, self.num_classes)

    def class_ids(self) -> torch.Tensor:
        """(N,) int64: each image's class, the labels themselves or the argmax of learned ones."""
        return class_ids_of(self.labels)

    def torch_dataset(self, labels: str = "targets") -> torch.utils.data.TensorDataset:
        """The set as a torch Dataset of (image, label) pairs, for a DataLoader of your own training: the images
        as held (C×H×W, in the set's preprocessed space: put test images there with `transform`), each with
        its row of `targets()` (K floats, what frepo's networks regress with an MSE loss) or, with
        labels="class_ids", its class id (for a cross-entropy recipe)."""
        from torch.utils.data import TensorDataset

        check_choice("labels", labels, ("targets", "class_ids"))
        return TensorDataset(self.images, self.targets() if labels == "targets" else self.class_ids())

    def transform(
        self, raw_images: np.ndarray | torch.Tensor, value_range: tuple[float, float] | None = None
    ) -> torch.Tensor:
        """Raw images N×H×W×C (e.g. a test split) -> this set's preprocessed space, N×C×H×W float32.

        uint8 pixels (0..255) as they are; float images only with their range declared, `value_range=(0, 1)`
        or `(0, 255)`: anything else is refused, because a wrong guess gives chance accuracy silently."""
        check_argument("raw_images", raw_images, (np.ndarray, torch.Tensor), "an array of images N×H×W×C")
        if value_range is not None and (not hasattr(value_range, "__len__") or len(value_range) != 2):
            raise FrepoError(f"value_range must be (0, 1) or (0, 255), got {value_range!r:.60}")
        if isinstance(raw_images, np.ndarray) and raw_images.dtype == object:
            raise FrepoError("transform takes an array of numbers, got an array of Python objects")
        x = host_tensor(np.ascontiguousarray(raw_images)) if isinstance(raw_images, np.ndarray) else raw_images
        declared = tuple(value_range) if value_range is not None else None  # [0, 1] declares it too
        c, h, w = self.images.shape[1:]
        if x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
            raise FrepoError(
                f"transform takes images N×H×W×C = N×{h}×{w}×{c} (this set's shape, channels last), "
                f"got {tuple(x.shape)}"
            )
        if x.dtype == torch.uint8:
            if declared not in (None, (0, 255)):
                raise FrepoError(f"uint8 images hold 0..255, not the declared range {declared}")
            self._warn_of_other_statistics(_spread(x) / 255)
            return self.preprocessing(x)
        if not x.is_floating_point():
            raise FrepoError(f"transform takes uint8 images (0..255) or float images with value_range; got {x.dtype}")
        if declared is None or declared not in ((0, 1), (0, 255)):
            raise FrepoError(
                "float images need their range declared: transform(images, value_range=(0, 1)) or (0, 255); "
                "uint8 images (0..255) need nothing"
            )
        lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
        top = float(declared[1])
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > top * (1 + 1e-6):
            raise FrepoError(f"images range over [{lo:.4g}, {hi:.4g}], outside the declared [0, {top:g}]")
        if top == 255 and 0 < hi <= 1:  # [0, 1] images divided by 255 again: black, and chance accuracy
            raise FrepoError(
                f"images range over [{lo:.4g}, {hi:.4g}]: pixels in [0, 1], not 0..255; pass value_range=(0, 1)"
            )
        self._warn_of_other_statistics(_spread(x) / top)
        return self.preprocessing.from_unit(x.permute(0, 3, 1, 2).float() / top)

    def _warn_of_other_statistics(self, unit: torch.Tensor) -> None:
        """Warn when images (N×H×W×C in [0, 1], N >= 16) are far from the pixel statistics the preprocessing
        was fitted on: a test split rebuilt on another scale (scikit-learn's digits in 0..16 as uint8) passes
        every check of shape and range, then scores chance."""
        pre = self.preprocessing
        if len(unit) < 16 or (bool((pre.mean == 0).all()) and bool((pre.std == 1).all())):
            return  # no standardisation (kind none, or a whitening alone): no statistics recorded to compare
        mean, std = unit.mean(dim=(0, 1, 2)), unit.std(dim=(0, 1, 2))
        shift = float(((mean - pre.mean) / pre.std).abs().max())
        ratio = std / pre.std
        if shift > 1.5 or float(ratio.min()) < 1 / 3 or float(ratio.max()) > 3:
            shown = lambda t: ", ".join(f"{v:.3f}" for v in t.tolist())  # noqa: E731
            warn(
                f"these images' pixels (mean {shown(mean)}, std {shown(std)} per channel, on a 0..1 scale) are far "
                f"from those of the data the set's preprocessing was fitted on (mean {shown(pre.mean)}, std "
                f"{shown(pre.std)}): are they images of {self.dataset}, on the scale given (uint8: 0..255)? On "
                "another scale, networks score chance"
            )

    def __repr__(self) -> str:
        """One line, not every tensor and the whole meta (thousands of characters for 10 images)."""
        kind = "learned labels" if self.labels.ndim == 2 else "class ids"
        what = ", ".join(f"{k} {self.meta[k]}" for k in ("dataset", "ipc", "step") if self.meta.get(k) is not None)
        shape = "×".join(map(str, self.images.shape))
        return (
            f"DistilledSet({shape} images, {kind}, preprocessing {self.preprocessing.kind}{', ' if what else ''}{what})"
        )

    def pixels(self) -> torch.Tensor:
        """Images back in pixel space, N×C×H×W as `images` (channels first, not `transform`'s channels-last
        input), clipped to [0, 1], for viewing: `pixels().permute(0, 2, 3, 1)` for matplotlib or PIL."""
        return self.preprocessing.to_unit(self.images).clamp(0, 1)


def _checksum(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    body = {k: v for k, v in meta.items() if k != "checksum"}
    digest.update(json.dumps(body, sort_keys=True).encode())
    return digest.hexdigest()


def _tensors(ds: DistilledSet, preprocessing: bool = True) -> dict[str, torch.Tensor]:
    labels = ds.labels.detach().cpu()
    labels = labels.float() if labels.ndim == 2 else labels.long()
    return {
        "images": ds.images.detach().cpu().float().contiguous(),
        "labels": labels.contiguous(),
        **(ds.preprocessing.tensors() if preprocessing else {}),
    }


def _file_contents(ds: DistilledSet, preprocessing: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors (without the preprocessing's, if not `preprocessing`) and the header (without its
    checksum) a file of `ds` holds."""
    try:  # as the file's JSON will hold it: a checksum of int keys ({2: ...}) did not match their "2" read back
        meta = json.loads(json.dumps(ds.meta))
    except (TypeError, ValueError) as exc:  # a value JSON has no form for (a numpy scalar, a tensor)
        raise FrepoError(f"the set's metadata is not plain JSON: {exc}") from exc
    meta.update(
        format_version=FORMAT_VERSION,
        frepo_version=__version__,
        preprocessing=ds.preprocessing.params(),
        image_shape=list(ds.images.shape[1:]),
        num_images=int(ds.images.shape[0]) if ds.images.ndim else 0,
    )
    return _tensors(ds, preprocessing), meta


def check_set(ds: DistilledSet, where: str, preprocessing: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """What `load_distilled` checks of a file, checked of a set in memory (one built by hand is evaluated or
    saved): float images (uint8 pixels are no preprocessed images), labels that fit the images and classes,
    finite values, the metadata's keys and types as the file's JSON would hold them; with `preprocessing`,
    its tensors too (packing a ZCA matrix takes seconds: a Preprocessing is checked when it is built).
    `where` begins each message. Returns `_file_contents(ds, preprocessing)`."""
    if not ds.images.is_floating_point():
        raise FrepoError(f"{where}: images are {ds.images.dtype}; a set holds float images in its preprocessed space")
    if ds.labels.ndim == 1 and ds.labels.is_floating_point():
        raise FrepoError(f"{where}: 1-D labels are class ids, an integer tensor; got {ds.labels.dtype}")
    tensors, meta = _file_contents(ds, preprocessing)
    try:
        as_saved = json.loads(json.dumps({**meta, "checksum": ""}))  # a tuple of classes is saved as a list
    except (TypeError, ValueError) as exc:
        raise FrepoError(f"{where}: the metadata is not JSON ({exc})") from exc
    missing = [key for key in ("dataset", "classes") if key not in as_saved]
    if missing:  # what a set made by hand lacks: said at once, with what to pass (one key at a time before)
        raise FrepoError(
            f"{where}: the metadata lacks {' and '.join(map(repr, missing))}: a DistilledSet made by hand needs "
            "meta={'dataset': its name (the real dataset it belongs to), 'classes': [a name per class]}"
        )
    _check_content(tensors, check_meta(as_saved, where), where, preprocessing)
    return tensors, meta


def safetensors_content(path: Path) -> bool:
    """Whether the file begins as a safetensors file does: an 8-byte little-endian header length that fits in
    the file, then the header's JSON object. (torch files begin as a zip or a pickle, npz files as a zip.)"""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and 8 + int.from_bytes(head[:8], "little") <= size and head[8:9] == b"{"


def has_frepo_metadata(path: Path) -> bool:
    """Whether a safetensors file carries frepo's header (a damaged one counts: loading it says what is wrong)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return "frepo" in (fh.metadata() or {})
    except Exception:  # damaged files: load_distilled gives the precise error
        return True


def recorded_meta(path: Path) -> dict | None:
    """What a frepo set file records of itself (its header's meta, without reading its tensors), or None: no such
    file, not a frepo set, or damaged."""
    from safetensors import safe_open

    if not (path.is_file() and safetensors_content(path)):
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("frepo", "null") or "null")
    except Exception:  # damaged, or a header that is no frepo header
        return None
    return meta if isinstance(meta, dict) else None


def set_kind(path: Path) -> str | None:
    """The `kind` a frepo set file records (`distilled`, `subset-random`, ...), or None: no such file, not a
    frepo set, damaged, or a set that records none."""
    kind = (recorded_meta(path) or {}).get("kind")
    return kind if isinstance(kind, str) else None


def is_set_file(path: Path) -> bool:
    """Whether `path` is a frepo set by its content, whatever its name."""
    return path.is_file() and safetensors_content(path) and has_frepo_metadata(path)


def check_replaceable(path: str | Path, where: str) -> None:
    """Refuse to write a set to `path` where that replaces a folder or a file other than a set. A set is a
    frepo set by its content under any name (`subset --out base`), or a damaged .safetensors file (a run
    writes its damaged set again); another tool's safetensors file (a model's weights) is not one.
    save_distilled(ds, "RUN/checkpoint.pt") replaced the run's checkpoint (and config.json) with a set, and
    returned; `subset --out model.safetensors` replaced a model's weights."""
    target = Path(path)
    if target.is_dir():
        raise FrepoError(f"{where}: it is a folder, which the set would replace; give a file name")
    if not target.exists():
        return
    if target.suffix.lower() == ".safetensors":
        if safetensors_content(target) and not has_frepo_metadata(target):
            raise FrepoError(
                f"{where}: it is a safetensors file other than a frepo set (a model's weights, another tool's "
                "file), which the set would replace; give another name"
            )
        return
    if not is_set_file(target):
        raise FrepoError(f"{where}: it is a file other than a set, which the set would replace; give another name")


def _state(ds: DistilledSet) -> list[tuple]:
    """What decides `ds`'s content, as `as_read` marks it: its images and labels and every tensor and setting of
    its preprocessing (but `unwhiten`, derived on first use), a tensor by a weak reference and its version
    counter, which every in-place change increments (not a write through `.data` or `.numpy()`, which torch
    does not count). Raises RuntimeError for inference-mode tensors, which count nothing."""
    pre = ds.preprocessing
    named = [("images", ds.images), ("labels", ds.labels)]
    named += [(f.name, getattr(pre, f.name)) for f in dataclasses.fields(pre) if f.name != "unwhiten"]
    return [
        (name, weakref.ref(value), value._version) if isinstance(value, torch.Tensor) else (name, value)
        for name, value in named
    ]


def as_read(ds: DistilledSet) -> DistilledSet:
    """`ds`, marked as holding what its file held (`still_as_read`). A set made from it (dataclasses.replace,
    copy.deepcopy) carries no mark, nor does one read in inference mode."""
    try:
        object.__setattr__(ds, "_as_read", _state(ds))
    except RuntimeError:  # inference tensors: no version counter, so no mark (as a set made in memory)
        pass
    return ds


def still_as_read(ds: DistilledSet) -> bool:
    """Whether `ds` holds what its file held: marked by `as_read`, and since then no tensor of it replaced or
    changed in place, no setting of its preprocessing changed. A set changed in memory keeps its file's checksum
    in its meta; this tells it apart without hashing it (packing a ZCA matrix takes seconds)."""
    mark = getattr(ds, "_as_read", None)
    if mark is None:
        return False
    try:
        now = _state(ds)
    except RuntimeError:
        return False

    def same(then: tuple, current: tuple) -> bool:
        if len(then) == 3:  # a tensor: the very one, at the same version
            return len(current) == 3 and then[1]() is current[1]() and then[2] == current[2]
        return then == current

    return len(now) == len(mark) and all(same(then, current) for then, current in zip(mark, now))


def save_distilled(ds: DistilledSet, path: str | Path) -> Path:
    """Write `ds` to `path` atomically, once it passes the checks `load_distilled` makes (`check_set`):
    a set the loader would refuse is refused here, before it replaces a good file. An existing file is
    replaced only if it is a set or a .safetensors file (`check_replaceable`)."""
    check_argument("ds", ds, DistilledSet, "a DistilledSet: save_distilled(ds, path)")
    check_path("path", path)
    check_replaceable(path, f"not saved to {path}")
    tensors, meta = check_set(ds, f"not saved to {path}")
    meta["checksum"] = _checksum(tensors, meta)
    atomic_save_safetensors(tensors, path, metadata={"frepo": json.dumps(meta, sort_keys=True)})
    return Path(path)


@dataclass(frozen=True)
class SetMeta:
    """The JSON header of a distilled-set file: the keys `load_distilled` requires (no default) or knows,
    with their types. Unknown keys are kept."""

    format_version: int
    dataset: str
    classes: list[str]
    image_shape: list[int]
    num_images: int
    preprocessing: dict
    checksum: str
    frepo_version: str | None = None
    kind: str | None = None
    ipc: int | None = None
    seed: int | None = None
    step: int | None = None
    config: dict | None = None
    mirror_invariant: bool | None = None
    val_size: int | None = None
    holdout: dict | None = None
    test_fingerprint: str | None = None
    val_acc: float | None = None
    environment: dict | None = None


T = typing.TypeVar("T")


@typing.overload
def _is(value: object, hint: type[T]) -> typing.TypeGuard[T]: ...
@typing.overload
def _is(value: object, hint: object) -> bool: ...
def _is(value: object, hint: typing.Any) -> bool:
    """Whether a JSON value fits a SetMeta type hint (ints are not bools; floats accept ints)."""
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_is(v, args[0]) for v in value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_meta(meta: dict, where: str) -> SetMeta:
    """The header as a SetMeta, or one line saying which key is missing or of the wrong type."""
    if not isinstance(meta, dict):
        raise FrepoError(f"{where}: the frepo metadata is not a JSON object")
    hints = typing.get_type_hints(SetMeta)
    for f in dataclasses.fields(SetMeta):
        if f.name not in meta:
            if f.default is dataclasses.MISSING:
                raise FrepoError(f"{where}: the metadata lacks {f.name!r}")
            continue
        if not _is(meta[f.name], hints[f.name]):
            raise FrepoError(f"{where}: metadata {f.name!r} is {meta[f.name]!r}, not of type {hints[f.name]}")
    known = {f.name for f in dataclasses.fields(SetMeta)}
    parsed = SetMeta(**{k: v for k, v in meta.items() if k in known})
    if not parsed.classes or len(parsed.image_shape) != 3 or min(parsed.image_shape) < 1 or parsed.num_images < 1:
        raise FrepoError(
            f"{where}: metadata describes {parsed.num_images} images of shape {parsed.image_shape} in "
            f"{len(parsed.classes)} classes; a set needs at least one image, a C×H×W shape and one class"
        )
    data = (parsed.config or {}).get("data")  # the data settings exports, reports and evaluations read
    if data is not None and not isinstance(data, dict):
        raise FrepoError(f"{where}: metadata 'config' holds the data settings {data!r:.80}, not a JSON object")
    for name, least in (("ipc", 1), ("step", 0), ("val_size", 0)):  # copied into exports and reports
        value = getattr(parsed, name)
        if value is not None and value < least:
            raise FrepoError(f"{where}: metadata {name!r} is {value}; it must be at least {least}")
    return parsed


def _check_content(
    tensors: dict[str, torch.Tensor], meta: SetMeta, where: str, preprocessing: bool = True
) -> dict[str, torch.Tensor]:
    """Images, labels and (with `preprocessing`) preprocessing tensors as the metadata declares them, finite
    and in range. Returns the tensors as checked: a packed ZCA triangle also unpacked (`pre_whiten_upper`), so
    it is inflated once."""
    for key in ("images", "labels"):
        if key not in tensors:
            raise FrepoError(f"{where}: the tensor {key!r} is missing")
    images, labels, k = tensors["images"], tensors["labels"], len(meta.classes)
    shape = (meta.num_images, *meta.image_shape)
    if not images.is_floating_point() or tuple(images.shape) != shape:
        raise FrepoError(f"{where}: images are {images.dtype} {tuple(images.shape)}, the metadata says float {shape}")
    if not bool(torch.isfinite(images).all()):
        raise FrepoError(f"{where}: the images contain NaN or infinite values")
    if labels.ndim == 2:
        if tuple(labels.shape) != (meta.num_images, k) or not labels.is_floating_point():
            raise FrepoError(f"{where}: labels are {tuple(labels.shape)}, expected ({meta.num_images}, {k}) floats")
        if not bool(torch.isfinite(labels).all()):
            raise FrepoError(f"{where}: the labels contain NaN or infinite values")
    elif labels.ndim == 1 and len(labels) == meta.num_images and not labels.is_floating_point():
        if int(labels.min()) < 0 or int(labels.max()) >= k:
            raise FrepoError(
                f"{where}: class ids must lie in 0..{k - 1}, found {int(labels.min())}..{int(labels.max())}"
            )
    else:
        raise FrepoError(
            f"{where}: labels are {labels.dtype} {tuple(labels.shape)}; expected {meta.num_images} class ids "
            f"or ({meta.num_images}, {k}) learned labels"
        )
    if not preprocessing:
        return tensors
    return check_preprocessing_tensors(meta.preprocessing, tensors, tuple(meta.image_shape), where)


def check_preprocessing_tensors(
    params: dict, tensors: dict[str, torch.Tensor], image_shape: tuple[int, ...], where: str
) -> dict[str, torch.Tensor]:
    """The preprocessing tensors of a set file or an export (`pre_*`, as `Preprocessing.tensors` writes them)
    as `params` (`Preprocessing.params`) declares them for images of `image_shape` (C, H, W): present, finite,
    of their shapes, a positive std. Returns the tensors as checked: a packed ZCA triangle also unpacked
    (`pre_whiten_upper`), so it is inflated once."""
    if not isinstance(params, dict):
        raise FrepoError(f"{where}: the preprocessing's parameters are not a JSON object: {params!r:.60}")
    kind, reg = params.get("kind"), params.get("zca_reg", 0.0)
    if kind not in KINDS or not _is(reg, float) or not np.isfinite(reg) or reg < 0:
        raise FrepoError(f"{where}: preprocessing {params!r} is not one of {KINDS} with a zca_reg >= 0")
    c, d = image_shape[0], int(np.prod(image_shape))
    expected: dict[str, tuple[int, ...]] = {"pre_mean": (c,), "pre_std": (c,)}
    if kind == "zca" and params.get("form") == "low_rank":  # W = I + B diag(scale - 1) Bᵀ
        basis = tensors.get("pre_zca_basis")
        r = basis.shape[-1] if basis is not None and basis.ndim == 2 else 0
        expected.update(pre_zca_mean=(d,), pre_zca_basis=(d, r), pre_zca_scale=(r,))
        scale = tensors.get("pre_zca_scale")
        if scale is not None and scale.is_floating_point() and not bool((scale > 0).all()):
            raise FrepoError(f"{where}: the low-rank ZCA's scales must be positive")
    elif kind in ("zca", "zca_block"):
        d_matrix = d
        if kind == "zca_block":
            stride = params.get("stride")
            h, w = image_shape[1:]
            if not _is(stride, int) or stride < 1 or h % stride or w % stride:
                raise FrepoError(f"{where}: block ZCA stride {stride!r} does not divide the images {list(image_shape)}")
            d_matrix = d // stride**2
        if params.get("form") == PACKED:  # W's packed upper triangle (W⁻¹ derived on load)
            expected.update(pre_zca_mean=(d,))
            tensors = {**tensors, "pre_whiten_upper": unpack_upper(tensors, d_matrix)}  # checked below
            expected.update(pre_whiten_upper=(upper_size(d_matrix),))
        elif params.get("form") == "upper":  # W's upper triangle (W⁻¹ derived on load)
            expected.update(pre_zca_mean=(d,), pre_whiten_upper=(upper_size(d_matrix),))
        else:
            expected.update(pre_zca_mean=(d,), pre_whiten=(d_matrix, d_matrix), pre_unwhiten=(d_matrix, d_matrix))
    for name, want in expected.items():
        t = tensors.get(name)
        if t is None or tuple(t.shape) != want or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
            raise FrepoError(f"{where}: preprocessing tensor {name} is {got}; expected finite floats of shape {want}")
    if not bool((tensors["pre_std"] > 0).all()):
        raise FrepoError(f"{where}: the preprocessing's per-channel std must be positive")
    return tensors


def load_distilled(path: str | Path) -> DistilledSet:
    """Load and verify a distilled-set file; every problem is a FrepoError that says what is wrong."""
    from safetensors import safe_open

    check_path("path", path)
    path = Path(path)
    if path.is_dir():  # said "file not found" of a run directory that was there
        if (path / "export.json").is_file():  # pointed at a run's file that an export folder does not have
            raise FrepoError(
                f"{path} is a frepo export folder: frepo.load_export({str(path)!r}) reads it back "
                "(frepo.evaluate and frepo.export take it as it is)"
            )
        raise FrepoError(
            f"{path} is a folder; load_distilled reads a set's file (a run's is {path / 'distilled.safetensors'}; "
            "frepo.evaluate, show and export also take a run directory or an export folder)"
        )
    if not path.is_file():
        raise FrepoError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise FrepoError(f"cannot read {path}: not a safetensors file, or corrupt or truncated ({exc})") from exc
    if "frepo" not in header:
        raise FrepoError(
            f"{path} is a safetensors file without frepo metadata; to evaluate images from "
            "another tool, pass --dataset NAME"
        )
    try:
        meta = json.loads(header["frepo"])
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        raise FrepoError(f"{path}: the frepo metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise FrepoError(f"{path}: the frepo metadata is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise FrepoError(
            f"{path}: format version {meta.get('format_version')} is not supported "
            f"(this frepo reads version {FORMAT_VERSION})"
        )
    if meta.get("checksum") != _checksum(tensors, meta):
        raise FrepoError(f"{path}: checksum mismatch: the file was modified or damaged after it was written")
    # The checksum is no signature (anyone can recompute it): the content is checked for what it holds.
    parsed = check_meta(meta, str(path))
    pre = Preprocessing.from_tensors(meta["preprocessing"], _check_content(tensors, parsed, str(path)))
    return as_read(DistilledSet(tensors["images"], tensors["labels"], pre, meta))


def recorded_data_dir(ds: DistilledSet) -> str | None:
    """The --data-dir the set was distilled with, when that folder still exists: evaluating a set
    distilled from Tiny ImageNet under DIR reads DIR's test split without being told again."""
    data = ((ds.meta or {}).get("config") or {}).get("data") or {}
    folder = data.get("data_dir") if isinstance(data, dict) else None
    return folder if isinstance(folder, str) and Path(folder).expanduser().is_dir() else None
