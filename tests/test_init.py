"""`frepo distill --init FILE`: a run starts from a given set (a frepo file or another tool's), carried
into the run's own preprocessing, instead of its seeded real images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from frepo.cli import main
from frepo.data import load_dataset, recipes
from frepo.io.artifact import load_distilled
from frepo.method.krr import centered_one_hot

# One outer step at a learning rate too small to move anything: the result is the starting set.
STILL = ["--steps", "1", "--lr", "1e-12", "--width", "8", "--num-models", "2", "--batch-size", "64"]
STILL += ["--eval-steps", "5", "--snapshot-every", "0"]


# Herding on an untrained narrow network: a set unlike the seeded start, in seconds.
FAST_FEATURES = ["--feature-steps", "0", "--feature-width", "16"]


def distill(capsys, out, *args):
    code = main(["distill", "--dataset", "digits", "--out", str(out), *STILL, *map(str, args)])
    return code, capsys.readouterr().err


def test_a_subset_file_is_the_start_exactly(tmp_path, capsys):
    subset = tmp_path / "herding.safetensors"
    herding = ["subset", "--dataset", "digits", "--ipc", "2", "--method", "herding", "--out", str(subset)]
    assert main(herding + FAST_FEATURES) == 0
    code, err = distill(capsys, tmp_path / "run", "--ipc", 2, "--init", subset)
    assert code == 0, err
    start, run = load_distilled(subset), load_distilled(tmp_path / "run" / "distilled.safetensors")
    torch.testing.assert_close(run.images, start.images, rtol=1e-9, atol=1e-9)  # the same preprocessing: untouched
    torch.testing.assert_close(run.labels, centered_one_hot(start.labels, 10), rtol=0, atol=1e-9)
    assert main(["distill", "--dataset", "digits", "--out", str(tmp_path / "seeded"), "--ipc", "2", *STILL]) == 0
    seeded = load_distilled(tmp_path / "seeded" / "distilled.safetensors")
    assert (seeded.images - run.images).abs().max() > 0.5  # without --init: the run's own seeded images
    assert "biased upward" not in err  # the subset was made with the run's hold-out

    # A subset made from the whole split (--val-size 0) may hold images the run validates on: said.
    whole = tmp_path / "whole.safetensors"
    assert main(herding[:-1] + [str(whole), "--val-size", "0", *FAST_FEATURES]) == 0
    code, err = distill(capsys, tmp_path / "biased", "--ipc", 2, "--init", whole)
    assert code == 0, err
    assert "was made from training images this run holds out for validation" in err and "biased upward" in err


def test_an_official_npz_is_carried_through_pixels_into_the_run(tmp_path, capsys):
    raw = load_dataset("digits")
    reference = recipes.reference_preprocessing(raw, tmp_path)
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(np.flatnonzero(raw.y_train == c), 2, replace=False) for c in range(10)])
    idx = idx[rng.permutation(len(idx))]  # any order: the run sorts the set class-major
    images = reference(raw.x_train[idx])
    labels = torch.from_numpy(rng.normal(size=(20, 10)).astype(np.float32) * 0.01)
    labels += centered_one_hot(torch.from_numpy(raw.y_train[idx]), 10)
    np.savez(tmp_path / "step000000.npz", image=images.permute(0, 2, 3, 1).numpy(), label=labels.numpy())
    code, err = distill(capsys, tmp_path / "run", "--ipc", 2, "--init", tmp_path / "step000000.npz")
    assert code == 0, err
    run = load_distilled(tmp_path / "run" / "distilled.safetensors")
    order = np.argsort(raw.y_train[idx], kind="stable")
    pixels = reference.to_unit(images)[order]
    torch.testing.assert_close(run.preprocessing.to_unit(run.images), pixels, rtol=0, atol=1e-5)
    torch.testing.assert_close(run.labels, labels[order], rtol=0, atol=1e-6)  # learned labels are kept
    assert not torch.equal(run.preprocessing.mean, reference.mean)  # the spaces differ: the pixels agree
    # Another tool's set records no hold-out (frepo reads it as made from the whole split): "may have been", not "was"
    assert "records no hold-out, so may have been made from any of the training images this run holds out" in err


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: d / "missing.npz", "missing.npz"),
        (lambda d: _npz(d, per_class=1), "holds [1, 1, 1, 1, 1, 1, 1, 1, 1, 1] images per class"),
        (
            lambda d: _npz(d, per_class=2, side=9),
            "step1.npz: images of shape (20, 9, 9, 1), expected N×H×W×C = N×8×8×1",
        ),
    ],
)
def test_a_start_that_does_not_fit_is_one_line(tmp_path, capsys, make, fragment):
    code, err = distill(capsys, tmp_path / "run", "--ipc", 2, "--init", make(tmp_path))
    lines = [line for line in err.splitlines() if line.startswith("frepo: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], err
    assert not (tmp_path / "run").exists()  # a failed start writes nothing


def _npz(folder, per_class: int, side: int = 8):
    image = np.zeros((10 * per_class, side, side, 1), np.float32)
    label = np.repeat(np.eye(10, dtype=np.float32), per_class, axis=0) - 0.1
    np.savez(folder / "step1.npz", image=image, label=label)
    return folder / "step1.npz"


def test_another_tools_file_in_another_space_or_entry_starts_through_its_export(tmp_path, capsys):
    """distill has no --preprocess or --entry: its warnings give the export that starts from what the user meant,
    and that export's set is the start exactly."""
    raw = load_dataset("digits")
    rng = np.random.default_rng(0)
    idx = [np.concatenate([rng.choice(np.flatnonzero(raw.y_train == c), 2, replace=False) for c in range(10)])]
    idx.append(idx[0][::-1].copy())
    pixels = [torch.from_numpy(raw.x_train[i]).permute(0, 3, 1, 2).float() / 255 for i in idx]  # not DC's space
    res = tmp_path / "res_DC_digits_ConvNet_2ipc.pt"
    torch.save({"data": [[p, torch.from_numpy(raw.y_train[i])] for p, i in zip(pixels, idx)]}, res)
    code, said = distill(capsys, tmp_path / "as-is", "--ipc", 2, "--init", res)
    # digits has no DC constants: the file's space must be named, and distill cannot take it.
    assert code == 2 and "distill has no --preprocess: export the file with the --preprocess it holds" in said, said
    npz = tmp_path / "step1.npz"  # an official FRePo file holding raw pixels, not the reference's space
    np.savez(
        npz,
        image=pixels[0].permute(0, 2, 3, 1).numpy(),
        label=centered_one_hot(torch.from_numpy(raw.y_train[idx[0]]), 10).numpy(),
    )
    code, said = distill(capsys, tmp_path / "as-is", "--ipc", 2, "--init", npz)
    said = " ".join(said.split())  # warnings are wrapped to the terminal
    assert code == 0 and "images do not look like 'reference' preprocessing" in said, said
    assert "--preprocess names" not in said, said  # an option distill does not have
    assert f"frepo export {npz} --dataset digits --format pt --to DIR --preprocess ...), then --init DIR" in said

    export = ["export", str(res), "--dataset", "digits", "--format", "pt", "--to", str(tmp_path / "start")]
    assert main([*export, "--preprocess", "pixels", "--entry", "1"]) == 0
    code, err = distill(capsys, tmp_path / "run", "--ipc", 2, "--init", tmp_path / "start")
    assert code == 0, err
    run = load_distilled(tmp_path / "run" / "distilled.safetensors")
    order = np.argsort(raw.y_train[idx[1]], kind="stable")  # class-major
    torch.testing.assert_close(run.preprocessing.to_unit(run.images), pixels[1][order], rtol=0, atol=1e-5)


