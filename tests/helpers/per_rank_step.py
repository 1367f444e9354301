"""Run under torchrun (2 processes): one outer step of a per-rank pool; rank 0 saves the averaged
meta-gradient and every rank's first pool model, for tests/test_distributed.py."""

from __future__ import annotations

import sys

import torch

from frepo.base.dist import DistContext, init_distributed
from frepo.config import DistillConfig
from frepo.method.trainer import FRePoTrainer


def problem():
    config = DistillConfig(ipc=2, batch_size=32, steps=10, use_flip=False)
    config.model.width = 8
    config.pool.num_models = 3
    config.pool.pool_mode = "per-rank"
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(96, 3, 12, 12, generator=gen), torch.arange(96) % 4
    return config, x, y


def trainer(ctx: DistContext) -> FRePoTrainer:
    config, x, y = problem()
    return FRePoTrainer(config, x, y, 4, torch.device("cpu"), ctx)


if __name__ == "__main__":
    torch.set_num_threads(1)
    ctx, _ = init_distributed("cpu")
    t = trainer(ctx)
    first_model = {k: v.clone() for k, v in t.pool.models[0].state_dict().items()}
    t.step()
    models = ctx.gather_objects(first_model)
    if ctx.is_main:
        torch.save({"grad": t.syn.images.grad.clone(), "models": models}, sys.argv[1])
    # Every rank leaves together, as a distillation does (its final barrier): a rank that exited while the
    # other was still saving aborted the other's gloo threads in 1 run of 3 ("terminate called without an
    # active exception", exit -6).
    ctx.barrier()
