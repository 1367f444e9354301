"""Preprocessing: standardisation, ZCA whitening (with its regulariser) and exact inversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frepo.data import preprocess
from frepo.data.preprocess import (
    Preprocessing,
    block_stride,
    cached_preprocessing,
    fit_preprocessing,
    resolve_kind,
)


def _images(n=600, size=6, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    # Correlated pixels (a smooth base image per sample plus noise), like natural images.
    base = rng.normal(size=(n, 1, 1, channels)) * 40 + 120
    grad = np.linspace(-1, 1, size)[None, :, None, None] * rng.normal(size=(n, 1, 1, 1)) * 30
    x = base + grad + rng.normal(size=(n, size, size, channels)) * 15
    return np.clip(x, 0, 255).astype(np.uint8)


def test_standardisation_is_per_channel_zero_mean_unit_std():
    x = _images()
    pre = fit_preprocessing(x, "standard")
    out = pre(x)
    assert out.shape == (600, 3, 6, 6) and out.dtype == torch.float32
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(dim=(0, 2, 3), unbiased=False).numpy(), 1, atol=1e-4)


@pytest.mark.parametrize("zca_reg", [0.0, 0.1])
def test_zca_whitens_up_to_the_regulariser(zca_reg):
    x = _images()
    pre = fit_preprocessing(x, "zca", zca_reg)
    flat = pre(x).reshape(len(x), -1).double()
    cov_white = torch.cov(flat.T, correction=0)
    # Reference covariance of the standardised images, and the exact expected result:
    # W C W = U diag(s / (s + reg)) U^T with reg = zca_reg * trace(C) / d.
    std = Preprocessing("standard", pre.mean, pre.std)(x).reshape(len(x), -1).double()
    cov = torch.cov(std.T, correction=0)
    d = cov.shape[0]
    evals, evecs = torch.linalg.eigh(cov)
    reg = zca_reg * torch.trace(cov) / d
    expected = (evecs * (evals / (evals + reg))) @ evecs.T
    # W is rounded to float16's values (`as_stored`, what files hold): 9.8e-4 and 8.6e-4 measured here,
    # against 2e-4 before; a regulariser 10% off moves entries by ~1e-2.
    torch.testing.assert_close(cov_white, expected, atol=2e-3, rtol=0)
    if zca_reg == 0.0:
        torch.testing.assert_close(cov_white, torch.eye(d, dtype=torch.float64), atol=2e-3, rtol=0)
    np.testing.assert_allclose(flat.mean(0).numpy(), 0, atol=1e-4)


def test_zca_inverts_to_pixels():
    x = _images()
    pre = fit_preprocessing(x, "zca", 0.1)
    back = pre.to_unit(pre(x))
    np.testing.assert_allclose(back.permute(0, 2, 3, 1).numpy(), x / 255.0, atol=1e-4)


def test_zca_with_fewer_images_than_dimensions_stays_finite_and_invertible():
    x = _images(n=20, size=6)  # 20 images, 108 dimensions: the reference's rank control applies
    pre = fit_preprocessing(x, "zca", 0.1)
    out = pre(x)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(pre.to_unit(out).permute(0, 2, 3, 1).numpy(), x / 255.0, atol=1e-4)


def test_gram_fit_matches_the_dense_fit_off_its_arbitrary_direction():
    """N < D fits from the N×N Gram matrix. Against the dense fit (the D×D covariance's eigenvectors, in
    float64): the fitting images whiten identically, and the two matrices differ by at most a rank-one
    term — the one null-space direction the dense eigensolver picks arbitrarily and scales."""
    x = _images(n=20, size=6)  # 20 images, 108 dimensions
    standard = Preprocessing("standard", *preprocess.channel_stats(x))
    mean, basis, scale = preprocess.gram_whitening(x, standard, 0.1)
    low_rank = Preprocessing("zca", standard.mean, standard.std, 0.1, mean, basis=basis, scale=scale)
    whiten, unwhiten = low_rank.matrices()
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-5, rtol=0)  # orthonormal
    zca_mean, cov = preprocess.mean_covariance(x, standard)
    dense, dense_inverse = preprocess.whitening_matrices(cov, len(x), 0.1)
    torch.testing.assert_close(mean, zca_mean.float(), atol=1e-5, rtol=0)
    flat = standard(x).reshape(len(x), -1) - zca_mean.float()
    a, b = flat @ whiten, flat @ dense
    assert (a - b).norm() <= 1e-5 * b.norm(), float((a - b).norm() / b.norm())
    singular = torch.linalg.svdvals((whiten - dense).double())
    assert singular[1] <= 1e-5 * singular[0] + 1e-6, singular[:3]  # rank one
    eye = torch.eye(len(whiten))
    torch.testing.assert_close(whiten @ unwhiten, eye, atol=1e-4, rtol=0)
    torch.testing.assert_close(dense @ dense_inverse, eye, atol=1e-4, rtol=0)
    pre = fit_preprocessing(x, "zca", 0.1)  # fewer images than dimensions: the Gram fit, in low-rank form
    assert pre.whiten is None and torch.equal(pre.basis, basis) and basis.shape == (108, 19)
    out = pre(x)  # the low-rank form applied: as the dense matrices do
    torch.testing.assert_close(out.reshape(len(x), -1), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        pre.to_unit(out).permute(0, 2, 3, 1), torch.from_numpy(x / 255.0).float(), atol=1e-4, rtol=0
    )


def test_the_low_rank_form_travels_in_the_file_and_is_small(tmp_path):
    from frepo.io.artifact import DistilledSet, load_distilled, save_distilled

    x = _images(n=20, size=6)
    pre = fit_preprocessing(x, "zca", 0.1)
    assert pre.params()["form"] == "low_rank"
    assert set(pre.tensors()) == {"pre_mean", "pre_std", "pre_zca_mean", "pre_zca_basis", "pre_zca_scale"}
    meta = {"dataset": "toy", "classes": ["a", "b"], "ipc": 1}
    ds = DistilledSet(pre(x[:2]), torch.tensor([0, 1]), pre, meta)
    save_distilled(ds, tmp_path / "set.safetensors")
    back = load_distilled(tmp_path / "set.safetensors")
    assert back.preprocessing.basis.shape == (108, 19) and back.preprocessing.whiten is None
    torch.testing.assert_close(back.transform(x), pre(x), atol=0, rtol=0)
    # 108×19 + 19 numbers instead of two 108×108 matrices.
    assert sum(t.numel() for t in pre.tensors().values()) < 0.2 * 2 * 108 * 108


def test_a_dense_whitening_is_stored_as_float16_values_and_its_inverse_derived():
    """as_stored: W rounded to float16 (half an ulp: 2^-11 of each entry) and W⁻¹ the inverse of that W."""
    x = _images(n=300, size=4)  # 300 images, 48 dimensions: the dense fit
    standard = Preprocessing("standard", *preprocess.channel_stats(x))
    _, cov = preprocess.mean_covariance(x, standard)
    exact, _ = preprocess.whitening_matrices(cov, len(x), 0.1)
    whiten, unwhiten = preprocess.as_stored(exact)
    assert torch.equal(whiten, whiten.half().float()) and torch.equal(whiten, whiten.T)
    assert bool(((whiten - exact).abs() <= 2**-11 * exact.abs() + 1e-12).all())
    torch.testing.assert_close(whiten @ unwhiten, torch.eye(48), atol=1e-5, rtol=0)
    pre = fit_preprocessing(x, "zca", 0.1)
    assert torch.equal(pre.whiten, whiten) and pre.params()["form"] == preprocess.PACKED


def test_the_upper_triangle_travels_in_the_file_bit_for_bit_and_older_files_load(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from frepo.base.errors import FrepoError
    from frepo.io.artifact import DistilledSet, load_distilled, save_distilled

    x = _images(n=300, size=4)
    pre = fit_preprocessing(x, "zca", 0.1)
    meta = {"dataset": "toy", "classes": ["a", "b"], "ipc": 1}
    ds = DistilledSet(pre(x[:2]), torch.tensor([0, 1]), pre, meta)
    save_distilled(ds, tmp_path / "set.safetensors")
    stored = load_file(tmp_path / "set.safetensors")
    packed = stored["pre_whiten_upper_float16_zlib"]
    assert packed.dtype == torch.uint8 and "pre_whiten" not in stored and "pre_unwhiten" not in stored
    rows, cols = torch.triu_indices(48, 48)
    assert torch.equal(preprocess.unpack_floats(packed, torch.float16, 48 * 49 // 2), pre.whiten[rows, cols].half())
    back = load_distilled(tmp_path / "set.safetensors")
    assert back.preprocessing.unwhiten is None  # derived on first use
    assert torch.equal(back.preprocessing.whiten, pre.whiten)  # no loss
    assert torch.equal(back.transform(x), pre(x))  # the run's transform, bit for bit
    assert torch.equal(back.preprocessing.to_unit(ds.images), pre.to_unit(ds.images))
    # The files of earlier formats load: the plain triangle ("upper"), and both float32 matrices (no "form").
    for old_tensors, old_params in (
        ({"pre_whiten_upper": pre.whiten[rows, cols].half()}, {"kind": "zca", "zca_reg": 0.1, "form": "upper"}),
        (
            {"pre_whiten": pre.whiten + 1e-3, "pre_unwhiten": torch.linalg.inv(pre.whiten + 1e-3).contiguous()},
            {"kind": "zca", "zca_reg": 0.1},
        ),
    ):
        monkeypatch.setattr(
            Preprocessing,
            "tensors",
            lambda self, t=old_tensors: {
                "pre_mean": self.mean,
                "pre_std": self.std,
                "pre_zca_mean": self.zca_mean,
                **t,
            },
        )
        monkeypatch.setattr(Preprocessing, "params", lambda self, p=old_params: p)
        save_distilled(ds, tmp_path / "old.safetensors")
        monkeypatch.undo()
        old = load_distilled(tmp_path / "old.safetensors")
        if "pre_unwhiten" in old_tensors:
            assert torch.equal(old.preprocessing.whiten, old_tensors["pre_whiten"])
            assert torch.equal(old.preprocessing.unwhiten, old_tensors["pre_unwhiten"])
        else:
            assert torch.equal(old.transform(x), pre(x))
    # Re-saved, the oldest file's W (not float16 values) keeps float32: the same transform, bit for bit.
    save_distilled(old, tmp_path / "resaved.safetensors")
    assert "pre_whiten_upper_float32_zlib" in load_file(tmp_path / "resaved.safetensors")
    resaved = load_distilled(tmp_path / "resaved.safetensors")
    assert torch.equal(resaved.preprocessing.whiten, old.preprocessing.whiten)
    assert torch.equal(resaved.transform(x), old.transform(x))
    # A damaged, truncated or wrong-sized stream, and a plain triangle of the wrong length, are clear errors.
    flipped = packed.clone()
    flipped[len(flipped) // 2] ^= 0xFF
    for bad, match in ((flipped, "corrupt|wrong number"), (packed[:-9], "corrupt|wrong number")):
        with pytest.raises(FrepoError, match=match):
            Preprocessing.from_tensors(pre.params(), {**stored, "pre_whiten_upper_float16_zlib": bad})
    small = preprocess.pack_floats(pre.whiten[rows, cols][:-1].half())
    with pytest.raises(FrepoError, match="wrong number of values"):
        Preprocessing.from_tensors(pre.params(), {**stored, "pre_whiten_upper_float16_zlib": small})
    with pytest.raises(FrepoError, match="not the upper triangle"):
        Preprocessing.from_tensors(
            {"kind": "zca", "zca_reg": 0.1, "form": "upper"},
            {**stored, "pre_whiten_upper": pre.whiten[rows, cols][:-1]},
        )


def test_a_large_dense_whitening_is_quantised_within_its_tolerance_on_real_images(shared_data_dir):
    """Above FLOAT16_MAX_DIMS, W holds multiples of a power-of-two step (`quantisation_step`) chosen for a
    spectral error of 1e-3 of ‖W‖₂. Checked on MNIST's training images (784 dims: the rule applied to a fit
    of another size) against the float64 eigendecomposition, with the float16 rounding of smaller fits as
    the yardstick."""
    with np.load(shared_data_dir / "mnist.npz") as data:
        x, held_out = data["x_train"][:3000], data["x_test"][:500]
    x, held_out = x.reshape(*x.shape[:3], -1), held_out.reshape(*held_out.shape[:3], -1)
    mean, std = preprocess.channel_stats(x)
    zca_mean, cov = preprocess.mean_covariance(x, Preprocessing("standard", mean, std))
    evals, evecs = torch.linalg.eigh(cov + 0.1 * torch.trace(cov) / len(cov) * torch.eye(len(cov), dtype=cov.dtype))
    exact = (evecs * evals.rsqrt()) @ evecs.T  # float64, independent of `whitening`
    _, _, gain = preprocess.whitening(cov, len(x), 0.1)
    assert gain == pytest.approx(float(evals.min().rsqrt()), rel=1e-6)  # ‖W‖₂
    step = preprocess.quantisation_step(gain, len(cov))
    assert np.frexp(step)[0] == 0.5 and 0.5e-3 < step * (len(cov) / 3) ** 0.5 / gain <= 1e-3
    whiten, unwhiten = preprocess.as_stored(exact.float(), step)
    assert torch.equal(whiten, ((whiten.double() / step).round() * step).float())  # multiples of the step
    spectral = torch.linalg.matrix_norm(whiten.double() - exact, 2) / gain
    float16 = torch.linalg.matrix_norm(exact.float().half().double() - exact, 2) / gain
    # Measured: 4.8e-4 (the float16 rounding: 3.3e-4); the bound is the tolerance itself.
    assert spectral <= preprocess.QUANTISED_TOLERANCE and float16 < spectral
    quantised = Preprocessing("zca", mean, std, 0.1, zca_mean.float(), whiten, unwhiten, whiten_step=step)
    dense = Preprocessing("zca", mean, std, 0.1, zca_mean.float(), exact.float(), torch.linalg.inv(exact).float())
    z, z_dense = quantised(held_out), dense(held_out)
    # Each whitened value moves by at most ‖W_q − W‖₂·‖x‖ (x: the standardised image): 0.074 here; measured
    # 4.5e-3, on a spread (std) of 0.65.
    bound = spectral * gain * Preprocessing("standard", mean, std)(held_out).flatten(1).norm(dim=1).max()
    assert (z - z_dense).abs().max() <= bound
    # The way back is W_q's exact inverse: pixels of the quantised transform return to the image.
    torch.testing.assert_close(quantised.to_unit(z), torch.from_numpy(held_out).permute(0, 3, 1, 2) / 255.0)


def test_a_quantised_whitening_travels_in_the_file_bit_for_bit(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from frepo.base.errors import FrepoError
    from frepo.io.artifact import DistilledSet, load_distilled, save_distilled

    monkeypatch.setattr(preprocess, "FLOAT16_MAX_DIMS", 16)  # 48 dims: the rule of a 64×64 fit
    x = _images(n=300, size=4)
    pre = fit_preprocessing(x, "zca", 0.1)
    step = pre.whiten_step
    assert step is not None and torch.equal(pre.whiten, (pre.whiten / step).round() * step)
    torch.testing.assert_close(pre.whiten @ pre.inverse(), torch.eye(48), atol=1e-5, rtol=0)
    ds = DistilledSet(pre(x[:2]), torch.tensor([0, 1]), pre, {"dataset": "toy", "classes": ["a", "b"], "ipc": 1})
    save_distilled(ds, tmp_path / "set.safetensors")
    stored = load_file(tmp_path / "set.safetensors")
    assert "pre_whiten_upper_float16_zlib" not in stored and stored["pre_whiten_step"].item() == pre.whiten_step
    rows, cols = torch.triu_indices(48, 48)
    packed = stored["pre_whiten_upper_int32_zlib"]
    ints = preprocess.unzigzag(preprocess.unpack_floats(packed, torch.int32, 48 * 49 // 2))
    assert torch.equal(ints.double() * pre.whiten_step, pre.whiten[rows, cols].double())
    back = load_distilled(tmp_path / "set.safetensors")
    assert back.preprocessing.whiten_step == pre.whiten_step and torch.equal(back.preprocessing.whiten, pre.whiten)
    assert torch.equal(back.transform(x), pre(x)) and torch.equal(back.preprocessing.inverse(), pre.inverse())
    # The preprocessing cache holds the same form.
    again = cached_preprocessing(x, "zca", 0.1, tmp_path / "cache")
    assert torch.equal(cached_preprocessing(x, "zca", 0.1, tmp_path / "cache").whiten, again.whiten)
    assert torch.equal(again.whiten, pre.whiten)
    # A missing, malformed or non-power-of-two step is a clear error.
    for step, match in (
        (None, "pre_whiten_step is missing"),
        (torch.tensor([1e-4], dtype=torch.float64), "power of two"),
        (torch.tensor([-(2.0**-12)], dtype=torch.float64), "power of two"),
        (torch.tensor(2.0**-12), "expected one float64"),
    ):
        bad = {k: v for k, v in stored.items() if k != "pre_whiten_step"}
        if step is not None:
            bad["pre_whiten_step"] = step
        with pytest.raises(FrepoError, match=match):
            Preprocessing.from_tensors(pre.params(), bad)
    with pytest.raises(FrepoError, match="exceed"):
        preprocess.zigzag(torch.tensor([2**30]))


def test_serialisation_round_trip_and_cache(tmp_path):
    x = _images(n=200)
    pre = cached_preprocessing(x, "zca", 0.1, tmp_path)
    cached_files = list((tmp_path / "preprocessing").glob("*.safetensors"))
    assert len(cached_files) == 1
    again = cached_preprocessing(x, "zca", 0.1, tmp_path)  # read from the cache
    torch.testing.assert_close(pre(x), again(x))
    rebuilt = Preprocessing.from_tensors(pre.params(), pre.tensors())
    torch.testing.assert_close(pre(x), rebuilt(x))
    cached_files[0].write_bytes(b"garbage")  # a damaged cache entry is recomputed, not trusted
    torch.testing.assert_close(cached_preprocessing(x, "zca", 0.1, tmp_path)(x), pre(x))


def test_a_read_only_cache_costs_a_fit_said_not_a_traceback(tmp_path, monkeypatch):
    """A damaged entry in a read-only cache folder was a traceback (its unlink failed), and a fit that could not be
    kept (a dataset folder shared read-only) was fitted again on every run unsaid."""
    from pathlib import Path

    from frepo.base.atomic import WriteError
    from frepo.data import preprocess

    x = _images(n=50)
    pre = cached_preprocessing(x, "zca", 0.1, tmp_path)
    (entry,) = (tmp_path / "preprocessing").glob("*.safetensors")
    entry.write_bytes(b"garbage")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def cannot_write(tensors, path, metadata):
        raise WriteError(f"cannot write {path}: read-only file system")

    monkeypatch.setattr(Path, "unlink", read_only)
    monkeypatch.setattr(preprocess, "build_lock", read_only)
    monkeypatch.setattr("frepo.base.atomic.atomic_save_safetensors", cannot_write)
    with pytest.warns(UserWarning, match=r"the fitted zca is not kept in .*preprocessing \(cannot write .*read-only"):
        again = cached_preprocessing(x, "zca", 0.1, tmp_path)
    torch.testing.assert_close(again(x), pre(x))


def test_one_process_fits_a_cache_entry_the_others_wait_and_read_it(tmp_path):
    """The ranks of a torchrun launch prepare their data at once: each made its own ZCA pass over the split."""
    import threading
    import time

    from frepo.data.preprocess import cached

    x, fits, results = _images(n=50), [], []

    def build():
        fits.append(1)
        time.sleep(0.5)  # long enough for the other thread to find no entry yet, without the lock
        return fit_preprocessing(x, "zca", 0.1)

    def rank():
        results.append(cached("zca", x, 0.1, tmp_path, build))

    threads = [threading.Thread(target=rank) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fits) == 1 and len(results) == 2 and torch.equal(results[0](x), results[1](x))
    assert not list((tmp_path / "preprocessing").glob(".*.lock"))  # the lock goes with its holder


def test_auto_kind_follows_the_reference():
    assert resolve_kind("auto", (1, 28, 28)) == "standard"
    assert resolve_kind("auto", (3, 32, 32)) == "zca"
    assert resolve_kind("auto", (3, 64, 64)) == "zca"
    assert resolve_kind("auto", (3, 128, 128)) == "zca_block"  # ImageNette: the checkerboard block ZCA
    assert block_stride((3, 128, 128)) == 2
    assert resolve_kind("none", (3, 32, 32)) == "none"


def _block_zca_reference(images: np.ndarray, stride: int, zca_reg: float) -> np.ndarray:
    """The reference's checkerboard block ZCA in float64 numpy, written from its description: standardise per
    channel, centre by the full-image mean, one covariance per s×s-interleaved sub-image averaged over them,
    one whitening matrix applied to every sub-image."""
    x = images.astype(np.float64) / 255.0
    x = (x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))
    x = x.transpose(0, 3, 1, 2)  # N×C×H×W
    n = len(x)
    x = x - x.reshape(n, -1).mean(0).reshape(x.shape[1:])
    offsets = [(i, j) for i in range(stride) for j in range(stride)]
    blocks = {o: x[:, :, o[0] :: stride, o[1] :: stride].reshape(n, -1) for o in offsets}
    cov = sum(b.T @ b for b in blocks.values()) / (n * len(offsets))
    d = cov.shape[0]
    evals, evecs = np.linalg.eigh(cov + zca_reg * np.trace(cov) / d * np.eye(d))
    whiten = (evecs / np.sqrt(evals)) @ evecs.T
    out = np.empty_like(x)
    for (i, j), b in blocks.items():
        out[:, :, i::stride, j::stride] = (b @ whiten).reshape(n, x.shape[1], -1, x.shape[3] // stride)
    return out


def test_block_zca_matches_an_independent_float64_computation(monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_ZCA_DIMS", 48)  # 8×8×3 images split into 2×2 sub-images of 4×4×3
    images = _images(n=300, size=8)
    assert resolve_kind("auto", (3, 8, 8)) == "zca_block" and block_stride((3, 8, 8)) == 2
    pre = fit_preprocessing(images, "zca_block", 0.1)
    assert pre.stride == 2 and pre.whiten.shape == (48, 48)
    expected = _block_zca_reference(images, 2, 0.1)
    # W rounded to float16's values (`as_stored`): 2.7e-3 measured on these whitened pixels of scale ~1.
    np.testing.assert_allclose(pre(images).numpy(), expected, atol=5e-3)
    # Invertible back to pixels, and the transform travels through its serialised form.
    np.testing.assert_allclose(pre.to_unit(pre(images)).permute(0, 2, 3, 1).numpy(), images / 255.0, atol=1e-4)
    back = Preprocessing.from_tensors(pre.params(), pre.tensors())
    assert torch.equal(back(images), pre(images))


def test_channel_stats_are_the_float64_mean_and_std_of_the_pixels():
    """From exact per-channel histograms: numpy's float64 mean and population std of the [0, 1] pixels,
    to float32 rounding; a row count past the 4096-row chunk is covered."""
    x = np.random.default_rng(3).integers(0, 256, size=(4100, 5, 4, 3), dtype=np.uint8)
    x[:, :, :, 1] //= 3  # the channels differ
    mean, std = preprocess.channel_stats(x)
    pixels = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean.numpy(), pixels.mean(axis=(0, 1, 2)), rtol=2**-23, atol=0)
    np.testing.assert_allclose(std.numpy(), pixels.std(axis=(0, 1, 2)), rtol=2**-22, atol=0)
    assert mean.dtype == torch.float32 and mean.shape == (3,)


def test_a_low_rank_fit_is_cached_per_device_threads_and_torch_and_a_dense_one_for_all(tmp_path, monkeypatch):
    """The low-rank ZCA (fewer images than dimensions) is stored unrounded: an entry another device, thread count
    or torch version filled gave the same command other preprocessing. The dense form, rounded as stored, is
    shared."""
    few, many = _images(n=40), _images(n=400)  # 40 < 6·6·3 = 108 dimensions < 400
    for images in (few, many):
        cached_preprocessing(images, "zca", 0.1, tmp_path)
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    for images in (few, many):
        cached_preprocessing(images, "zca", 0.1, tmp_path)
    assert len(list((tmp_path / "preprocessing").glob("*.safetensors"))) == 3  # the low-rank fit twice
