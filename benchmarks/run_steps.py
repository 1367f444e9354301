"""Take N outer steps of a reference setting in one process, for whole-process timings of two trees.

    PYTHONPATH=TREE/src python benchmarks/run_steps.py SETTING STEPS

SETTING is one of bench_step.py's (random data of the dataset's shape and size, as there). Timing the
whole process (e.g. `/usr/bin/time -v`) of this script from two checkouts, the two alternating, compares
their steps without relying on either tree's benchmark code: this is how the issue-11 "before / after"
pair of docs/benchmarks.md was taken. It uses only FRePoTrainer and DistillConfig, which both trees have.
"""

from __future__ import annotations

import sys

import torch
from bench_step import SETTINGS  # this file's folder is on sys.path; bench_step imports no frepo at the top

from frepo.base.perf import tune_cpu_allocator
from frepo.config import DistillConfig
from frepo.method.trainer import FRePoTrainer


def main() -> None:
    shape, classes, ipc, batch, flip, n_train = SETTINGS[sys.argv[1]]
    steps = int(sys.argv[2])
    tune_cpu_allocator()  # as the frepo CLI does
    config = DistillConfig(ipc=ipc, batch_size=batch, use_flip=flip, steps=500_000)
    gen = torch.Generator().manual_seed(0)
    x_train = torch.empty(n_train, *shape, memory_format=torch.channels_last).normal_(generator=gen)
    trainer = FRePoTrainer(config, x_train, torch.arange(n_train) % classes, classes, torch.device("cpu"))
    for _ in range(steps):
        metrics = trainer.step()
    assert torch.isfinite(metrics["loss"]), "non-finite loss"


if __name__ == "__main__":
    main()
