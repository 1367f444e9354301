"""Evaluation: train fresh networks on a distilled set, report test accuracy (mean ± std).

Protocol `frepo` (the reference, script/eval.py): Conv without normalisation, Adam 3e-4 with a
500-step linear warm-up then cosine decay to 0.01×, MSE against the set's (learned) labels, batches
of min(N, 500) taken in order without shuffling, one random augmentation op per step with
per-sample parameters, a step count from the reference table, final-step accuracy.
The test split is preprocessed with the set's own preprocessing, never refitted.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .artifact import DistilledSet, load_distilled
from .augment import random_op, reference_ops
from .data import load_dataset
from .data.splits import holdout_split
from .device import resolve_device
from .errors import FrepoError
from .krr import mse_loss
from .models import build_model
from .optim import set_lr, warmup_cosine
from .rng import generator

# Reference: training steps by total number of distilled images.
REFERENCE_STEPS = {10: 1000, 100: 2000, 200: 20000, 400: 5000, 500: 5000, 1000: 10000, 2000: 40000, 5000: 40000}


def reference_steps(num_images: int) -> int:
    """The reference table; between its entries, the entry below (the 200-image row, specific to
    Tiny ImageNet IPC 1, is used only for exactly 200 images)."""
    if num_images in REFERENCE_STEPS:
        return REFERENCE_STEPS[num_images]
    below = [k for k in REFERENCE_STEPS if k <= num_images and k != 200]
    return REFERENCE_STEPS[max(below)] if below else REFERENCE_STEPS[10]


@dataclass
class EvalResult:
    protocol: str
    arch: str
    accuracies: list[float]  # percent, one per model
    mean: float
    std: float  # population std over models, as the reference (np.std)
    steps: int
    seconds: float
    split: str = "test"
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def models(self) -> int:
        return len(self.accuracies)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["models"] = self.models
        out.update(out.pop("extra"))
        return out

    def summary(self) -> str:
        return (
            f"{self.mean:.2f} ± {self.std:.2f} % ({self.split}, protocol {self.protocol}, arch {self.arch}, "
            f"{self.models} models, {self.steps} steps, {self.seconds:.0f} s)"
        )


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device, batch: int = 1000
) -> float:
    """Percent of images whose argmax prediction equals the label."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device, non_blocking=True)
        correct += int((model(x).argmax(-1).cpu() == labels[start : start + batch]).sum())
    return 100.0 * correct / max(len(images), 1)


def train_reference_model(
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_classes: int,
    steps: int,
    ops: tuple[str, ...],
    gen: torch.Generator,
    device: torch.device,
    arch: str = "conv",
    lr: float = 3e-4,
    warmup: int = 500,
    batch_size: int = 500,
) -> torch.nn.Module:
    """Train one fresh network with the reference protocol. images N×C×H×W, targets N×K on `device`."""
    model = build_model(arch, tuple(images.shape[1:]), num_classes, generator=gen).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.999), eps=1e-8)
    schedule = warmup_cosine(lr, warmup, steps, alpha=0.01)
    n = len(images)
    bs = min(n, batch_size)
    offsets = torch.arange(bs, device=device)
    for t in range(steps):
        # The reference repeats the set, then batches it: batches run on across epoch ends, in order.
        idx = (t * bs + offsets) % n
        x = random_op(images[idx], ops, gen) if ops else images[idx]
        set_lr(opt, schedule(t))
        loss = mse_loss(model(x), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def evaluate_tensors(
    images: torch.Tensor,
    targets: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    *,
    num_classes: int,
    mirror_invariant: bool,
    models: int = 5,
    seed: int = 0,
    steps: int | None = None,
    arch: str = "conv",
    device: torch.device | str = "auto",
    split: str = "test",
    progress: bool = False,
) -> EvalResult:
    """Reference protocol on tensors already in the preprocessed space."""
    device = resolve_device(device) if isinstance(device, str) else device
    steps = steps or reference_steps(len(images))
    images, targets = images.to(device).float(), targets.to(device).float()
    ops = reference_ops(mirror_invariant)
    accs = []
    start = time.perf_counter()
    for i in tqdm(range(models), desc=f"evaluate ({arch}, {steps} steps)", disable=not progress, leave=False):
        gen = generator(seed, f"eval/model{i}")
        model = train_reference_model(
            images, targets, num_classes=num_classes, steps=steps, ops=ops, gen=gen, device=device, arch=arch
        )
        accs.append(accuracy(model, eval_x, eval_y, device))
    return EvalResult(
        "frepo", arch, accs, float(np.mean(accs)), float(np.std(accs)), steps, time.perf_counter() - start, split, seed
    )


def evaluate(
    ds: DistilledSet | str,
    models: int = 5,
    seed: int = 0,
    steps: int | None = None,
    arch: str = "conv",
    data_dir: str | None = None,
    download: bool = True,
    device: str = "auto",
    split: str = "test",
    progress: bool = True,
) -> EvalResult:
    """Train `models` fresh networks on a distilled set and test them on its dataset's `split`
    (test, or val: the hold-out the set was distilled without), preprocessed the set's way."""
    if not isinstance(ds, DistilledSet):
        ds = load_distilled(ds)
    raw = load_dataset(ds.dataset, data_dir, download)
    if raw.num_classes != ds.num_classes:
        raise FrepoError(f"the set has {ds.num_classes} classes but dataset {ds.dataset} has {raw.num_classes}")
    if tuple(raw.image_shape) != tuple(ds.images.shape[1:]):
        raise FrepoError(f"the set's images are {tuple(ds.images.shape[1:])} but {ds.dataset} has {raw.image_shape}")
    if split == "test":
        expected = ds.meta.get("test_fingerprint")
        if expected and expected != raw.test_fingerprint():
            warnings.warn(
                f"the test split of {ds.dataset} found here differs from the one the set was made "
                "with; numbers may not be comparable",
                stacklevel=2,
            )
        eval_x, eval_y = ds.transform(raw.x_test), torch.from_numpy(raw.y_test)
    elif split == "val":
        _, val_idx = holdout_split(raw.y_train, int(ds.meta["val_size"]))
        if len(val_idx) == 0:
            raise FrepoError("the set was made without a validation hold-out (val_size 0)")
        eval_x, eval_y = ds.transform(raw.x_train[val_idx]), torch.from_numpy(raw.y_train[val_idx])
    else:
        raise FrepoError(f"split must be test or val, got {split!r}")
    result = evaluate_tensors(
        ds.images,
        ds.targets(),
        eval_x,
        eval_y,
        num_classes=ds.num_classes,
        mirror_invariant=bool(ds.meta.get("mirror_invariant", True)),
        models=models,
        seed=seed,
        steps=steps,
        arch=arch,
        device=device,
        split=split,
        progress=progress,
    )
    result.extra = {"dataset": ds.dataset, "num_images": int(len(ds.images)), "file_checksum": ds.meta.get("checksum")}
    return result
