"""The model pool schedule: stagger, reset after max_online_updates, seeded sampling and subsets."""

from __future__ import annotations

import copy
import io

import torch

from frepo.config import PoolConfig
from frepo.method.krr import mse_loss
from frepo.method.optim import optax_adam
from frepo.method.pool import ModelPool
from frepo.models import Conv


def _pool(seed=0, **kw):
    cfg = PoolConfig(**kw)
    return ModelPool(
        lambda g: Conv(1, 3, (8, 8), width=4, depth=2, norm="batch", generator=g),
        cfg,
        torch.Generator().manual_seed(seed),
        torch.device("cpu"),
    )


def test_reference_stagger():
    assert _pool().steps == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert _pool(num_models=3, max_online_updates=10).steps == [0, 3, 6]


def test_reset_after_max_online_updates_and_counting():
    pool = _pool(num_models=1, max_online_updates=3)
    images, labels = torch.randn(5, 1, 8, 8), torch.randn(5, 3)
    first = [p.clone() for p in pool.model.parameters()]
    losses = [pool.advance(images, labels) for _ in range(5)]
    # Counter 0,1,2,3 -> four online steps (the reset happens only once it exceeds 3), then a reset.
    assert [loss is None for loss in losses] == [False, False, False, False, True]
    assert pool.steps == [0] and pool.resets == 1
    fresh = list(pool.model.parameters())
    assert not torch.equal(first[0], fresh[0])  # new weights, not the initial ones
    # Adam restarts in place (a CUDA graph holds its tensors' addresses): zeroed, so its next step is a
    # fresh Adam's.
    assert pool.optimizers[0].state  # kept (an emptied state would pass the next line too)
    assert all(not v.any() for s in pool.optimizers[0].state.values() for v in s.values())
    twin = copy.deepcopy(pool.model)
    fresh_adam = optax_adam(twin.parameters(), lr=pool.cfg.online_lr)
    assert pool.advance(images, labels) is not None and pool.steps == [1]
    twin.train()
    mse_loss(twin(images), labels).backward()
    fresh_adam.step()
    for a, b in zip(pool.model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_online_step_uses_a_subset_and_moves_weights():
    pool = _pool(num_models=1, online_batch_size=4)
    model = pool.model
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    before = [p.clone() for p in model.parameters()]
    pool.advance(torch.randn(10, 1, 8, 8), torch.randn(10, 3))
    assert seen == [4]
    assert any(not torch.equal(b, a) for b, a in zip(before, model.parameters()))


def test_sequence_is_deterministic_under_a_seed():
    def trace(seed):
        pool = _pool(seed, num_models=4, max_online_updates=5)
        g = torch.Generator().manual_seed(1)
        images, labels = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 3, generator=g)
        order = []
        for _ in range(30):
            order.append(pool.current)
            pool.advance(images, labels)
        return order, [p.clone() for m in pool.models for p in m.parameters()]

    (order_a, params_a), (order_b, params_b) = trace(0), trace(0)
    assert order_a == order_b
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    assert trace(1)[0] != order_a
    assert set(order_a) == {0, 1, 2, 3}


def test_state_dict_round_trip_continues_identically():
    pool_a = _pool(3, num_models=3, max_online_updates=4)
    images, labels = torch.randn(6, 1, 8, 8), torch.randn(6, 3)
    for _ in range(7):
        pool_a.advance(images, labels)
    pool_b = _pool(99, num_models=3, max_online_updates=4)
    buffer = io.BytesIO()  # through bytes, as a checkpoint file (an in-memory dict would share tensors)
    torch.save(pool_a.state_dict(), buffer)
    buffer.seek(0)
    pool_b.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(9):
        pool_a.advance(images, labels)
        pool_b.advance(images, labels)
    assert pool_a.steps == pool_b.steps and pool_a.current == pool_b.current
    for ma, mb in zip(pool_a.models, pool_b.models):
        for (ka, va), (_, vb) in zip(ma.state_dict().items(), mb.state_dict().items()):
            assert torch.equal(va, vb), ka


def test_a_checkpoint_from_another_kernel_choice_resumes_under_this_runs():
    """A resume may change the device and --compile: a GPU run under CUDA graphs saves fused, capturable
    Adams, which a CPU cannot step (and a CPU run's host step counts stop a capturable GPU Adam). The loaded
    optimisers take this run's kernel choice and continue exactly as the uninterrupted CPU pool."""
    pool_a = _pool(3, num_models=3, max_online_updates=4)
    images, labels = torch.randn(6, 1, 8, 8), torch.randn(6, 3)
    for _ in range(5):
        pool_a.advance(images, labels)
    state = copy.deepcopy(pool_a.state_dict())
    for saved in state["optimizers"]:  # as a GPU run with --compile graph writes them
        for group in saved["param_groups"]:
            group.update(fused=True, capturable=True, foreach=None)
    pool_b = _pool(99, num_models=3, max_online_updates=4)
    pool_b.load_state_dict(state)
    fresh = _pool(5, num_models=3, max_online_updates=4).optimizers[0].param_groups[0]
    for opt in pool_b.optimizers:
        assert all(g[k] == fresh[k] for g in opt.param_groups for k in ("fused", "capturable", "foreach"))
    for _ in range(6):
        pool_a.advance(images, labels)
        pool_b.advance(images, labels)
    for ma, mb in zip(pool_a.models, pool_b.models):
        assert all(torch.equal(va, vb) for va, vb in zip(ma.state_dict().values(), mb.state_dict().values()))
