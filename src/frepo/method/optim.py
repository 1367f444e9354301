"""Optimisers and schedules with optax's semantics.

`Lamb` is optax.lamb (scale_by_adam -> add_decayed_weights -> scale_by_trust_ratio -> -lr): Adam
moments with bias correction, update u = m̂ / (sqrt(v̂) + eps), then per tensor u *= ‖p‖/‖u‖ (1 where
either norm is 0), then p -= lr·u. The learning rate of update t (0-based) is schedule(t).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Schedule = Callable[[int], float]


def cosine_decay(init: float, decay_steps: int, alpha: float) -> Schedule:
    """optax.cosine_decay_schedule: init·((1-α)·½(1+cos(π·min(t,T)/T)) + α)."""
    decay_steps = max(int(decay_steps), 1)

    def schedule(t: int) -> float:
        frac = min(t, decay_steps) / decay_steps
        return init * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * frac)) + alpha)

    return schedule


def warmup_cosine(init: float, warmup_steps: int, total_steps: int, alpha: float) -> Schedule:
    """optax.join_schedules([linear 0 -> init over warmup, cosine over the rest], [warmup])."""
    cosine = cosine_decay(init, max(total_steps - warmup_steps, 1), alpha)

    def schedule(t: int) -> float:
        if t < warmup_steps:
            return init * t / warmup_steps
        return cosine(t - warmup_steps)

    return schedule


class Lamb(torch.optim.Optimizer):
    def __init__(
        self, params, lr: float | Schedule = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0
    ):
        self.schedule = lr if callable(lr) else (lambda t, lr=lr: lr)
        super().__init__(params, dict(betas=betas, eps=eps, weight_decay=weight_decay))

    def advance(self) -> tuple[float, float, float]:
        """Count one update and return its scalars: the learning rate and Adam's bias corrections
        (lr, 1 - b1^t, 1 - b2^t), t the 1-based update number (every tensor shares one count)."""
        lr = c1 = c2 = 0.0
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                lr = self.schedule(state["step"])
                state["step"] += 1
                c1, c2 = 1 - b1 ** state["step"], 1 - b2 ** state["step"]
        return lr, c1, c2

    @torch.no_grad()
    def update(self, lr, c1, c2) -> None:
        """Apply one update with the scalars of `advance()`: Python floats, or 0-dim device tensors that a
        CUDA graph reads at replay (`frepo.method.graphs`; the bias corrections then come as their
        reciprocals, which is what the eager division by a Python float computes on CUDA)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                b1, b2 = group["betas"]
                state = self.state[p]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                if isinstance(c1, torch.Tensor):  # 1 / (1 - b1^t) and 1 / (1 - b2^t), float32
                    update = (m * c1) / ((v * c2).sqrt() + group["eps"])
                else:
                    update = (m / c1) / ((v / c2).sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                p_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                trust = torch.where((p_norm == 0) | (u_norm == 0), torch.ones_like(p_norm), p_norm / u_norm)
                p.sub_(update * (lr * trust))

    @torch.no_grad()
    def step(self, closure=None):
        self.update(*self.advance())


def on_cuda(params: list[torch.Tensor]) -> bool | None:
    """`fused=` for torch's optimisers: True when every tensor is on CUDA (one fused kernel updates them
    all, instead of a dozen launches per step), else None (torch's default, so CPU results are unchanged)."""
    return True if params and all(p.is_cuda for p in params) else None


def optax_adam(params, lr: float, capturable: bool = False) -> torch.optim.Adam:
    """optax.adam's defaults (b1 .9, b2 .999, eps 1e-8), fused on CUDA; `capturable` lets a CUDA graph
    capture its step (the fused kernel computes the same either way)."""
    params = list(params)
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=on_cuda(params), capturable=capturable)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