def test_a_file_of_several_sets_says_how_to_start_from_another(tmp_path, shared_data_dir):
    from frepo.data import DataConfig, prepare
    from frepo.io.foreign import load_start

    data = prepare(DataConfig(dataset="mnist", data_dir=str(shared_data_dir), download=False))
    dc = recipes.claimed_preprocessing("dc", data.raw, tmp_path)
    x, y = data.raw.x_train[:500], torch.from_numpy(data.raw.y_train[:500].copy())
    idx = torch.cat([torch.nonzero(y == c).flatten()[:1] for c in range(10)])
    res = tmp_path / "res_DC_MNIST_ConvNet_1ipc.pt"
    torch.save({"data": [[dc(x[idx.numpy()]), y[idx]]] * 3}, res)
    with pytest.warns(UserWarning, match="holds 3 distilled sets; the run starts from the first") as caught:
        load_start(res, data.raw, data.preprocessing, list(range(10)), 1)
    assert f"frepo export {res} --dataset mnist --format pt --to DIR --entry N, then --init DIR" in str(
        caught[0].message
    )


def test_a_resumed_run_does_not_read_its_start_again(tmp_path, capsys, monkeypatch):
    """`r1` from one folder, `../r1/distilled.safetensors` from another (or another machine): a run that resumes
    from its checkpoint never reads its start, and was refused as a different config. It resumes, and says so."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    for name in ("r0", "r1"):
        code, err = distill(capsys, name, "--ipc", 2, "--seed", name[1])
        assert code == 0, err
    assert distill(capsys, "run", "--ipc", 2, "--init", "r1")[0] == 0
    finished = (tmp_path / "run" / "distilled.safetensors").read_bytes()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for start in ("../r1/distilled.safetensors", "../r0"):
        code, err = distill(capsys, "../run", "--ipc", 2, "--init", start)
        said = " ".join(err.split())
        assert code == 0 and "different config" not in said, said
        assert f"resumes from its checkpoint; it started from --init r1, and --init {start} is not read" in said
    assert (tmp_path / "run" / "distilled.safetensors").read_bytes() == finished
    assert json.loads((tmp_path / "run" / "config.json").read_text())["init"] == "r1"  # the start it was made from
