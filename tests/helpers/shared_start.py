"""Run under torchrun (2 processes): each rank builds a replicated-pool trainer, rank 1 from another seed
(a stand-in for a rank whose device rounds its start differently); rank 0 saves every rank's synthetic set
and pool as built, for tests/test_distributed.py."""

from __future__ import annotations

import sys

import torch

from frepo.base.dist import init_distributed
from frepo.config import DistillConfig
from frepo.method.trainer import FRePoTrainer

if __name__ == "__main__":
    torch.set_num_threads(1)
    ctx, _ = init_distributed("cpu")
    config = DistillConfig(ipc=2, batch_size=32, steps=10, use_flip=False, seed=ctx.rank)
    config.model.width, config.pool.num_models = 8, 3
    x, y = torch.randn(96, 3, 12, 12, generator=torch.Generator().manual_seed(3)), torch.arange(96) % 4
    trainer = FRePoTrainer(config, x, y, 4, torch.device("cpu"), ctx)
    built = {"synthetic": trainer.syn.state_dict(), "pool": [m.state_dict() for m in trainer.pool.models]}
    everyone = ctx.gather_objects(built)
    if ctx.is_main:
        torch.save(everyone, sys.argv[1])
    ctx.barrier()
