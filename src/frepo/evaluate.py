"""Evaluation: train fresh networks on a distilled set, report test accuracy (mean ± std).

Three protocols (`PROTOCOLS`), named in every result:
  frepo  the reference (script/eval.py): Conv without normalisation, Adam 3e-4 with a 500-step linear
         warm-up then cosine decay to 0.01×, MSE against the set's (learned) labels, batches of
         min(N, 500) taken in order without shuffling, one random augmentation op per step with
         per-sample parameters, a step count from the reference table, final-step accuracy.
  dsa    the DC/DSA/DM/MTT/DD-Ranking standard (`protocol_dsa.py`): ConvNet-3 with instance norm, SGD,
         1000 epochs, DSA augmentation, cross-entropy on hard (or, on request, soft) labels.
  krr    kernel ridge regression on the features of freshly initialised networks (`protocol_krr.py`).
Any protocol runs on any architecture of `frepo.models.ARCHS` (cross-architecture evaluation).
The test split is preprocessed with the set's own preprocessing, never refitted. Files written by
other tools are read through `frepo.formats`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .artifact import DistilledSet
from .augment import random_op, reference_ops
from .data import RawDataset, load_dataset
from .data.splits import holdout_split
from .device import deterministic_kernels, resolve_device
from .errors import FrepoError
from .krr import mse_loss
from .models import build_model, check_arch, eval_layout
from .optim import set_lr, warmup_cosine
from .rng import generator, stream_seed

PROTOCOLS = ("frepo", "dsa", "krr")
DEFAULT_ARCH = {"frepo": "conv", "dsa": "convnet", "krr": "conv"}

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
    width: int = 128,
) -> torch.nn.Module:
    """Train one fresh network with the reference protocol. images N×C×H×W, targets N×K on `device`."""
    model = build_model(arch, tuple(images.shape[1:]), num_classes, generator=gen, width=width)
    layout = eval_layout(images)
    model = model.to(device, memory_format=layout)
    images = images.contiguous(memory_format=layout)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.999), eps=1e-8)
    # Warm-up takes at most half the run: the reference table never asks for fewer than 1000 steps,
    # so its evaluations are unchanged, and short validation runs still reach the cosine phase.
    schedule = warmup_cosine(lr, min(warmup, steps // 2), steps, alpha=0.01)
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
    width: int = 128,
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
        with deterministic_kernels(device):  # the same seed gives the same numbers on a GPU too
            model = train_reference_model(
                images,
                targets,
                num_classes=num_classes,
                steps=steps,
                ops=ops,
                gen=gen,
                device=device,
                arch=arch,
                width=width,
            )
            accs.append(accuracy(model, eval_x, eval_y, device))
    result = EvalResult(
        "frepo", arch, accs, float(np.mean(accs)), float(np.std(accs)), steps, time.perf_counter() - start, split, seed
    )
    result.extra = _seed_record(seed, [f"eval/model{i}" for i in range(models)])
    return result


def _seed_record(seed: int, streams: list[str]) -> dict:
    """The random streams of an evaluation: names and the integer seeds they resolve to."""
    return {"model_streams": streams, "model_seeds": [stream_seed(seed, name) for name in streams]}


def check_options(
    protocol: str,
    models: int,
    steps: int | None = None,
    epochs: int | None = None,
    soft_labels: bool = False,
    dsa_strategy: str | None = None,
) -> None:
    """Reject option combinations that mean nothing, before any data is loaded."""
    if protocol not in PROTOCOLS:
        raise FrepoError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if models < 1:
        raise FrepoError(f"models must be >= 1, got {models}")
    if steps is not None:
        if protocol != "frepo":
            raise FrepoError(
                "--steps sets the training steps of the frepo protocol; the dsa protocol counts --epochs "
                "and the krr protocol trains nothing"
            )
        if steps < 1:
            raise FrepoError(f"steps must be >= 1, got {steps}")
    if epochs is not None:
        if protocol != "dsa":
            raise FrepoError("--epochs applies to --protocol dsa; the frepo protocol counts --steps")
        if epochs < 1:
            raise FrepoError(f"epochs must be >= 1, got {epochs}")
    if soft_labels and protocol != "dsa":
        raise FrepoError("--soft-labels applies to --protocol dsa (the frepo protocol regresses the learned labels)")
    if dsa_strategy is not None:
        if protocol != "dsa":
            raise FrepoError(
                "--dsa-strategy applies to --protocol dsa; the frepo protocol uses the reference's augmentation"
            )
        from .protocol_dsa import parse_strategy

        parse_strategy(dsa_strategy)


def parse_archs(archs: str | list[str] | tuple[str, ...] | None, protocol: str) -> list[str]:
    """'conv,alexnet' or a list -> validated names; None -> the protocol's default network."""
    if archs is None:
        return [DEFAULT_ARCH[protocol]]
    names = [a.strip() for a in archs.split(",")] if isinstance(archs, str) else list(archs)
    names = [a for a in names if a]
    if not names:
        raise FrepoError("--arch needs at least one architecture name")
    if len(set(names)) != len(names):
        raise FrepoError(f"--arch names an architecture twice: {','.join(names)}")
    return [check_arch(a) for a in names]


