"""The reference preprocessing as an invertible, serialisable transform.

Pixels in [0, 1] are standardised per channel; colour datasets are then ZCA-whitened over the
whole image: W = U diag(s^-1/2) U^T from the eigen-decomposition of cov + reg·trace(cov)/d·I.
Distilled images live in this space, so the transform travels with them (artifact.py).
Images inside frepo are float32 N×C×H×W; flattening is in C,H,W order (the reference flattens
H,W,C; a whitening matrix is equivariant to that permutation, so the space is the same).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import torch

from ..base.device import exact_matmuls, host_tensor, machine_key
from ..base.errors import FrepoError
from ..base.log import messages_shown, progress_bar, warn
from .cache import build_lock, release

KINDS = ("none", "standard", "zca", "zca_block")
# Full-image ZCA needs a D×D matrix: 12288 dims (64×64×3) is the largest the reference whitens whole.
# Larger images (ImageNette, 128×128) get its "checkerboard" block ZCA: the s×s interleaved sub-images
# (pixels (i + s·a, j + s·b) for each offset (i, j)) share one whitening matrix of ≤ 12288 dims.
MAX_ZCA_DIMS = 64 * 64 * 3
# A dense W of up to this many dims (CIFAR's 3072) holds float16 values: its packed triangle is ≤ 8.2 MB.
# A larger one (64×64: a 151 MB float16 triangle) holds multiples of a step chosen for a relative error of
# QUANTISED_TOLERANCE in operator norm (`quantisation_step`), whose integers pack to far fewer bytes.
FLOAT16_MAX_DIMS = 4096
QUANTISED_TOLERANCE = 1e-3


@dataclass
class Preprocessing:
    kind: str  # one of KINDS
    mean: torch.Tensor  # (C,) per-channel mean of pixels in [0, 1]
    std: torch.Tensor  # (C,)
    zca_reg: float = 0.0
    zca_mean: torch.Tensor | None = None  # (D,) mean of standardised, flattened images
    whiten: torch.Tensor | None = None  # (D, D), symmetric; zca_block: (D/s², D/s²), shared by the sub-images
    unwhiten: torch.Tensor | None = None  # its inverse (None: derived from `whiten` on first use)
    stride: int = 1  # zca_block: s, the interleave of the sub-images (2 for 128×128 images)
    # The low-rank form of a ZCA fitted on fewer images than dimensions (exact, and what its file stores):
    # W = I + B diag(scale - 1) Bᵀ and W⁻¹ = I + B diag(1/scale - 1) Bᵀ, B orthonormal; whiten/unwhiten None.
    basis: torch.Tensor | None = None  # (D, r), r < D
    scale: torch.Tensor | None = None  # (r,) the whitening's scale of each basis direction
    # A dense W above FLOAT16_MAX_DIMS holds multiples of this power of two (`as_stored`); None: float16 values.
    whiten_step: float | None = None

    # ---- apply / invert -------------------------------------------------------------------
    def __call__(
        self, images: np.ndarray | torch.Tensor, batch: int = 4096, channels_last: bool = False
    ) -> torch.Tensor:
        """uint8 N×H×W×C (raw) -> float32 N×C×H×W in the preprocessed space, on the images' device (a GPU batch
        came back in host memory) and in the channels-last memory layout if asked, so a channels-last consumer
        needs no second copy."""
        if isinstance(images, np.ndarray):
            images = host_tensor(np.ascontiguousarray(images))
        if images.ndim != 4 or images.shape[-1] != len(self.mean):
            raise FrepoError(
                f"expected a batch of images N×H×W×C with C = {len(self.mean)} (channels last), got shape "
                f"{tuple(images.shape)}"
            )
        if images.dtype != torch.uint8:  # float [0, 1] images were divided by 255 again: chance accuracy
            raise FrepoError(
                f"the preprocessing takes uint8 images (0..255), got {images.dtype}; for float images use the "
                "set's transform(images, value_range=(0, 1) or (0, 255))"
            )
        n, h, w, c = images.shape
        # Filled chunk by chunk: peak memory is the output plus one chunk, for 50k-image splits too.
        out = torch.empty((n, c, h, w), dtype=torch.float32, device=images.device)
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        for start in range(0, n, batch):
            x = images[start : start + batch].permute(0, 3, 1, 2).float().div_(255.0)
            out[start : start + batch] = self.from_unit(x)
        return out

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """float N×C×H×W with pixels in [0, 1] -> preprocessed, on x's device (its tensors are moved there);
        float32, or float64 for float64 input (`frepo.io.ddranking.re_expressed`)."""
        c = x.shape[1]
        if self.kind == "none":
            return _float(x)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        zca_mean, whiten = self._on(x.device, self.zca_mean, self.whiten)
        x = (x - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)
        if self.kind == "zca":
            shape = x.shape
            x = self._whitened(x.reshape(len(x), -1) - zca_mean, inverse=False).reshape(shape)
        elif self.kind == "zca_block":
            x = _per_block((x.reshape(len(x), -1) - zca_mean).reshape(x.shape), whiten, self.stride)
        return _float(x)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `from_unit`: preprocessed N×C×H×W -> pixels (not clipped to [0, 1]), on x's device;
        float32, or float64 for float64 input."""
        x = _float(x.detach())
        c = x.shape[1]
        if self.kind == "none":
            return x
        unwhiten = self.inverse() if self.kind == "zca_block" else None
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        zca_mean, unwhiten = self._on(x.device, self.zca_mean, unwhiten)
        if self.kind == "zca":
            shape = x.shape
            x = (self._whitened(x.reshape(len(x), -1), inverse=True) + zca_mean).reshape(shape)
        elif self.kind == "zca_block":
            x = (_per_block(x, unwhiten, self.stride).reshape(len(x), -1) + zca_mean).reshape(x.shape)
        return x * std.view(1, c, 1, 1) + mean.view(1, c, 1, 1)

    def _whitened(self, flat: torch.Tensor, inverse: bool) -> torch.Tensor:
        """flat (N×D) times W (or W⁻¹), in the dense or the low-rank form, on flat's device."""
        if self.basis is None:
            matrix = self.inverse() if inverse else self.whiten
            assert matrix is not None  # the dense form (basis None) of a ZCA holds W
            return flat @ matrix.to(flat.device).to(flat.dtype)
        assert self.scale is not None  # the low-rank form holds its basis and scale together
        basis, scale = (t.to(flat.device).to(flat.dtype) for t in (self.basis, self.scale))
        factor = (scale.reciprocal() if inverse else scale) - 1
        return flat + ((flat @ basis) * factor) @ basis.T

    def same_as(self, other: Preprocessing) -> bool:
        """The same transform: equal settings and equal held tensors (a derived W⁻¹ is not compared)."""
        settings = ("kind", "zca_reg", "stride", "whiten_step")
        if any(getattr(self, name) != getattr(other, name) for name in settings):
            return False
        for name in ("mean", "std", "zca_mean", "whiten", "basis", "scale"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if (mine is None) != (theirs is None) or (mine is not None and not torch.equal(mine, theirs)):
                return False
        return True

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, W⁻¹) as dense D×D matrices, whichever form holds them (zca only)."""
        if self.basis is None:
            return self.whiten, self.inverse()
        eye = torch.eye(len(self.basis))
        return self._whitened(eye, inverse=False), self._whitened(eye, inverse=True)

    def inverse(self) -> torch.Tensor:
        """The dense W⁻¹: held, or derived from W (symmetric positive definite) on first use, as for a file
        that stores W alone (`as_stored`)."""
        if self.unwhiten is None:
            self.unwhiten = inverse_of(self.whiten)
        return self.unwhiten

    @staticmethod
    def _on(device: torch.device, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
        """The preprocessing's (host) tensors where the images are: the same tensors on the host."""
        return [t if t is None else t.to(device) for t in tensors]

    # ---- serialisation ----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """What a file stores. A dense W (a ZCA fitted on at least as many images as dimensions, and block
        ZCA) as its upper triangle, W⁻¹ derived on load: as integer multiples of `whiten_step` (int32, with
        the step) when W is such multiples, as fits above FLOAT16_MAX_DIMS make it; in float16 when W holds
        float16 values, as smaller fits make it (`as_stored`); in float32 otherwise (an earlier file's exact
        W, re-saved). So a file transforms as the set's run did, bit for bit; then packed without loss
        (`pack_floats`). CIFAR-10: 8.2 MB, where the float16 triangle is 9.4 MB and the two float32 matrices
        of old 75.5 MB."""
        out = {"pre_mean": self.mean.float(), "pre_std": self.std.float()}
        if self.basis is not None:
            # The low-rank form holds its mean, basis and scale together (fit_preprocessing, from_tensors).
            assert self.zca_mean is not None and self.scale is not None
            out.update(
                pre_zca_mean=self.zca_mean.float(), pre_zca_basis=self.basis.float(), pre_zca_scale=self.scale.float()
            )
        elif self.kind in ("zca", "zca_block"):
            # A dense ZCA holds its mean and W (fit_preprocessing, from_tensors; recipes.py).
            assert self.zca_mean is not None and self.whiten is not None
            rows, cols = torch.triu_indices(len(self.whiten), len(self.whiten))
            upper = self.whiten[rows, cols].float()
            step = self.whiten_step
            multiples = None if step is None else (upper.double() / step).round()
            if multiples is not None and torch.equal(multiples * step, upper.double()):
                upper = zigzag(multiples.long())  # exact: W holds multiples of the step
                out["pre_whiten_step"] = torch.tensor([step], dtype=torch.float64)
            elif torch.equal(upper.half().float(), upper):
                upper = upper.half()  # exact: W holds float16 values
            name = f"pre_whiten_upper_{str(upper.dtype).removeprefix('torch.')}_zlib"
            out.update({"pre_zca_mean": self.zca_mean.float(), name: pack_floats(upper)})
        return {k: v.contiguous() for k, v in out.items()}

    def params(self) -> dict:
        if self.kind == "zca_block":
            return {"kind": self.kind, "zca_reg": self.zca_reg, "stride": self.stride, "form": PACKED}
        if self.basis is not None:
            return {"kind": self.kind, "zca_reg": self.zca_reg, "form": "low_rank"}
        if self.kind == "zca":
            return {"kind": self.kind, "zca_reg": self.zca_reg, "form": PACKED}
        return {"kind": self.kind, "zca_reg": self.zca_reg}

    @classmethod
    def from_tensors(cls, params: dict, tensors: dict[str, torch.Tensor]) -> Preprocessing:
        kind = params.get("kind")
        if kind not in KINDS:
            raise FrepoError(f"unknown preprocessing kind {kind!r}")
        zca_like = kind in ("zca", "zca_block")
        stride = params.get("stride", 1)
        if kind == "zca_block" and (not isinstance(stride, int) or isinstance(stride, bool) or stride < 1):
            raise FrepoError(f"block ZCA needs an integer stride >= 1, got {stride!r}")
        try:
            if kind == "zca" and params.get("form") == "low_rank":
                basis, scale, mean = (tensors[f"pre_zca_{k}"] for k in ("basis", "scale", "mean"))
                reg = float(params.get("zca_reg", 0.0))
                return cls(kind, tensors["pre_mean"], tensors["pre_std"], reg, mean, basis=basis, scale=scale)
            if zca_like and params.get("form") == PACKED:  # W's packed upper triangle, W⁻¹ derived when needed
                d = len(tensors["pre_zca_mean"]) // stride**2
                # Unpacked already where a file's loader checked it (`io.artifact`): inflated once.
                upper = tensors["pre_whiten_upper"] if "pre_whiten_upper" in tensors else unpack_upper(tensors, d)
                zca = {"zca_mean": tensors["pre_zca_mean"], "whiten": symmetric_from_upper(upper)}
                if "pre_whiten_upper_int32_zlib" in tensors:
                    zca["whiten_step"] = stored_step(tensors)
            elif zca_like and params.get("form") == "upper":  # files of 2026-12-04: the triangle as it is
                zca = {"zca_mean": tensors["pre_zca_mean"], "whiten": symmetric_from_upper(tensors["pre_whiten_upper"])}
            else:  # files before the triangle: both matrices, float32
                zca = {k: tensors[f"pre_{k}"] for k in ("zca_mean", "whiten", "unwhiten")} if zca_like else {}
            return cls(
                kind, tensors["pre_mean"], tensors["pre_std"], float(params.get("zca_reg", 0.0)), **zca, stride=stride
            )
        except KeyError as exc:
            raise FrepoError(f"preprocessing tensor {exc} is missing") from exc


PACKED = "upper_zlib"  # the `form` of a dense W stored as its packed upper triangle


def pack_floats(values: torch.Tensor) -> torch.Tensor:
    """1-D float16/float32 (or int32) values -> uint8, without loss: the bytes grouped by significance (every
    value's first little-endian byte, its lowest, then every second byte...: the sign and exponent bytes of a
    smooth matrix repeat, as the high bytes of small integers do, so zlib finds them) and compressed with zlib
    (stdlib). CIFAR-10's float16 triangle: 9.44 -> 8.19 MB."""
    raw = values.contiguous().view(torch.uint8).numpy().reshape(len(values), values.element_size())
    return torch.frombuffer(bytearray(zlib.compress(raw.T.tobytes(), 6)), dtype=torch.uint8)


