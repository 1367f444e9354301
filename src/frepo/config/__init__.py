"""Typed configuration: one dataclass per concern, validated, serialisable to plain JSON.

Every default is the reference (official FRePo code, `yongchaoz/FRePo` at 43e028a) unless its help
says otherwise. Per-dataset settings (flip, steps) live in `presets.py`. The CLI builds its flags
and help from these same fields (`cli.py`), so there is one definition of every option.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base.errors import FrepoError
from ..base.fields import CommaList, check_fields, check_finite, comma_items, nested, opt

NORMS = ("batch", "instance", "none")
PREPROCESS_KINDS = ("auto", "standard", "zca", "zca_block", "none")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
COMPILE_MODES = ("auto", "off", "on", "cudagraphs", "graph")
STREAM_MODES = ("auto", "on", "off")
POOL_MODES = ("replicated", "per-rank")
STREAM_AUTO_BYTES = 2 * 1024**3


# --data-dir of every command that loads a dataset (frepo.data.registry: where each source is looked for).
DATA_DIR_HELP = (
    "folder the datasets are downloaded to and read from (default: $FREPO_CACHE or ~/.cache/frepo; the decoded "
    "caches of the large sets always go under $FREPO_CACHE or ~/.cache/frepo); $FREPO_DATA_DIR/<name>.npz, where "
    "it exists, is read first, then <data-dir>/<name>.npz"
)


@dataclass
class DataConfig:
    dataset: str = opt(
        "digits",
        "registered name (digits, mnist, fashion_mnist, cifar10, svhn; cifar100, cifar100_coarse, tiny_imagenet, "
        "imagenet64, imagenet32, cub200, imagenette, imagewoof read from their distributed layouts under "
        "--data-dir), a .npz file or an ImageFolder directory with train/ and test/",
    )
    data_dir: str | None = opt(None, DATA_DIR_HELP)
    download: bool = opt(True, "download a missing dataset (torchvision's downloader, or the layout's public archive)")
    preprocess: str = opt(
        "auto",
        "auto (standardise, plus ZCA for colour images: whole-image up to 64×64, the reference's checkerboard "
        "block ZCA above), standard, zca, zca_block or none",
        choices=PREPROCESS_KINDS,
    )
    zca_reg: float = opt(0.1, "ZCA regulariser: zca_reg * trace(cov) / d is added to the covariance")
    val_size: int | None = opt(
        None,
        "training images held out for validation (default: 5000 for "
        "datasets of 50k images or more, else 10%); never distilled from",
    )
    classes: CommaList | None = opt(
        None,
        "distil from these classes only, comma-separated class ids (a continual-learning task); the labels "
        "still span every class, and the preprocessing is fitted on the whole training split as the reference "
        "does (default: every class)",
        listed=True,
    )
    train_chunk: int | None = opt(
        None,
        "distil from the train_chunk-th block of train_chunk_size training images only, in the split's order "
        "(the membership-inference setting: those images are the members) (default: the whole split)",
    )
    train_chunk_size: int = opt(10000, "training images per chunk (with --train-chunk)")
    stream: str = opt(
        "auto",
        "gather and preprocess each real batch from the uint8 images (on) instead of preprocessing the whole "
        "split into memory first (off); auto streams when the float32 split would exceed 2 GiB",
        choices=STREAM_MODES,
    )
    mirror_invariant: bool | None = opt(
        None,
        "whether a horizontal flip keeps an image's class: off, the frepo protocol's evaluations never flip the "
        "set's images and the flip trick is off by default (default: the dataset's: off for digits, MNIST, "
        "Fashion-MNIST and SVHN, on for the others and for a .npz or image folder of your own; recorded in the "
        "set; the dsa protocol keeps its own strategy: --dsa-strategy without flip)",
    )

    def validate(self) -> None:
        check_fields(self)
        check_finite("zca_reg", self.zca_reg, low=0.0)
        if self.val_size is not None and self.val_size < 0:
            raise FrepoError(f"val_size must be >= 0, got {self.val_size}")
        if self.train_chunk is not None and self.train_chunk < 0:
            raise FrepoError(f"train_chunk must be >= 0, got {self.train_chunk}")
        if self.train_chunk_size < 1:
            raise FrepoError(f"train_chunk_size must be >= 1, got {self.train_chunk_size}")
        self.class_ids()

    def class_ids(self, num_classes: int | None = None) -> list[int]:
        """The classes to distil from, sorted: `classes` parsed, or every class of `num_classes`."""
        if self.classes is None:
            return list(range(num_classes)) if num_classes is not None else []
        try:
            given = [int(c) for c in comma_items(self.classes)]
        except ValueError as exc:
            raise FrepoError(
                f"classes must be comma-separated class ids, got {self.classes!r}: numbers 0..C-1, a class's place "
                "in the dataset's class list (an image folder's: its class folders in name order), not names"
            ) from exc
        ids = sorted(set(given))
        if not ids:
            raise FrepoError("classes must name at least one class id (None: every class)")
        if len(ids) != len(given):  # "1,1" distilled one class, said nowhere
            raise FrepoError(f"classes must name each class once, got {self.classes!r}")
        if ids[0] < 0 or (num_classes is not None and ids[-1] >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise FrepoError(f"classes must be class ids in {bound}, got {self.classes!r}")
        return ids


@dataclass
class ModelConfig:
    width: int = opt(128, "channels of the first conv block (block i has width * 2**i)")
    depth: int = opt(3, "conv blocks")
    norm: str = opt("batch", "normalisation of the pool models: batch (reference), instance or none", choices=NORMS)

    def validate(self) -> None:
        check_fields(self)
        if self.width < 1 or self.depth < 1:
            raise FrepoError("width and depth must be positive")


@dataclass
class PoolConfig:
    num_models: int = opt(10, "models in the pool")
    max_online_updates: int = opt(100, "a pool model is re-initialised once its step counter exceeds this")
    online_lr: float = opt(3e-4, "Adam learning rate of the online updates")
    online_batch_size: int = opt(1000, "online updates use a random subset of at most this many images")
    pool_mode: str = opt(
        "replicated",
        "with several processes: replicated (every rank holds the same pool) or per-rank (each rank initialises "
        "its own models, as the official multi-device code does; slots, schedule and averaged gradients shared)",
        choices=POOL_MODES,
    )

    def validate(self) -> None:
        check_fields(self)
        check_finite("online_lr", self.online_lr, positive=True)
        if self.num_models < 1:
            raise FrepoError("num_models must be >= 1")
        if self.max_online_updates < 0:
            raise FrepoError("max_online_updates must be >= 0")
        if self.online_batch_size < 1:
            raise FrepoError("online_batch_size must be >= 1")


# The in-run validation follows the budget: the reference's in-training check trains each network
# REFERENCE_VALIDATION_STEPS steps (its 500 000-step runs can afford it); a shorter run validates with as
# many steps as it has outer steps, never fewer than MIN_VALIDATION_STEPS (a network needs some to learn).
REFERENCE_VALIDATION_STEPS = 1000
MIN_VALIDATION_STEPS = 100


@dataclass
class DistillConfig:
    data: DataConfig = nested(DataConfig)
    model: ModelConfig = nested(ModelConfig)
    pool: PoolConfig = nested(PoolConfig)
    ipc: int = opt(10, "synthetic images per class")
    steps: int = opt(500_000, "outer (meta) steps; the reference trains 500k")
    batch_size: int = opt(1024, "real images per meta-step (the global batch when distributed)")
    lr: float = opt(
        3e-4,
        "LAMB learning rate for images and labels (the paper's 3e-4 at its budget; a run with fewer --steps "
        "that names no --lr gets frepo.presets.budget_lr: 1e-2 up to 1000 steps, log-interpolated above; in "
        "Python, presets.resolve applies it, a DistillConfig built by hand keeps its lr)",
    )
    lr_final_ratio: float = opt(0.1, "cosine decay ends at lr * lr_final_ratio")
    learn_labels: bool = opt(True, "learn the synthetic labels too")
    use_flip: bool | None = opt(None, "flip trick in the meta-step (default: the reference's per-dataset table)")
    krr_reg: float = opt(1e-6, "ridge: krr_reg * trace(K_ss) / n_s")
    seed: int = opt(0, "seed of every random stream of the run")
    init: str | None = opt(
        None,
        "start from this set instead of seeded real images: any file `frepo evaluate` reads (a frepo "
        ".safetensors, an export folder, an official FRePo .npz, ...) with --ipc images of each class; its "
        "images are carried into this run's preprocessing, its labels kept (default: seeded real images)",
    )
    log_every: int = opt(10, "steps between metrics lines (and NaN checks)")
    checkpoint_every: int = opt(200, "steps between atomic checkpoints")
    snapshot_every: int | None = opt(
        None,
        "steps between image-grid snapshots in RUN/images, the frames of `frepo show RUN --animate` "
        "(default: about 50 over the run; 0: none)",
    )
    tensorboard: bool = opt(
        False, "also write TensorBoard events to RUN/tensorboard: the metrics, and the image grid every log step"
    )
    eval_every: int = opt(0, "steps between validation evaluations (0: only at the end)")
    eval_models: int = opt(1, "models trained per validation evaluation")
    eval_steps: int | None = opt(
        None,
        "training steps of each validation model (default: the preset's, as digits' 500, else the run's own "
        f"steps, at least {MIN_VALIDATION_STEPS} and at most the reference's {REFERENCE_VALIDATION_STEPS}; 0: the "
        "step table)",
    )
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    chunk_size: int = opt(
        2000,
        "support sets larger than this run their forward in chunks under activation checkpointing, for "
        "bounded memory at the cost of one more forward pass (0: never)",
    )
    precision: str = opt(
        "auto", "real-batch feature pass: fp32, tf32, bf16 or auto (tf32 on CUDA, else fp32)", choices=PRECISIONS
    )
    support_precision: str = opt(
        "fp32",
        "support-set forward, which the meta-gradient flows back through: fp32 (on CUDA with cuDNN's TF32 "
        "convolutions, torch's default) or bf16 (autocast; its meta-gradient error is measured in "
        "docs/benchmarks.md)",
        choices=("fp32", "bf16"),
    )
    compile: str = opt(
        "auto",
        "graph (CUDA): each pool model's whole outer step captured in one CUDA graph of the eager kernels "
        "(0.51x the eager step at MNIST IPC 10 and 0.74x at CIFAR-10 IPC 10 on an H200 in TF32, "
        "docs/benchmarks.md); off: eager; on: torch.compile'd network passes (inductor, static shapes); "
        "cudagraphs: on, plus CUDA graphs of those passes. auto: graph on "
        "one CUDA process, off elsewhere (a CPU, torchrun)",
        choices=COMPILE_MODES,
    )
    channels_last: bool = opt(True, "channels-last memory layout for the convolutions (faster on CPU and GPU)")
    deterministic: bool = opt(
        True,
        "CUDA: deterministic cuDNN algorithms, and inductor's choices made without timing (--compile on), so the "
        "same seed repeats a run bit for bit (CPU runs always do); off: the fastest algorithms cuDNN times at the "
        "first steps",
    )

    def validate(self) -> None:
        check_fields(self)
        self.data.validate()
        self.model.validate()
        self.pool.validate()
        for name in ("ipc", "steps", "batch_size", "log_every", "checkpoint_every", "eval_models"):
            if getattr(self, name) < 1:
                raise FrepoError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.chunk_size < 0:
            raise FrepoError("eval_every and chunk_size must be >= 0")
        if self.snapshot_every is not None and self.snapshot_every < 0:
            raise FrepoError(f"snapshot_every must be >= 0, got {self.snapshot_every}")
        check_finite("lr", self.lr, positive=True)
        check_finite("lr_final_ratio", self.lr_final_ratio, low=0.0)
        if self.lr_final_ratio > 1:
            raise FrepoError(f"lr_final_ratio must lie in [0, 1], got {self.lr_final_ratio}")
        check_finite("krr_reg", self.krr_reg, low=0.0)
        if self.eval_steps is not None and self.eval_steps < 0:
            raise FrepoError("eval_steps must be >= 0")

    def validation_steps(self) -> int | None:
        """Training steps of each validation network: `eval_steps` when given (None for 0: the reference
        step table by the set's size), else the run's own steps within [MIN, REFERENCE]_VALIDATION_STEPS."""
        if self.eval_steps is not None:
            return self.eval_steps or None
        return min(REFERENCE_VALIDATION_STEPS, max(MIN_VALIDATION_STEPS, self.steps))
