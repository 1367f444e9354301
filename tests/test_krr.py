"""The meta-loss and its gradient against an independent float64 computation (numpy, explicit
inverse, finite differences), and the small pure functions against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frepo.method.krr import centered_one_hot, krr_predict, krr_weights, label_margin_loss, label_scale, mse_loss
from frepo.method.synthetic import SyntheticSet
from frepo.method.trainer import meta_step
from frepo.models import Conv


def test_centered_one_hot_and_label_scale():
    y = centered_one_hot(torch.tensor([0, 2]), 4)
    expected = np.array([[0.75, -0.25, -0.25, -0.25], [-0.25, -0.25, 0.75, -0.25]])
    np.testing.assert_allclose(y.numpy(), expected)
    assert label_scale(10) == 1.0
    assert label_scale(100) == pytest.approx(np.sqrt(10))


def test_label_margin_loss_by_hand():
    labels = torch.tensor([[0.9, 0.1, 0.0], [0.3, 0.25, 0.0]])
    # margins: min(0.8, 1/3) = 1/3 and min(0.05, 1/3) = 0.05
    assert float(label_margin_loss(labels)) == pytest.approx(-(1 / 3 + 0.05) / 2)


def test_mse_loss_by_hand():
    pred, target = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert float(mse_loss(pred, target)) == pytest.approx((0.5 * 1 + 0.5 * 4) / 2)


def _numpy_prediction(ft, fs, ys, reg):
    k_ss, k_ts = fs @ fs.T, ft @ fs.T
    ridge = reg * np.trace(k_ss) / len(fs)
    return k_ts @ np.linalg.inv(k_ss + ridge * np.eye(len(fs))) @ ys


def test_krr_predict_matches_dual_form_with_explicit_inverse():
    rng = np.random.default_rng(0)
    fs, ft, ys = rng.normal(size=(7, 20)), rng.normal(size=(5, 20)), rng.normal(size=(7, 3))
    for reg in (1e-6, 1e-2, 1.0):
        ours = krr_predict(torch.from_numpy(ft), torch.from_numpy(fs), torch.from_numpy(ys), reg).numpy()
        np.testing.assert_allclose(ours, _numpy_prediction(ft, fs, ys, reg), rtol=1e-8, atol=1e-10)


def _setup(use_flip: bool):
    torch.manual_seed(0)  # only for the random test tensors below; the model has its own generator
    gen = torch.Generator().manual_seed(1)
    model = Conv(1, 3, (8, 8), width=4, depth=2, norm="batch", generator=gen).double()
    # Non-trivial running statistics, so eval-mode batch norm is exercised.
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 8, 8, dtype=torch.float64))
    x_real = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y_real = centered_one_hot(torch.tensor([0, 1, 2, 1, 0]), 3).double()
    syn = SyntheticSet(torch.randn(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2]), 3).double()
    with torch.no_grad():
        syn.labels.add_(0.05 * torch.randn_like(syn.labels))  # break ties so the margin term is smooth
    return model, syn, x_real, y_real


def _numpy_loss(model, images, labels, x_real, y_real, use_flip, reg):
    """Independent evaluation: features from the network (no autograd), the rest in numpy."""
    with torch.no_grad():
        model.eval()
        support = np.concatenate([images, images[..., ::-1]]) if use_flip else images
        fs = model.embed(torch.from_numpy(np.ascontiguousarray(support))).numpy()
        ft = model.embed(x_real).numpy()
    ys = np.concatenate([labels, labels]) if use_flip else labels
    pred = _numpy_prediction(ft, fs, ys, reg)
    kernel = 0.5 * ((pred - y_real.numpy()) ** 2).sum(-1).mean()
    top = np.sort(labels, axis=-1)
    margin = -np.minimum(top[:, -1] - top[:, -2], 1.0 / labels.shape[1]).mean()
    return kernel + margin


@pytest.mark.parametrize("use_flip", [False, True])
def test_meta_loss_and_gradient_against_float64_finite_differences(use_flip):
    reg = 1e-3
    model, syn, x_real, y_real = _setup(use_flip)
    metrics = meta_step(model, syn, x_real, y_real, use_flip, reg)
    images, labels = syn.images.detach().numpy().copy(), syn.labels.detach().numpy().copy()
    ref_loss = _numpy_loss(model, images, labels, x_real, y_real, use_flip, reg)
    assert float(metrics["loss"]) == pytest.approx(ref_loss, rel=1e-9)

    # Directional derivatives of the image gradient along random directions.
    rng = np.random.default_rng(0)
    eps = 1e-5
    for _ in range(3):
        d = rng.normal(size=images.shape)
        plus = _numpy_loss(model, images + eps * d, labels, x_real, y_real, use_flip, reg)
        minus = _numpy_loss(model, images - eps * d, labels, x_real, y_real, use_flip, reg)
        fd = (plus - minus) / (2 * eps)
        analytic = float((syn.images.grad.numpy() * d).sum())
        assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-9)

    # Every entry of the label gradient.
    fd_labels = np.zeros_like(labels)
    for idx in np.ndindex(*labels.shape):
        e = np.zeros_like(labels)
        e[idx] = eps
        fd_labels[idx] = (
            _numpy_loss(model, images, labels + e, x_real, y_real, use_flip, reg)
            - _numpy_loss(model, images, labels - e, x_real, y_real, use_flip, reg)
        ) / (2 * eps)
    np.testing.assert_allclose(syn.labels.grad.numpy(), fd_labels, rtol=1e-5, atol=1e-8)


def test_meta_step_leaves_model_untouched_and_fixed_labels_get_no_gradient():
    model, syn, x_real, y_real = _setup(False)
    syn.labels.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta_step(model, syn, x_real, y_real, False, 1e-6)
    assert syn.labels.grad is None and syn.images.grad is not None
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_rank_deficient_kernel_stays_positive_definite():
    # More support images than feature dimensions (as CIFAR-100 IPC 50 with flip: 10 000 vs 8192):
    # K_ss is rank-deficient and only the 1e-6 ridge keeps it positive definite.
    gen = torch.Generator().manual_seed(0)
    # Non-negative features with a large common component, like pooled ReLU features.
    feat_s = torch.relu(torch.randn(200, 128, generator=gen)) + 5.0
    y_s = torch.randn(200, 5, generator=gen)
    # Built in float32 (the reference, and frepo before this fix), the kernel's rounding turns its zero
    # eigenvalues negative: by -1e-3 to -6e-3 under every summation order measured, as large as the ridge
    # (on this CPU's order even the ridged kernel fails Cholesky; whether it does depends on the BLAS).
    k32 = (feat_s @ feat_s.T).double()
    assert float(torch.linalg.eigvalsh(k32)[0]) < 0
    weights = krr_weights(feat_s, y_s, 1e-6)
    assert torch.isfinite(weights).all()
    # In float64 end to end it matches the explicit-inverse reference.
    f64 = feat_s.double()
    ref = _numpy_prediction(f64.numpy(), f64.numpy(), y_s.double().numpy(), 1e-6)
    np.testing.assert_allclose((f64 @ krr_weights(f64, y_s.double(), 1e-6)).numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n", "d"), [(128, 128), (100, 128), (200, 128)])  # dual, float64 kernel; primal
def test_float32_features_give_the_float64_weights(n, d):
    """The reference's NaN came from a float32 kernel of (nearly) rank-deficient support features; frepo builds the
    kernel in float64 when n ≥ D/2 (dual) and solves the D×D system in float64 when n > D (primal). The weights
    of float32 features are checked against an independent float64 SVD of the same values: the only error left
    is the float32 result's rounding (measured 2.4e-8 relative in all three cases), where a float32 Gram product
    is off by 4.5e-2 (n = D), 9e-4 (n = 100) and 7e-4 (primal, D×D in float32)."""
    gen = torch.Generator().manual_seed(0)
    feat_s = torch.relu(torch.randn(n, d, generator=gen)) + 5.0  # pooled-ReLU-like: a large common component
    y_s = torch.randn(n, 5, generator=gen)
    f, y = feat_s.double().numpy(), y_s.double().numpy()
    u, sv, vt = np.linalg.svd(f, full_matrices=False)
    ridge = 1e-6 * float((sv**2).sum()) / n  # 1e-6·trace(K)/n
    reference = vt.T @ np.diag(sv / (sv**2 + ridge)) @ u.T @ y  # Fᵀ(FFᵀ + λI)⁻¹Y = (FᵀF + λI)⁻¹FᵀY
    weights = krr_weights(feat_s, y_s, 1e-6)
    assert weights.dtype == torch.float32
    gap = np.linalg.norm(weights.double().numpy() - reference) / np.linalg.norm(reference)
    assert gap < 1e-5, gap


def test_failed_factorisation_gives_nan_not_an_exception():
    feat_s = torch.full((4, 3), float("nan"))
    assert torch.isnan(krr_weights(feat_s, torch.ones(4, 2), 1e-6)).all()


@pytest.mark.parametrize("n", [3, 6, 9], ids=["n<d/2", "d/2<=n<=d", "n>d"])
def test_written_out_gradient_against_finite_differences(n):
    """krr_weights' backward is written out (rank-C products); in every branch (float32-product kernel,
    float64 kernel, primal system) it must equal finite differences, the ridge's trace term included."""
    gen = torch.Generator().manual_seed(0)
    feat_s = torch.randn(n, 8 if n < 9 else 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y_s = torch.randn(n, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    for reg in (1e-2, 0.5):
        assert torch.autograd.gradcheck(lambda f, y, r=reg: krr_weights(f, y, r), (feat_s, y_s))


def test_more_images_than_dimensions_solve_the_same_system_in_the_primal():
    """n > D takes the D×D system (F^T F + λI)^-1 F^T Y: equal in float64 to the dual's prediction
    K_ts (K_ss + λI)^-1 Y_s with the dual's λ, written through the SVD F_s = U S V^T (the explicit n×n
    inverse of a rank-D kernel would itself be off by cond·eps)."""
    rng = np.random.default_rng(0)
    fs, ft, ys = rng.normal(size=(30, 12)), rng.normal(size=(5, 12)), rng.normal(size=(30, 3))
    u, sv, vt = np.linalg.svd(fs, full_matrices=False)
    for reg in (1e-6, 1e-2, 1.0):
        ridge = reg * np.sum(sv**2) / len(fs)  # reg · trace(K_ss) / n
        # K_ts (K_ss + λI)^-1 Y_s = F_t V S U^T (U diag(1/(s² + λ)) U^T + (I - U U^T)/λ) Y_s, and U^T kills the
        # second term.
        ref = ft @ vt.T @ np.diag(sv / (sv**2 + ridge)) @ u.T @ ys
        ours = krr_predict(torch.from_numpy(ft), torch.from_numpy(fs), torch.from_numpy(ys), reg).numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_float32_features_of_more_images_than_dimensions_keep_float32_accuracy():
    """With n > D the n×n kernel has n - D eigenvalues equal to the ridge, so α = (K + λI)^-1 Y carries
    components of size |Y|/λ that F^T α cancels only in exact arithmetic: the dual form's float32 product
    F^T α was 3% off here (31% at n = 1200). The primal system keeps the weights at float32 accuracy."""
    gen = torch.Generator().manual_seed(0)
    feat_s, y_s = torch.rand(600, 512, generator=gen) ** 2, torch.randn(600, 10, generator=gen)
    f64 = feat_s.double()
    u, s, vt = torch.linalg.svd(f64, full_matrices=False)
    ridge = 1e-6 * (s**2).sum() / len(f64)
    reference = vt.T @ torch.diag(s / (s**2 + ridge)) @ u.T @ y_s.double()
    weights = krr_weights(feat_s, y_s, 1e-6).double()
    assert (weights - reference).norm() < 1e-6 * reference.norm()
