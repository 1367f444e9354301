"""Distilled sets from other tools: each format round-trips into the same evaluation inputs, each tool's
preprocessing matches an independent computation, mismatches warn, bad files are clear errors."""

from __future__ import annotations

import datetime
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from frepo.base.errors import FrepoError
from frepo.data import RawDataset, recipes
from frepo.io import foreign


def _raw(name="cifar10", n=300, size=8, channels=3, seed=0) -> RawDataset:
    """Small correlated images (like natural ones) under a registry name, so name-keyed constants apply."""
    rng = np.random.default_rng(seed)

    def split(count):
        base = rng.normal(size=(count, 1, 1, channels)) * 40 + 120
        grad = np.linspace(-1, 1, size)[None, :, None, None] * rng.normal(size=(count, 1, 1, 1)) * 30
        x = np.clip(base + grad + rng.normal(size=(count, size, size, channels)) * 15, 0, 255).astype(np.uint8)
        return x, rng.integers(0, 3, count).astype(np.int64)

    (x_train, y_train), (x_test, y_test) = split(n), split(40)
    return RawDataset(name, x_train, y_train, x_test, y_test, ["a", "b", "c"], True)


@pytest.fixture(autouse=True)
def warnings_are_errors():
    """A round trip must not warn; tests that expect a warning say so with pytest.warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _flat(x_uint8: np.ndarray) -> np.ndarray:
    """uint8 N×H×W×C -> float64 N×(C·H·W) in [0, 1], flattened in C,H,W order."""
    return (x_uint8.astype(np.float64) / 255.0).transpose(0, 3, 1, 2).reshape(len(x_uint8), -1)


def test_reference_preprocessing_is_the_official_frepo_transform(tmp_path):
    raw = _raw()
    pre = recipes.reference_preprocessing(raw, tmp_path)
    # Independent: the reference's fixed CIFAR-10 constants, covariance over N, ZCA reg 0.1·trace/d.
    mean = np.repeat([0.4914, 0.4822, 0.4465], 64)
    std = np.repeat([0.2470, 0.2435, 0.2616], 64)
    z = (_flat(raw.x_train) - mean) / std
    mu = z.mean(0)
    cov = (z - mu).T @ (z - mu) / len(z)
    s, u = np.linalg.eigh(cov + 0.1 * np.trace(cov) / len(cov) * np.eye(len(cov)))
    white = (u * s**-0.5) @ u.T
    expected = ((_flat(raw.x_test) - mean) / std - mu) @ white
    np.testing.assert_allclose(pre(raw.x_test).reshape(40, -1).numpy(), expected, atol=2e-4)
    # Greyscale data is only standardised (MNIST's constants).
    grey = recipes.reference_preprocessing(_raw("mnist", channels=1), tmp_path)
    assert grey.kind == "standard" and grey.mean.tolist() == pytest.approx([0.1307])


def test_mtt_zca_is_kornias_transform(tmp_path):
    raw = _raw()
    pre = recipes.mtt_zca_preprocessing(raw, tmp_path)
    # kornia ZCAWhitening(eps=0.1): pixels in [0, 1], unbiased covariance, eps added to the eigenvalues.
    x = _flat(raw.x_train)
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / (len(x) - 1)
    s, u = np.linalg.eigh(cov)
    white = (u * (s.clip(0) + 0.1) ** -0.5) @ u.T
    np.testing.assert_allclose(pre(raw.x_test).reshape(40, -1).numpy(), (_flat(raw.x_test) - mu) @ white, atol=2e-4)
    np.testing.assert_allclose(pre.to_unit(pre(raw.x_test)).permute(0, 2, 3, 1).numpy(), raw.x_test / 255, atol=1e-4)


def _assert_same_inputs(ds, images, labels, pre, raw):
    """What evaluation uses: the set's images and labels, and the test split in the set's space."""
    assert torch.equal(ds.images, images) and torch.equal(ds.labels, labels)
    torch.testing.assert_close(ds.transform(raw.x_test), pre(raw.x_test), rtol=0, atol=0)


def test_official_frepo_npz_round_trip(tmp_path):
    raw = _raw()
    pre = recipes.reference_preprocessing(raw, tmp_path)
    images = pre(raw.x_train[:6]) + 0.1 * torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "np" / "step000100.npz"
    path.parent.mkdir()
    np.savez(path, image=images.permute(0, 2, 3, 1).numpy(), label=labels.numpy())
    assert foreign.detect_format(path) == "frepo-npz"
    ds = foreign.load_foreign(path, raw, cache_dir=tmp_path)
    _assert_same_inputs(ds, images, labels, pre, raw)
    assert ds.meta["step"] == 100 and ds.meta["config"]["use_flip"] is True  # CIFAR-10: flip on
    assert ds.meta["source"]["preprocessing"] == "reference" and len(ds.meta["checksum"]) == 64


def test_mtt_pt_round_trip_and_missing_labels(tmp_path):
    raw = _raw()
    pre = recipes.mtt_zca_preprocessing(raw, tmp_path)
    images, labels = pre(raw.x_train[:9]), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    torch.save(images, tmp_path / "images_best.pt")
    torch.save(labels, tmp_path / "labels_best.pt")
    ds = foreign.load_foreign(tmp_path / "images_best.pt", raw, cache_dir=tmp_path)
    _assert_same_inputs(ds, images, labels, pre, raw)
    assert ds.meta["ipc"] == 3 and ds.meta["config"]["use_flip"] is False
    torch.save(images, tmp_path / "images_5000.pt")
    with pytest.raises(FrepoError, match="labels_5000.pt is missing"):
        foreign.load_foreign(tmp_path / "images_5000.pt", raw, cache_dir=tmp_path)


def test_dc_res_round_trip_with_numpy_accuracies(tmp_path):
    raw = _raw()
    pre = recipes.dc_preprocessing(raw)
    assert pre.std.tolist() == pytest.approx([0.2023, 0.1994, 0.2010])  # DC's CIFAR-10 constants
    sets = [(pre(raw.x_train[i * 6 : i * 6 + 6]), torch.tensor([0, 0, 1, 1, 2, 2])) for i in range(2)]
    accs = {"ConvNet": [np.float64(0.41), np.float64(0.43)]}
    path = tmp_path / "res_DSA_CIFAR10_ConvNet_2ipc.pt"
    torch.save({"data": [list(s) for s in sets], "accs_all_exps": accs}, path)
    assert foreign.detect_format(path) == "dc"
    ds = foreign.load_foreign(path, raw, entry=1, cache_dir=tmp_path)
    _assert_same_inputs(ds, *sets[1], pre, raw)
    assert ds.meta["source"]["entries"] == 2
    assert torch.equal(foreign.load_foreign(path, raw, cache_dir=tmp_path).images, sets[0][0])
    with pytest.raises(FrepoError, match="entries 0..1"):
        foreign.load_foreign(path, raw, entry=2, cache_dir=tmp_path)
    # distill --init has no --entry: it starts from the first set, and says so
    with pytest.warns(UserWarning, match="holds 2 distilled sets; the run starts from the first"):
        images, _ = foreign.load_start(path, raw, pre, [0, 1, 2], 2)
    assert torch.equal(images, sets[0][0])


@pytest.mark.parametrize("channels", [3, 1])
def test_image_folder_round_trip(tmp_path, channels):
    raw = _raw("toy", channels=channels)
    chosen = [0, 1, 2, 3, 4, 5]
    folder = tmp_path / "pngs"
    for k, i in enumerate(chosen):
        (folder / raw.classes[k % 3]).mkdir(parents=True, exist_ok=True)
        pixels = raw.x_train[i]
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(folder / raw.classes[k % 3] / f"{k}.png")
    ds = foreign.load_foreign(folder, raw, cache_dir=tmp_path)
    pre = recipes.frepo_preprocessing(raw, tmp_path)
    order = [0, 3, 1, 4, 2, 5]  # class folders in order, files sorted by name
    _assert_same_inputs(ds, pre(raw.x_train[order]), torch.tensor([0, 0, 1, 1, 2, 2]), pre, raw)
    # frepo export's numbered class folders (<number>_<name>), copied out without their manifest
    for k, name in enumerate(raw.classes):
        (folder / name).rename(folder / f"{k}_{name}-x")
    numbered = foreign.load_foreign(folder, raw, cache_dir=tmp_path)
    assert torch.equal(numbered.images, ds.images) and torch.equal(numbered.labels, ds.labels)
    (folder / "zebra").mkdir()
    with pytest.raises(FrepoError, match="match neither the class names"):
        foreign.load_foreign(folder, raw, cache_dir=tmp_path)


def test_mismatch_warning_fires_on_raw_pixels_only(tmp_path):
    raw = _raw()
    pixels = torch.from_numpy(raw.x_train[:6]).float() / 255  # N×H×W×C in [0, 1]
    path = tmp_path / "step000001.npz"
    np.savez(path, image=pixels.numpy(), label=np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]])
    with pytest.warns(UserWarning, match="like raw pixels.*--preprocess"):
        foreign.load_foreign(path, raw, cache_dir=tmp_path)
    # Told the truth, frepo preprocesses the pixels its own way, silently.
    ds = foreign.load_foreign(path, raw, preprocess="pixels", cache_dir=tmp_path)
    expected = recipes.frepo_preprocessing(raw, tmp_path).from_unit(pixels.permute(0, 3, 1, 2))
    torch.testing.assert_close(ds.images, expected)
    # 0..255 values claimed as DC-normalised: the spread gives them away.
    torch.save(pixels.permute(0, 3, 1, 2) * 255, tmp_path / "images_0.pt")
    torch.save(torch.tensor([0, 0, 1, 1, 2, 2]), tmp_path / "labels_0.pt")
    with pytest.warns(UserWarning, match="spread"):
        foreign.load_foreign(tmp_path / "images_0.pt", raw, preprocess="dc", cache_dir=tmp_path)
    # Correctly preprocessed images never warn (warnings are errors in this module), distilled drift included.
    for claim in ("reference", "mtt-zca", "dc", "frepo"):
        pre = recipes.claimed_preprocessing(claim, raw, tmp_path)
        assert recipes.preprocessing_mismatch(1.5 * pre(raw.x_train[:50]), pre(raw.x_train[:500])) is None


def test_unsafe_pickles_and_bad_files_are_clear_errors(tmp_path):
    raw = _raw()
    torch.save({"data": [[torch.zeros(2, 3, 8, 8), datetime.date(2022, 1, 1)]]}, tmp_path / "res_x.pt")
    with pytest.raises(FrepoError, match="weights_only"):
        foreign.load_foreign(tmp_path / "res_x.pt", raw, cache_dir=tmp_path)
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 50)
    with pytest.raises(FrepoError, match="corrupt or truncated"):
        foreign.detect_format(tmp_path / "broken.pt")
    (tmp_path / "set.txt").write_text("x")
    with pytest.raises(FrepoError, match="cannot tell the format"):
        foreign.detect_format(tmp_path / "set.txt")
    np.savez(tmp_path / "step1.npz", image=np.zeros((4, 3, 8, 8), np.float32), label=np.zeros((4, 3), np.float32))
    # The shape as the file holds it (it was printed transposed, as if channels-first)
    with pytest.raises(FrepoError, match=r"images of shape \(4, 3, 8, 8\), expected N×H×W×C = N×8×8×3"):
        foreign.load_foreign(tmp_path / "step1.npz", raw, cache_dir=tmp_path)
    np.savez(tmp_path / "step2.npz", image=np.zeros((4, 8, 8, 3), np.float32), label=np.zeros((4, 5), np.float32))
    with pytest.raises(FrepoError, match="do not fit 4 images of 3 classes"):
        foreign.load_foreign(tmp_path / "step2.npz", raw, cache_dir=tmp_path)
    with pytest.raises(FrepoError, match="pass --dataset"):
        foreign.load_set(tmp_path / "step2.npz")
    with pytest.raises(FrepoError, match="no normalisation constants"):
        recipes.dc_preprocessing(_raw("toy"))
    # numpy's own message advised loading "unsafely" with allow_pickle (an object array, or no archive at all)
    np.savez(tmp_path / "step3.npz", image=np.array([None] * 4, dtype=object), label=np.zeros((4, 3), np.float32))
    with pytest.raises(FrepoError, match="holds Python objects, not arrays of numbers; frepo loads no pickles"):
        foreign.load_foreign(tmp_path / "step3.npz", raw, cache_dir=tmp_path)
    (tmp_path / "step4.npz").write_bytes(b"\x80\x04not a zip")
    with pytest.raises(FrepoError, match="not an .npz archive") as caught:
        foreign.load_foreign(tmp_path / "step4.npz", raw, cache_dir=tmp_path, fmt="frepo-npz")
    assert "allow_pickle" not in str(caught.value)


def test_a_frepo_file_under_another_suffix_is_read_by_its_content(tmp_path):
    """`frepo subset --out sub.pt` writes frepo's safetensors file; its .pt name had it read as a torch file
    ("not a torch file, or corrupt or truncated")."""
    from frepo import DataConfig, make_subset, save_distilled
    from frepo.io.artifact import load_distilled

    ds = make_subset(DataConfig(dataset="digits"), 1)
    for name in ("sub.pt", "sub.npz", "sub.bin"):
        save_distilled(ds, tmp_path / name)
        assert foreign.detect_format(tmp_path / name) == "frepo", name
        assert torch.equal(load_distilled(tmp_path / name).images, ds.images)
    torch.save(torch.zeros(2, 3, 8, 8), tmp_path / "images_x.pt")  # torch's own files keep their readers
    assert foreign.detect_format(tmp_path / "images_x.pt") == "mtt"
    np.savez(tmp_path / "step1.npz", image=np.zeros((4, 8, 8, 3), np.float32))
    assert foreign.detect_format(tmp_path / "step1.npz") == "frepo-npz"


def test_dd_rankings_images_pt_is_read_in_the_space_given_and_never_guessed(tmp_path):
    """frepo export --format pt's default space is DD-Ranking's use_zca-false one; its images.pt and labels.pt
    out of their folder were read as MTT's ZCA (auto), a few points below the set's accuracy, silently."""
    from frepo.data.recipes import DC_STATS, DDRANKING_STATS

    raw = _raw("cifar100")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DDRANKING_STATS["cifar100"])
    pixels = torch.from_numpy(raw.x_train[:6]).permute(0, 3, 1, 2).float() / 255
    torch.save((pixels - mean) / std, tmp_path / "images.pt")
    torch.save(torch.arange(6) % 3, tmp_path / "labels.pt")
    with pytest.raises(FrepoError, match="pass --preprocess ddranking"):
        foreign.load_foreign(tmp_path / "images.pt", raw, cache_dir=tmp_path)
    ds = foreign.load_foreign(tmp_path / "images.pt", raw, preprocess="ddranking", cache_dir=tmp_path)
    assert torch.allclose(ds.preprocessing.to_unit(ds.images), pixels, atol=1e-6)
    assert DDRANKING_STATS["cifar100"] != DC_STATS["cifar100"]  # DD-Ranking's CIFAR-100 is not DC's
    zca = foreign.load_foreign(tmp_path / "images.pt", raw, preprocess="ddranking-zca", cache_dir=tmp_path)
    assert zca.preprocessing.kind == "zca"
    with pytest.raises(FrepoError, match="--init .*a loose images.pt does not say its space"):  # no --preprocess
        foreign.load_start(tmp_path / "images.pt", raw, ds.preprocessing, [0, 1, 2], 2)


def test_files_nested_or_typed_beyond_reading_are_one_line(tmp_path):
    """A manifest or set header of arrays nested thousands deep raised RecursionError, and images of strings
    torch's TypeError: tracebacks, where a damaged file is one line."""
    import numpy as np

    from frepo.base.errors import FrepoError
    from frepo.io.export import read_manifest
    from frepo.io.foreign.files import check_images

    deep = tmp_path / "export.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FrepoError, match="cannot read the export manifest"):
        read_manifest(deep)
    with pytest.raises(FrepoError, match="images must be floating point, got <U1"):
        check_images(np.array([["a"]]), (1, 1, 1), "x.npz")
