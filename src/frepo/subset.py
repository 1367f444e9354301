"""Same-format files of real images (coreset baselines), evaluated by the very same command.

`random` picks `ipc` images per class with the distillation's own initialisation stream, so
`frepo subset --seed S` is exactly the starting point of `frepo distill --seed S`: the distilled set
is compared with where it began. Images come from the distillation part of the training split and
are preprocessed the same way as a distillation of that dataset.
"""

from __future__ import annotations

from .artifact import DistilledSet
from .config import DataConfig, to_dict
from .data import prepare
from .errors import FrepoError
from .rng import generator
from .synthetic import init_from_real

METHODS = ("random",)


def make_subset(data: DataConfig, ipc: int, method: str = "random", seed: int = 0) -> DistilledSet:
    if method not in METHODS:
        raise FrepoError(f"unknown subset method {method!r}; known: {', '.join(METHODS)}")
    if ipc < 1:
        raise FrepoError(f"ipc must be >= 1, got {ipc}")
    data.validate()
    prepared = prepare(data)
    raw = prepared.raw
    x_train, y_train = prepared.train()
    images, labels = init_from_real(x_train, y_train, raw.num_classes, ipc, generator(seed, "init"))
    meta = {
        "kind": f"subset-{method}",
        "dataset": raw.name,
        "classes": raw.classes,
        "ipc": ipc,
        "seed": seed,
        "step": 0,
        "config": {"data": to_dict(data), "ipc": ipc, "method": method, "seed": seed},
        "mirror_invariant": raw.mirror_invariant,
        "val_size": int(len(prepared.val_idx)),
        "test_fingerprint": raw.test_fingerprint(),
    }
    return DistilledSet(images, labels, prepared.preprocessing, meta)
