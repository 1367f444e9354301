"""Pure functions of the FRePo meta-loss: features -> kernel -> ridge solve -> prediction -> loss.

Shapes: real features F_t (B×D), synthetic features F_s (n×D), synthetic labels Y_s (n×C),
real targets Y_t (B×C). K_ss = F_s F_s^T, λ = reg·trace(K_ss)/n, α = (K_ss + λI)^-1 Y_s,
Ŷ_t = K_ts α = F_t (F_s^T α). The last form costs O(B·D·C) instead of O(B·n·D) and is the same maths.
"""

from __future__ import annotations

import torch

from ..base.device import exact_matmuls


def centered_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels (B,) -> targets (B×C): 1 - 1/C on the class, -1/C elsewhere."""
    return torch.nn.functional.one_hot(labels, num_classes).float() - 1.0 / num_classes


def label_scale(num_classes: int) -> float:
    """The reference divides learned labels by sqrt(C/10) at init (1 for 10 classes, √10 for 100)."""
    return (num_classes / 10) ** 0.5


def krr_weights(feat_s: torch.Tensor, y_s: torch.Tensor, reg: float, solve_dtype=torch.float64) -> torch.Tensor:
    """Primal weights W = F_s^T (K_ss + λI)^-1 Y_s, shape D×C, differentiable in F_s and Y_s.

    The Cholesky factorisation and solve run in `solve_dtype` (float64 by default: the ridge is
    1e-6 of the mean eigenvalue, at the edge of float32's precision). When the support set has at
    least half as many images as feature dimensions, K_ss is (nearly) rank-deficient and float32
    rounding in K_ss itself exceeds the ridge, so the kernel is then built in `solve_dtype` too; this
    is the reference's NaN on CIFAR-100 IPC 50 with flip (10 000 images, 8192 features).
    With more images than dimensions (n > D), the same W comes from the D×D system
    W = (F_s^T F_s + λI)^-1 F_s^T Y_s (the push-through identity; the same λ, as trace(F_s^T F_s) =
    trace(K_ss)), which costs D²n + D³/3 instead of n²D + n³/3 and keeps float32 accuracy, where
    F_s^T α of the n×n form cancels components of size |Y|/λ.
    The backward is written out (`_KrrWeights`): its gradients are products of rank C, O(nDC + n²C),
    where autograd would differentiate the Gram product and the factorisation (O(nD² + D³) for n > D).
    A failed factorisation yields NaN weights (found by the run's NaN check) without a host sync.
    """
    return _KrrWeights.apply(feat_s, y_s, abs(reg), solve_dtype)


class _KrrWeights(torch.autograd.Function):
    """W = F^T (F F^T + λI)^-1 Y with λ = r·trace(F F^T)/n, and its gradients in closed form.

    Dual (n ≤ D): α = A^-1 Y, A = F F^T + λI, W = F^T α. For the incoming gradient G_W (D×C), with
    Z = A^-1 (F G_W) and dλ = -Σ Z∘α: ∂/∂Y = Z, ∂/∂F = α G_W^T - Z W^T - α (F^T Z)^T + (2r·dλ/n) F.
    Primal (n > D): A = F^T F + λI, W = A^-1 F^T Y. With Z = A^-1 G_W and dλ = -Σ Z∘W:
    ∂/∂Y = F Z, ∂/∂F = Y Z^T - (F Z) W^T - (F W) Z^T + (2r·dλ/n) F.
    (From dA = -Z·(α or W)^T and A's dependence on F through the Gram product and through λ.)
    """

    @staticmethod
    def forward(ctx, feat_s, y_s, reg, solve_dtype):
        with exact_matmuls(feat_s.device):  # whatever TF32 the process allows (base.device.exact_matmuls)
            n, d = feat_s.shape
            wide, y = feat_s.to(solve_dtype), y_s.to(solve_dtype)  # the wide copy is saved for the backward
            primal = n > d
            if primal:
                gram = wide.T @ wide  # D×D
            elif 2 * n >= d:
                gram = wide @ wide.T  # n×n
            else:
                gram = (feat_s @ feat_s.T).to(solve_dtype)  # far from rank-deficient: float32 products suffice
            # trace as the diagonal's sum, added in place (no second matrix of the Gram's size).
            gram.diagonal().add_(reg * gram.diagonal().sum() / n)
            chol, info = torch.linalg.cholesky_ex(gram)
            solution = torch.cholesky_solve(wide.T @ y if primal else y, chol)
            solution = torch.where(info == 0, solution, torch.full_like(solution, float("nan")))
            weights = solution if primal else wide.T @ solution  # D×C
            ctx.save_for_backward(wide, y, chol, solution, weights)
            ctx.reg, ctx.primal, ctx.dtypes = reg, primal, (feat_s.dtype, y_s.dtype)
            return weights.to(feat_s.dtype)

    @staticmethod
    def backward(ctx, grad_w):
        with exact_matmuls(grad_w.device):  # on CUDA autograd's own thread: the setting is the process's
            wide, y, chol, solution, weights = ctx.saved_tensors
            n = len(wide)
            grad_w = grad_w.to(wide.dtype)
            if ctx.primal:
                z = torch.cholesky_solve(grad_w, chol)  # D×C
                d_ridge = -(z * weights).sum()
                grad_y = wide @ z
                grad_f = y @ z.T - grad_y @ weights.T - (wide @ weights) @ z.T
            else:
                alpha = solution  # n×C
                z = torch.cholesky_solve(wide @ grad_w, chol)  # n×C
                d_ridge = -(z * alpha).sum()
                grad_y = z
                grad_f = alpha @ grad_w.T - z @ weights.T - alpha @ (wide.T @ z).T
            grad_f = grad_f + (2 * ctx.reg * d_ridge / n) * wide
            f_dtype, y_dtype = ctx.dtypes
            return grad_f.to(f_dtype), grad_y.to(y_dtype), None, None


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