def _dsa_targets(ds: DistilledSet, soft_labels: bool) -> torch.Tensor:
    from .protocol_dsa import soft_targets

    if not soft_labels:
        return ds.class_ids()
    if ds.labels.ndim != 2:
        raise FrepoError("--soft-labels needs a set with learned labels; this one holds class ids")
    return soft_targets(ds.labels)


def evaluate_set(
    ds: DistilledSet,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    *,
    protocol: str = "frepo",
    arch: str | None = None,
    models: int = 5,
    seed: int = 0,
    steps: int | None = None,
    epochs: int | None = None,
    soft_labels: bool = False,
    dsa_strategy: str | None = None,
    device: torch.device | str = "auto",
    split: str = "test",
    progress: bool = False,
    width: int = 128,
) -> EvalResult:
    """One protocol, one architecture, `models` fresh networks on a loaded set.

    eval_x: M×C×H×W already in the set's preprocessed space; eval_y: (M,) class ids."""
    check_options(protocol, models, steps, epochs, soft_labels, dsa_strategy)
    names = parse_archs(arch, protocol)
    if len(names) != 1:
        raise FrepoError("evaluate_set takes one architecture; evaluate_archs runs several")
    arch = names[0]
    device = resolve_device(device) if isinstance(device, str) else device
    if protocol == "frepo":
        return evaluate_tensors(
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
            width=width,
        )
    start = time.perf_counter()
    accs: list[float] = []
    if protocol == "dsa":
        from .protocol_dsa import EPOCHS, STRATEGY, dsa_steps, parse_strategy, train_dsa_model

        epochs = epochs or EPOCHS
        ops = parse_strategy(dsa_strategy or STRATEGY)
        images = ds.images.detach().to(device).float()
        targets = _dsa_targets(ds, soft_labels).to(device)
        streams = [f"dsa/model{i}" for i in range(models)]
        for name in tqdm(streams, desc=f"evaluate ({arch}, dsa)", disable=not progress, leave=False):
            with deterministic_kernels(device):
                model = train_dsa_model(
                    images,
                    targets,
                    num_classes=ds.num_classes,
                    arch=arch,
                    init_gen=generator(seed, f"{name}/init"),
                    train_gen=generator(seed, f"{name}/train"),
                    device=device,
                    epochs=epochs,
                    ops=ops,
                    width=width,
                )
                accs.append(accuracy(model, eval_x, eval_y, device))
        steps_done = dsa_steps(len(images), epochs)
        extra = {"epochs": epochs, "soft_labels": soft_labels, "dsa_strategy": "_".join(ops) or "none", "init": "torch"}
    else:
        from .protocol_krr import krr_accuracy

        use_flip = bool((ds.meta.get("config") or {}).get("use_flip") or False)
        streams = [f"krr/model{i}" for i in range(models)]
        for name in tqdm(streams, desc=f"evaluate ({arch}, krr)", disable=not progress, leave=False):
            shape = tuple(ds.images.shape[1:])
            model = build_model(arch, shape, ds.num_classes, generator=generator(seed, name), width=width).to(device)
            accs.append(krr_accuracy(model, ds.images, ds.targets(), eval_x, eval_y, device=device, use_flip=use_flip))
        steps_done = 0
        extra = {"use_flip": use_flip}
    result = EvalResult(
        protocol, arch, accs, float(np.mean(accs)), float(np.std(accs)), steps_done, time.perf_counter() - start
    )
    result.split, result.seed = split, seed
    result.extra = {**extra, **_seed_record(seed, streams)}
    return result