def unpack_floats(packed: torch.Tensor, dtype: torch.dtype, count: int) -> torch.Tensor:
    """Inverse of `pack_floats` for `count` values of `dtype`; a damaged or wrong-sized stream is a clear error
    (and never inflates past the expected size)."""
    size = count * torch.empty((), dtype=dtype).element_size()
    stream = zlib.decompressobj()
    try:
        raw = stream.decompress(packed.contiguous().numpy().tobytes(), size + 1)
    except zlib.error as exc:
        raise FrepoError(f"the packed ZCA matrix is corrupt ({exc})") from exc
    if len(raw) != size or not stream.eof:
        raise FrepoError(f"the packed ZCA matrix holds the wrong number of values (expected {count})")
    grouped = np.frombuffer(raw, np.uint8).reshape(-1, count).T.copy()
    return torch.from_numpy(grouped.reshape(-1)).view(dtype)


def unpack_upper(tensors: dict[str, torch.Tensor], d: int) -> torch.Tensor:
    """The upper triangle of a d×d W from a file's packed tensor: float16 or float32 values, or int32
    multiples of the file's `pre_whiten_step` (returned as float32, exactly: the step is a power of two)."""
    for dtype in (torch.int32, torch.float16, torch.float32):
        packed = tensors.get(f"pre_whiten_upper_{str(dtype).removeprefix('torch.')}_zlib")
        if packed is not None:
            if packed.dtype != torch.uint8 or packed.ndim != 1:
                raise FrepoError(f"the packed ZCA matrix is {packed.dtype} {tuple(packed.shape)}, not 1-D uint8")
            values = unpack_floats(packed, dtype, upper_size(d))
            return (unzigzag(values).double() * stored_step(tensors)).float() if dtype == torch.int32 else values
    raise FrepoError("preprocessing tensor 'pre_whiten_upper_float16_zlib' is missing")


