"""Pure functions of the FRePo meta-loss: features -> kernel -> ridge solve -> prediction -> loss.

Shapes: real features F_t (B×D), synthetic features F_s (n×D), synthetic labels Y_s (n×C),
real targets Y_t (B×C). K_ss = F_s F_s^T, λ = reg·trace(K_ss)/n, α = (K_ss + λI)^-1 Y_s,
Ŷ_t = K_ts α = F_t (F_s^T α). The last form costs O(B·D·C) instead of O(B·n·D) and is the same maths.
"""

from __future__ import annotations

import torch


def centered_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels (B,) -> targets (B×C): 1 - 1/C on the class, -1/C elsewhere."""
    return torch.nn.functional.one_hot(labels, num_classes).float() - 1.0 / num_classes


def label_scale(num_classes: int) -> float:
    """The reference divides learned labels by sqrt(C/10) at init (1 for 10 classes, √10 for 100)."""
    return (num_classes / 10) ** 0.5


def krr_weights(feat_s: torch.Tensor, y_s: torch.Tensor, reg: float, solve_dtype=torch.float64) -> torch.Tensor:
    """Primal weights W = F_s^T (K_ss + λI)^-1 Y_s, shape D×C.

    The Cholesky factorisation and solve run in `solve_dtype` (float64 by default: the ridge is
    1e-6 of the mean eigenvalue, at the edge of float32's precision). When the support set has at
    least half as many images as feature dimensions, K_ss is (nearly) rank-deficient and float32
    rounding in K_ss itself exceeds the ridge, so the kernel is then built in `solve_dtype` too; this
    is the reference's NaN on CIFAR-100 IPC 50 with flip (10 000 images, 8192 features).
    A failed factorisation yields NaN weights (found by the run's NaN check) without a host sync.
    """
    n, d = feat_s.shape
    if 2 * n >= d:
        wide = feat_s.to(solve_dtype)  # one copy, saved once for the backward
        k = wide @ wide.T
    else:
        k = (feat_s @ feat_s.T).to(solve_dtype)
    # trace(K) as the diagonal's sum: torch.trace's backward fills the diagonal with index_fill_ of a
    # tensor value, which reads that value on the host (a GPU synchronisation in every meta-backward).
    ridge = abs(reg) * k.diagonal().sum() / n
    # In place (K itself is not saved for the backward): no second n×n matrix.
    k.diagonal().add_(ridge)
    chol, info = torch.linalg.cholesky_ex(k)
    alpha = torch.cholesky_solve(y_s.to(solve_dtype), chol)
    alpha = torch.where(info == 0, alpha, torch.full_like(alpha, float("nan")))
    return feat_s.T @ alpha.to(feat_s.dtype)


def krr_predict(
    feat_t: torch.Tensor, feat_s: torch.Tensor, y_s: torch.Tensor, reg: float, solve_dtype=torch.float64
) -> torch.Tensor:
    """Ŷ_t = K_ts (K_ss + λI)^-1 Y_s, shape B×C."""
    return feat_t @ krr_weights(feat_s, y_s, reg, solve_dtype)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5·Σ_classes (pred - target)², averaged over the batch."""
    return 0.5 * (pred - target).square().sum(-1).mean()


def label_margin_loss(labels: torch.Tensor) -> torch.Tensor:
    """Mean over synthetic labels of -min(top1 - top2, 1/C): keeps each learned label decisive."""
    top2 = labels.topk(2, dim=-1).values
    margin = torch.clamp(top2[:, 0] - top2[:, 1], max=1.0 / labels.shape[-1])
    return -margin.mean()