def eval_split(ds: DistilledSet, raw: RawDataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in the set's preprocessed space, class ids) of the split the set is tested on: the test
    split, or the validation hold-out the set was distilled without."""
    if raw.num_classes != ds.num_classes:
        raise FrepoError(f"the set has {ds.num_classes} classes but dataset {raw.name} has {raw.num_classes}")
    if tuple(raw.image_shape) != tuple(ds.images.shape[1:]):
        raise FrepoError(f"the set's images are {tuple(ds.images.shape[1:])} but {raw.name} has {raw.image_shape}")
    if split == "test":
        expected = ds.meta.get("test_fingerprint")
        if expected and expected != raw.test_fingerprint():
            warnings.warn(
                f"the test split of {raw.name} found here differs from the one the set was made "
                "with; numbers may not be comparable",
                stacklevel=3,
            )
        return ds.transform(raw.x_test), torch.from_numpy(raw.y_test)
    if split == "val":
        _, val_idx = holdout_split(raw.y_train, int(ds.meta.get("val_size") or 0))
        if len(val_idx) == 0:
            raise FrepoError("the set was made without a validation hold-out (val_size 0)")
        return ds.transform(raw.x_train[val_idx]), torch.from_numpy(raw.y_train[val_idx])
    raise FrepoError(f"split must be test or val, got {split!r}")


def evaluate_archs(
    ds: DistilledSet | str,
    archs: str | list[str] | None = None,
    *,
    protocol: str = "frepo",
    models: int = 5,
    seed: int = 0,
    steps: int | None = None,
    epochs: int | None = None,
    soft_labels: bool = False,
    dsa_strategy: str | None = None,
    data_dir: str | None = None,
    download: bool = True,
    device: str = "auto",
    split: str = "test",
    progress: bool = True,
    dataset: str | None = None,
    preprocess: str = "auto",
    entry: int | None = None,
    width: int = 128,
) -> list[EvalResult]:
    """Evaluate a distilled set (a DistilledSet, or any file `frepo.formats` reads: frepo, official
    FRePo .npz, MTT .pt, DC/DSA res_*.pt, an image folder; `dataset` names the real dataset of a
    foreign file) with one protocol on each architecture of `archs`. One result per architecture."""
    from .formats import describe, load_set

    check_options(protocol, models, steps, epochs, soft_labels, dsa_strategy)
    names = parse_archs(archs, protocol)
    if isinstance(ds, DistilledSet):
        if dataset is not None or preprocess not in (None, "auto") or entry is not None:
            raise FrepoError("dataset, preprocess and entry apply to files, not to a loaded DistilledSet")
        raw, file = load_dataset(ds.dataset, data_dir, download), None
    else:
        file = str(ds)
        ds, raw = load_set(file, dataset, data_dir=data_dir, download=download, preprocess=preprocess, entry=entry)
    if soft_labels:
        _dsa_targets(ds, soft_labels)  # fail before any training
    eval_x, eval_y = eval_split(ds, raw, split)
    device_ = resolve_device(device)
    results = []
    for arch in names:
        result = evaluate_set(
            ds,
            eval_x,
            eval_y,
            protocol=protocol,
            arch=arch,
            models=models,
            seed=seed,
            steps=steps,
            epochs=epochs,
            soft_labels=soft_labels,
            dsa_strategy=dsa_strategy,
            device=device_,
            split=split,
            progress=progress,
            width=width,
        )
        result.extra = {
            **({"file": file} if file else {}),
            "dataset": ds.dataset,
            "num_images": int(len(ds.images)),
            "file_checksum": ds.meta.get("checksum"),
            **({"source": describe(ds)} if ds.meta.get("source") else {}),
            **result.extra,
        }
        results.append(result)
    return results


def evaluate(
    ds: DistilledSet | str,
    models: int = 5,
    seed: int = 0,
    steps: int | None = None,
    arch: str | None = None,
    data_dir: str | None = None,
    download: bool = True,
    device: str = "auto",
    split: str = "test",
    progress: bool = True,
    *,
    protocol: str = "frepo",
    epochs: int | None = None,
    soft_labels: bool = False,
    dsa_strategy: str | None = None,
    dataset: str | None = None,
    preprocess: str = "auto",
    entry: int | None = None,
    width: int = 128,
) -> EvalResult:
    """Train `models` fresh networks of one architecture (default: the protocol's) on a distilled set
    and test them on its dataset's `split` (test, or val: the hold-out the set was distilled without),
    preprocessed the set's way."""
    if arch is not None and "," in arch:
        raise FrepoError("evaluate() takes one architecture; use evaluate_archs() for several")
    return evaluate_archs(
        ds,
        arch,
        protocol=protocol,
        models=models,
        seed=seed,
        steps=steps,
        epochs=epochs,
        soft_labels=soft_labels,
        dsa_strategy=dsa_strategy,
        data_dir=data_dir,
        download=download,
        device=device,
        split=split,
        progress=progress,
        dataset=dataset,
        preprocess=preprocess,
        entry=entry,
        width=width,
    )[0]