def zigzag(values: torch.Tensor) -> torch.Tensor:
    """Integers |k| < 2³⁰ -> int32 2|k| (k ≥ 0) or 2|k| - 1 (k < 0): the sign in the lowest bit, so a small
    negative integer's high bytes are zeros, as a small positive one's, and pack to nothing (`pack_floats`)."""
    if values.numel() and int(values.abs().max()) >= 2**30:
        raise FrepoError("the quantised ZCA matrix's integers exceed 2^30; its step is too small")
    values = values.long()
    return torch.where(values >= 0, 2 * values, -2 * values - 1).int()


def unzigzag(values: torch.Tensor) -> torch.Tensor:
    """Inverse of `zigzag` (int32 in, int64 out)."""
    values = values.long()
    return torch.where(values % 2 == 0, values // 2, -(values + 1) // 2)


def stored_step(tensors: dict[str, torch.Tensor]) -> float:
    """The step of a quantised W's integers: a file's `pre_whiten_step`, checked (one positive power of two)."""
    step = tensors.get("pre_whiten_step")
    if step is None or tuple(step.shape) != (1,) or step.dtype != torch.float64:
        got = "missing" if step is None else f"{step.dtype} {tuple(step.shape)}"
        raise FrepoError(f"preprocessing tensor pre_whiten_step is {got}; expected one float64 value")
    value = float(step[0])
    if not (np.isfinite(value) and value > 0 and np.frexp(value)[0] == 0.5):
        raise FrepoError(f"the quantised ZCA matrix's step must be a positive power of two, got {value}")
    return value


def upper_size(d: int) -> int:
    """Entries of a d×d matrix's upper triangle, diagonal included."""
    return d * (d + 1) // 2


def symmetric_from_upper(upper: torch.Tensor) -> torch.Tensor:
    """The symmetric float32 d×d matrix whose upper triangle (row by row, `torch.triu_indices` order) is `upper`."""
    d = int(round(((8 * len(upper) + 1) ** 0.5 - 1) / 2))
    if upper_size(d) != len(upper):
        raise FrepoError(f"{len(upper)} values are not the upper triangle of a square matrix")
    rows, cols = torch.triu_indices(d, d)
    matrix = torch.zeros(d, d)
    matrix[rows, cols] = upper.float()
    matrix[cols, rows] = upper.float()
    return matrix


def _per_block(x: torch.Tensor, matrix: torch.Tensor, stride: int) -> torch.Tensor:
    """A new N×C×H×W tensor: each s×s-interleaved sub-image of `x` (flattened C,H/s,W/s) times `matrix`."""
    out = torch.empty_like(x)
    n = len(x)
    for i in range(stride):
        for j in range(stride):
            block = x[:, :, i::stride, j::stride]
            out[:, :, i::stride, j::stride] = (block.reshape(n, -1) @ matrix.to(x.dtype)).reshape(block.shape)
    return out


def block_stride(image_shape: tuple[int, int, int]) -> int:
    """The smallest interleave s dividing H and W whose sub-images have at most MAX_ZCA_DIMS dims."""
    c, h, w = image_shape
    for s in range(1, min(h, w) + 1):
        if h % s == 0 and w % s == 0 and c * (h // s) * (w // s) <= MAX_ZCA_DIMS:
            return s
    raise FrepoError(f"images of shape {image_shape} cannot be split into sub-images for block ZCA")


def resolve_kind(requested: str, image_shape: tuple[int, int, int]) -> str:
    """'auto' follows the reference: standardise greyscale data, ZCA-whiten colour data, and whiten
    images above 64×64×3 (ImageNette's 128×128) by block ZCA. image_shape: (C, H, W)."""
    if requested == "auto":
        if image_shape[0] == 1:
            return "standard"
        return "zca" if int(np.prod(image_shape)) <= MAX_ZCA_DIMS else "zca_block"
    if requested not in KINDS:
        raise FrepoError(f"preprocess must be auto or one of {KINDS}, got {requested!r}")
    return requested


def channel_stats(images: Images) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std, float32 (C,), of uint8 N×H×W×C images as pixels in [0, 1]:
    from each channel's exact histogram of the 256 values (integer counts, in chunks of rows), so memory
    is one chunk's, not float copies of it (ImageNet: float64 chunks took 6 GB with the allocator's slack)
    and the sums are exact (the float32 results equal the earlier float64 sums' on CIFAR-10, MNIST and
    Fashion-MNIST, bit for bit)."""
    n, h, w, c = images.shape
    counts = np.zeros((c, 256), dtype=np.int64)
    for start in range(0, n, 4096):  # chunks of uint8 rows: a memory-mapped split is never read whole
        block = np.ascontiguousarray(images[start : start + 4096]).reshape(-1, c)
        for channel in range(c):
            counts[channel] += np.bincount(block[:, channel], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    count = n * h * w
    mean = counts @ values / count
    std = np.sqrt(np.maximum(counts @ (values * values) / count - mean * mean, 1e-12))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def mean_covariance(
    images: Images,
    standardise: Preprocessing,
    ddof: int = 0,
    chunk: int = 4096,
    stride: int = 1,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and covariance (D×D), float64, of uint8 N×H×W×C images after `standardise`, flattened in
    C,H,W order; the covariance divides by N - ddof. In chunks (float32 products, float64 sums), so the
    float dataset is never materialised. The one covariance routine of frepo (its own ZCA and other
    tools' recipes, `frepo.data.recipes`). With stride s > 1: the covariance (D/s²×D/s²) of the s×s
    interleaved sub-images, centred by the full-image mean, averaged over the s² sub-images (block ZCA).
    The products and sums run on `device` (default: the host), a chunk at a time; the results stay there."""
    n = len(images)
    d = int(np.prod(images.shape[1:]))
    starts = range(0, n, chunk)
    with progress_bar(
        total=2 * len(starts), desc="fit preprocessing", unit="chunk", leave=False, disable=not messages_shown()
    ) as bar:
        total = torch.zeros(d, dtype=torch.float64, device=device)
        for start in starts:
            total += standardise(images[start : start + chunk]).reshape(-1, d).to(device).double().sum(0)
            bar.update()
        mean = total / n
        cov = torch.zeros(d // stride**2, d // stride**2, dtype=torch.float64, device=device)
        for start in starts:
            flat = standardise(images[start : start + chunk]).reshape(-1, d).to(device) - mean.float()
            # exact float32 products whatever TF32 the process allows: the covariance is cached and reused
            with exact_matmuls(cov.device):
                if stride == 1:
                    cov += (flat.T @ flat).double()
                else:
                    x = flat.reshape(len(flat), images.shape[-1], *images.shape[1:3])  # N×C×H×W
                    for i in range(stride):
                        for j in range(stride):
                            block = x[:, :, i::stride, j::stride].reshape(len(x), -1)
                            cov += (block.T @ block).double()
            bar.update()
    return mean, cov / ((n - ddof) * stride**2)


def _low_rank(images: Images, kind: str) -> bool:
    """Whether a ZCA of `kind` on `images` (N×H×W×C) is fitted in the low-rank form: one block (no strides) and
    fewer images than dimensions."""
    _, h, w, c = images.shape
    return (block_stride((c, h, w)) if kind == "zca_block" else 1) == 1 and len(images) < c * h * w


def fit_preprocessing(
    images: Images, kind: str, zca_reg: float = 0.1, device: torch.device | None = None
) -> Preprocessing:
    """Fit on uint8 N×H×W×C training images (never on test images). A ZCA's products and its
    eigendecomposition run on `device` (a run's GPU; default the host); the result is on the host."""
    c = images.shape[-1]
    if kind == "none":
        return Preprocessing(kind, torch.zeros(c), torch.ones(c))
    mean, std = channel_stats(images)
    if kind == "standard":
        return Preprocessing(kind, mean, std)
    _, h, w, _ = images.shape
    stride = block_stride((c, h, w)) if kind == "zca_block" else 1
    standardise = Preprocessing("standard", mean, std)
    if _low_rank(images, kind):
        zca_mean, basis, scale = (t.cpu() for t in gram_whitening(images, standardise, zca_reg, device=device))
        return Preprocessing(kind, mean, std, float(zca_reg), zca_mean, basis=basis, scale=scale)
    zca_mean, cov = mean_covariance(images, standardise, stride=stride, device=device)
    exact, _, gain = whitening(cov, len(images), zca_reg)
    step = quantisation_step(gain, len(cov)) if len(cov) > FLOAT16_MAX_DIMS else None
    whiten, unwhiten = as_stored(exact.cpu(), step)
    zca_mean = zca_mean.float().cpu()
    return Preprocessing(kind, mean, std, float(zca_reg), zca_mean, whiten, unwhiten, stride, whiten_step=step)


def whitening_matrices(cov: torch.Tensor, n: int, zca_reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, W^-1) for cov (d×d, float64): W = U diag((s + reg)^-1/2) U^T, reg = zca_reg·trace/d.

    As in the reference, when there are fewer images than dimensions the eigenvalues beyond the
    n-th (which are pure regulariser) are left unscaled.
    """
    return whitening(cov, n, zca_reg)[:2]


def whitening(cov: torch.Tensor, n: int, zca_reg: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """`whitening_matrices`, and W's largest gain ‖W‖₂ (its spectral norm: the smallest eigenvalue's)."""
    d = cov.shape[0]
    reg = zca_reg * torch.trace(cov) / d
    evals, evecs = torch.linalg.eigh(cov + reg * torch.eye(d, dtype=cov.dtype, device=cov.device))
    evals, evecs = evals.flip(0), evecs.flip(1)  # descending, as an SVD returns them
    inv_sqrt, sqrt = evals.rsqrt(), evals.sqrt()
    if n < d:
        inv_sqrt[n:] = 1.0
        sqrt[n:] = 1.0
    whiten = (evecs * inv_sqrt) @ evecs.T
    unwhiten = (evecs * sqrt) @ evecs.T
    return whiten.float(), unwhiten.float(), float(inv_sqrt.max())


def quantisation_step(gain: float, d: int, tolerance: float = QUANTISED_TOLERANCE) -> float:
    """The step q whose multiples a d×d W of spectral norm `gain` is rounded to, for ‖W_q − W‖₂ ≈ tolerance·gain.

    Rounding errs by at most q/2 per entry, spread evenly (variance q²/12) and independent across entries; a
    symmetric d×d matrix of such errors has spectral norm ≈ 2·√d·q/√12 = q·√(d/3) (the semicircle law:
    measured 1.00e-3 for q = 1e-4 on CIFAR-10's W, d = 3072, where q·√(d/3)/‖W‖₂ = 1.00e-3). q is rounded
    down to a power of two, so W's values k·q are exact in float32 (|k| < 2²⁴) and the error stays ≤ the
    tolerance."""
    return float(2.0 ** np.floor(np.log2(tolerance * gain * np.sqrt(3.0 / d))))


def _float(x: torch.Tensor) -> torch.Tensor:
    """float64 stays float64 (the exact paths); everything else becomes float32."""
    return x if x.dtype == torch.float64 else x.float()


def as_stored(whiten: torch.Tensor, step: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, W⁻¹) float32 for a dense symmetric positive-definite whitening W, with W rounded to float16's
    values, or to multiples of `step` (what a file stores: its upper triangle in float16, or as int32
    multiples, `Preprocessing.tensors`), and W⁻¹ the inverse of that rounded W, as a file's loader derives
    it: a run, its cache and its files transform alike, bit for bit. Both roundings (float16: relative 2⁻¹²
    per entry; the step: `quantisation_step`) are measured in docs/datasets.md."""
    rounded = whiten.half().float() if step is None else ((whiten.double() / step).round() * step).float()
    return rounded, inverse_of(rounded)


def inverse_of(whiten: torch.Tensor) -> torch.Tensor:
    """W⁻¹ (float32) of a symmetric positive-definite W as it is, by a float64 Cholesky inverse."""
    try:
        factor = torch.linalg.cholesky(whiten.double())
    except RuntimeError as exc:  # torch.linalg.LinAlgError: not positive definite (a rounding broke it)
        raise FrepoError(f"the whitening matrix is not positive definite ({exc})") from exc
    return torch.cholesky_inverse(factor).float()


def gram_whitening(
    images: Images,
    standardise: Preprocessing,
    zca_reg: float,
    chunk: int = 4096,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (D,), basis B (D×r), scale (r,)), float32, the low-rank form of the whitening W = I +
    B diag(scale - 1) Bᵀ for fewer images than dimensions (N < D), from the N×N Gram matrix instead of the
    D×D covariance: an N×N eigendecomposition instead of a D×D one (400 Tiny ImageNet images: 400²
    instead of 12 288²), no D×D matrix at all, and a file that holds D×r numbers instead of 2·D².

    With X the centred, standardised images (N×D), cov = XᵀX/N and G = XXᵀ/N share their non-zero
    eigenvalues λ; the covariance's eigenvectors are U = XᵀV/√(Nλ) for G's eigenvectors V. W scales those
    r ≤ N-1 directions by (λ + reg)^-1/2 (reg = zca_reg·trace/D, trace = Σλ) and leaves every other
    direction unscaled — what `whitening_matrices` does for N < D, except in one direction: the dense fit
    also scales the N-th eigenvector, which lies in the covariance's null space, where the eigensolver
    picks an arbitrary unit vector among D - r equal eigenvalues; here it is left unscaled like the rest.
    Both whiten the fitting images identically (they have no component in that space)."""
    n = len(images)
    d = int(np.prod(images.shape[1:]))
    starts = range(0, n, chunk)
    # Progress over the chunks read and standardised, then one step each for the Gram matrix and its
    # eigendecomposition (single calls: they cannot report inside).
    with progress_bar(
        total=len(starts) + 2, desc="fit preprocessing", unit="step", leave=False, disable=not messages_shown()
    ) as bar:
        parts = []
        for start in starts:
            parts.append(standardise(images[start : start + chunk]).reshape(-1, d))
            bar.update()
        x = torch.cat(parts).to(device).double()  # on `device` (default: the host), as every product below
        mean = x.mean(0)
        x -= mean
        gram = x @ x.T / n
        bar.update()
        lam, v = torch.linalg.eigh(gram)
        bar.update()
    reg = zca_reg * lam.clamp_min(0).sum() / d
    keep = lam > lam.max() * 1e-10  # the non-zero spectrum (rank ≤ N-1 after centring)
    lam, v = lam[keep], v[:, keep]
    basis = (x.T @ v) / (n * lam).sqrt()  # D×r, orthonormal
    return mean.float(), basis.float(), (lam + reg).rsqrt().float()


def rows_of(images: np.ndarray, idx: np.ndarray, source_id: str | None) -> Images:
    """The rows `idx` of a split to fit a preprocessing on: a memory-mapped split (a cached dataset, `source_id`
    set) by its rows, read in chunks and never copied whole (ImageNet: 15.7 GB of uint8); an in-memory one
    indexed. Every fit of a dataset takes them so, so its cache key is one."""
    return Rows(images, idx, source_id) if source_id else images[idx]


class Rows:
    """`images[idx]` (uint8 N×H×W×C rows) without copying them: slices gather their rows on access, so the
    statistics of a memory-mapped split are computed chunk by chunk. `source_id` names the source files of
    a cached dataset, so its fingerprint need not read every image."""

    def __init__(self, images: np.ndarray, idx: np.ndarray, source_id: str | None = None):
        self.images, self.idx, self.source_id = images, np.asarray(idx, dtype=np.int64), source_id
        self.shape = (len(self.idx), *images.shape[1:])

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, rows: slice) -> np.ndarray:
        chunk = self.images[self.idx[rows]]  # a copy (fancy indexing)
        release(self.images)  # a pass over a memory-mapped split keeps O(chunk) of it resident
        return chunk


# Uint8 N×H×W×C training images: in memory, or rows of a memory-mapped split read in chunks (Rows).
Images: TypeAlias = np.ndarray | Rows

# The cache's format: 2 since dense whitenings are rounded to float16 values (`as_stored`), 3 since those
# above FLOAT16_MAX_DIMS are rounded to multiples of a step; entries of an older format are fitted anew.
CACHE_FORMAT = 3


def fingerprint(images: Images, tag: str, zca_reg: float, fitted_by: str = "") -> str:
    digest = hashlib.sha256(f"{images.shape}|{tag}|{zca_reg}|format{CACHE_FORMAT}{fitted_by}".encode())
    if isinstance(images, Rows) and images.source_id:
        digest.update(f"{images.source_id}|".encode() + images.idx.tobytes())
    else:
        for start in range(0, len(images), 8192):
            digest.update(np.ascontiguousarray(images[start : start + 8192]).tobytes())
    return digest.hexdigest()[:20]


def cached(
    tag: str,
    images: Images,
    zca_reg: float,
    cache_dir: str | Path | None,
    build: Callable[[], Preprocessing],
    fitted_by: str = "",
) -> Preprocessing:
    """`build()` (a ZCA fit on `images`), cached on disk under `tag` and a fingerprint of the fitting
    images (and `fitted_by`, where the fit's rounding depends on what fitted it): the one preprocessing cache
    of frepo. One process fits an entry at a time (the ranks of a torchrun launch, jobs of a sweep: each made
    its own pass over the split, ImageNet's 15.7 GB): the others wait, then read it. A corrupt entry is
    recomputed, never trusted; a read-only or full cache only costs a recomputation next time."""
    if cache_dir is None:
        return build()
    from safetensors import safe_open

    from ..base.atomic import atomic_save_safetensors

    path = Path(cache_dir) / "preprocessing" / f"{tag}-{fingerprint(images, tag, zca_reg, fitted_by)}.safetensors"

    def read() -> Preprocessing | None:  # entries are written whole (renamed into place): read without the lock
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                params = json.loads((fh.metadata() or {}).get("params", "null"))
                params = params or {"kind": "zca", "zca_reg": zca_reg}
                return Preprocessing.from_tensors(params, {k: fh.get_tensor(k) for k in fh.keys()})
        except Exception:
            with contextlib.suppress(OSError):  # a read-only cache: recomputed, as its docstring says
                path.unlink(missing_ok=True)
            return None

    found = read()
    if found is not None:  # the common case takes no lock (nor writes a lock file into a read-only cache)
        return found
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(build_lock(path))
        except OSError:  # a read-only cache folder: fitted unlocked, as it is not saved either
            pass
        found = read()  # fitted by the process this one waited for
        if found is not None:
            return found
        pre = build()
        try:
            atomic_save_safetensors(pre.tensors(), path, {"params": json.dumps(pre.params())})
        except (OSError, FrepoError) as exc:  # a dataset folder shared read-only: a fit each run, said
            warn(f"the fitted {tag} is not kept in {path.parent} ({exc}); it is fitted again next time")
        return pre


def cached_preprocessing(
    images: Images, kind: str, zca_reg: float, cache_dir: Path | None, device: torch.device | None = None
) -> Preprocessing:
    """`fit_preprocessing`, with ZCA fits cached (the standardisation is cheaper to recompute than to read). A
    dense fit on `device` is cached like a host fit, under one entry: both are rounded as stored (`as_stored`),
    which hides most of the float rounding of devices and thread counts, not all (an entry whose exact value
    lies near a rounding boundary may round the other way: of millions, some will), so the first fit is kept
    and every later run reads the same matrices, whichever device fits first. The low-rank form (fewer images
    than dimensions) is stored unrounded, so its entry is the fitting machine's (`machine_key`): one filled
    elsewhere gave the same command other preprocessing."""
    if kind not in ("zca", "zca_block"):
        return fit_preprocessing(images, kind, zca_reg)
    machine = machine_key(device if device is not None else torch.device("cpu"))
    fitted_by = f"|{json.dumps(machine, sort_keys=True)}" if _low_rank(images, kind) else ""

    def build() -> Preprocessing:
        return fit_preprocessing(images, kind, zca_reg, device)

    return cached(kind, images, zca_reg, cache_dir, build, fitted_by)
