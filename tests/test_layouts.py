"""The distributed layouts of CIFAR-100, Tiny ImageNet, downsampled ImageNet, CUB-200 and ImageNette, each
written tiny in its exact on-disk form in a temp folder; the decoded cache; streaming real batches."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frepo.base.errors import FrepoError
from frepo.data import default_data_dir, load_dataset
from frepo.data import layouts as layouts_module
from frepo.data.folders import to_array


@pytest.fixture(autouse=True)
def no_offline_copies(monkeypatch):
    """These tests bring their own layouts: a `<name>.npz` in $FREPO_DATA_DIR (cifar100.npz, tiny_imagenet.npz)
    would be read before them."""
    monkeypatch.delenv("FREPO_DATA_DIR", raising=False)


def run_frepo(*args, cwd=None) -> subprocess.CompletedProcess:
    """`frepo ARGS` in a subprocess, without the offline dataset folder (these tests bring their own data)."""
    env = {**os.environ, "FREPO_DATA_DIR": ""}
    command = [sys.executable, "-m", "frepo", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)


# ---- writers of each layout ----------------------------------------------------------------------------------
def write_cifar100(root, n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        coarse = [f // 5 for f in fine]
        arrays[split] = (data, fine, coarse)
        with open(folder / split, "wb") as f:
            pickle.dump(
                {
                    "filenames": [f"{i}.png" for i in range(n)],
                    "fine_labels": fine,
                    "coarse_labels": coarse,
                    "data": data,
                },
                f,
                protocol=2,
            )
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {
                "fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)],
            },
            f,
            protocol=2,
        )
    return arrays


COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]


def _jpeg(path, size, colour, grey=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    mode, fill = ("L", colour[0]) if grey else ("RGB", colour)
    Image.new(mode, size, fill).save(path, format="JPEG", quality=95)


def write_tiny_imagenet(root, per_class=3, val_per_class=2):
    folder = root / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # not sorted: labels follow the line order
    (folder).mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\ttabby\nn03\tbus\nn99\tunused\n")
    for label, wnid in enumerate(wnids):
        for i in range(per_class):
            _jpeg(
                folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG",
                (64, 64),
                COLOURS[label],
                grey=(i == 0 and label == 2),
            )
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for k in range(val_per_class * 3):
        label = k % 3
        _jpeg(folder / "val" / "images" / f"val_{k}.JPEG", (64, 64), COLOURS[label])
        lines.append(f"val_{k}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_imagenet(root, size=32, per_batch=4, n_val=5, seed=0):
    rng = np.random.default_rng(seed)
    train_dir, val_dir = root / f"Imagenet{size}_train_npz", root / f"Imagenet{size}_val_npz"
    train_dir.mkdir(parents=True)
    val_dir.mkdir(parents=True)
    batches = []
    for b in range(1, 11):
        data = rng.integers(0, 256, size=(per_batch, 3 * size * size), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(1, 1001, size=per_batch)]  # 1-based
        np.savez(train_dir / f"train_data_batch_{b}.npz", data=data, labels=labels, mean=np.zeros(3 * size * size))
        batches.append((data, labels))
    data = rng.integers(0, 256, size=(n_val, 3 * size * size), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(1, 1001, size=n_val)]
    np.savez(val_dir / "val_data.npz", data=data, labels=labels)
    return batches, (data, labels)


def write_cub(root, sizes=((96, 64), (50, 70), (64, 64), (40, 40))):
    folder = root / "CUB_200_2011"
    images, split, labels, classes = [], [], [], ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross"]
    for i, size in enumerate(sizes, start=1):
        cls = 1 + i % 2
        rel = f"{classes[cls - 1].split()[1]}/bird_{i}.jpg"
        _jpeg(folder / "images" / rel, size, COLOURS[cls - 1])
        images.append(f"{i} {rel}")
        split.append(f"{i} {1 if i <= 2 else 0}")
        labels.append(f"{i} {cls}")
    for name, lines in (
        ("images.txt", images),
        ("train_test_split.txt", split),
        ("image_class_labels.txt", labels),
        ("classes.txt", classes),
    ):
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def write_imagenette(root, name="imagenette2-160"):
    folder = root / name
    for split, n in (("train", 2), ("val", 1)):
        for label, wnid in enumerate(["n01440764", "n02102040"]):
            for i in range(n):
                _jpeg(folder / split / wnid / f"{wnid}_{i}.JPEG", (213, 160) if i == 0 else (160, 240), COLOURS[label])
    return folder


# ---- the readers ------------------------------------------------------------------------------------------------
def test_cifar100_fine_and_coarse_in_torchvision_layout(tmp_path):
    arrays = write_cifar100(tmp_path)
    raw = load_dataset("cifar100", data_dir=tmp_path, download=False)
    data, fine, coarse = arrays["train"]
    assert raw.x_train.shape == (20, 32, 32, 3) and raw.x_test.shape == (10, 32, 32, 3)
    # Rows are R, G, B planes of 32×32: pixel (row 2, col 5) of channel 1 is element 1024 + 2·32 + 5.
    assert raw.x_train[3, 2, 5, 1] == data[3, 1024 + 2 * 32 + 5]
    np.testing.assert_array_equal(raw.y_train, fine)
    assert raw.num_classes == 100 and raw.classes[7] == "fine7" and raw.mirror_invariant
    coarse_raw = load_dataset("cifar100_coarse", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(coarse_raw.y_train, coarse)
    assert coarse_raw.num_classes == 20 and coarse_raw.classes[3] == "coarse3"
    np.testing.assert_array_equal(coarse_raw.x_test, raw.x_test)


def test_cifar100_pickle_may_not_run_code(tmp_path):
    write_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "cifar-100-python" / "train", "wb") as f:
        pickle.dump({"data": Evil()}, f)
    with pytest.raises(FrepoError, match="is not allowed"):
        load_dataset("cifar100", data_dir=tmp_path, download=False)


def test_tiny_imagenet_labels_follow_wnids_and_val_is_the_test_split(tmp_path):
    write_tiny_imagenet(tmp_path)
    raw = load_dataset("tiny_imagenet", data_dir=tmp_path, download=False)
    assert raw.x_train.shape == (9, 64, 64, 3) and raw.x_test.shape == (6, 64, 64, 3)
    assert raw.classes == ["bus", "goldfish, Carassius auratus", "tabby"]
    np.testing.assert_array_equal(raw.y_train, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(raw.y_test, [0, 1, 2, 0, 1, 2])
    # Each class has its own colour; a greyscale JPEG becomes three equal channels.
    for label, colour in enumerate(COLOURS):
        pixels = raw.x_test[raw.y_test == label].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(pixels, colour, atol=6)
    grey = raw.x_train[6]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_imagenet_npz_batches_rows_and_one_based_labels(tmp_path):
    batches, (val_data, val_labels) = write_imagenet(tmp_path, size=32, per_batch=3, n_val=4)
    raw = load_dataset("imagenet32", data_dir=tmp_path, download=False)
    assert raw.x_train.shape == (30, 32, 32, 3) and raw.num_classes == 1000
    data, labels = batches[4]  # rows 12..14 come from train_data_batch_5
    assert raw.x_train[13, 31, 0, 2] == data[1, 2 * 1024 + 31 * 32 + 0]
    np.testing.assert_array_equal(raw.y_train[12:15], np.asarray(labels) - 1)
    np.testing.assert_array_equal(raw.y_test, np.asarray(val_labels) - 1)
    assert raw.x_test[3, 5, 6, 0] == val_data[3, 5 * 32 + 6]


def test_images_of_any_size_become_the_centre_square_area_averaged():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8)  # H 64, W 96
    out = to_array(Image.fromarray(pixels), 3, 32)
    centre = pixels[:, 16:80].astype(np.float64)  # the largest centred square: offset (96 - 64) // 2
    expected = centre.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))  # area averaging by an exact factor 2
    assert out.shape == (32, 32, 3)
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0


def test_cub_split_labels_and_32px_squares(tmp_path):
    write_cub(tmp_path)
    raw = load_dataset("cub200", data_dir=tmp_path, download=False)
    assert raw.x_train.shape == (2, 32, 32, 3) and raw.x_test.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(raw.y_train, [1, 0])
    np.testing.assert_array_equal(raw.y_test, [1, 0])
    assert raw.classes == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]


@pytest.mark.parametrize("name,folder", [("imagenette", "imagenette2-160"), ("imagewoof", "imagewoof2")])
def test_imagenette_folders_at_128px(tmp_path, name, folder):
    write_imagenette(tmp_path, folder)
    raw = load_dataset(name, data_dir=tmp_path, download=False)
    assert raw.x_train.shape == (4, 128, 128, 3) and raw.x_test.shape == (2, 128, 128, 3)
    np.testing.assert_array_equal(raw.y_train, [0, 0, 1, 1])
    assert raw.classes == ["n01440764", "n02102040"]


# ---- missing or incomplete layouts ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,expected",
    [
        ("cifar100", "cifar-100-python"),
        ("tiny_imagenet", "tiny-imagenet-200"),
        ("imagenet64", "Imagenet64_train_npz"),
        ("cub200", "CUB_200_2011"),
        ("imagewoof", "imagewoof2"),
    ],
)
def test_a_missing_layout_names_what_was_expected(tmp_path, name, expected):
    with pytest.raises(FrepoError, match=f"{name} not found: expected .*{expected}"):
        load_dataset(name, data_dir=tmp_path, download=False)


def test_an_incomplete_layout_names_the_missing_file(tmp_path):
    write_imagenet(tmp_path, size=32, per_batch=2, n_val=2)
    (tmp_path / "Imagenet32_train_npz" / "train_data_batch_7.npz").unlink()
    with pytest.raises(FrepoError, match="incomplete dataset: expected .*train_data_batch_7.npz"):
        load_dataset("imagenet32", data_dir=tmp_path, download=False)
    write_tiny_imagenet(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(FrepoError, match="val_3.JPEG"):
        load_dataset("tiny_imagenet", data_dir=tmp_path, download=False)


def test_a_damaged_compressed_imagenet_batch_is_one_line(tmp_path):
    """The official batches are np.savez_compressed files: damage in one was a BadZipFile (or zlib) traceback."""
    write_imagenet(tmp_path, size=32, per_batch=2, n_val=2)
    batch = tmp_path / "Imagenet32_train_npz" / "train_data_batch_3.npz"
    with np.load(batch) as archive:
        arrays = {k: archive[k] for k in archive.files}
    np.savez_compressed(batch, **arrays)
    damaged = bytearray(batch.read_bytes())
    damaged[200:204] = bytes(b ^ 0xFF for b in damaged[200:204])
    batch.write_bytes(bytes(damaged))
    with pytest.raises(FrepoError, match="train_data_batch_3.npz: the file is corrupt or truncated"):
        load_dataset("imagenet32", data_dir=tmp_path, download=False)


def test_files_whose_rows_and_labels_disagree_are_one_line_not_shifted_labels(tmp_path):
    """An ImageNet batch of two rows more and a later one of two fewer added up, and loaded: every image between
    them took the label of the image two rows before. Each file is held to its own labels now; a CIFAR-100
    pickle of more rows than labels, and a batch of another size's images, were numpy tracebacks."""
    batches, _ = write_imagenet(tmp_path / "shift", size=32, per_batch=6, n_val=2)
    folder = tmp_path / "shift" / "Imagenet32_train_npz"
    for b, rows in ((3, slice(0, 8)), (4, slice(2, 6))):  # batch 3: 8 images, 6 labels; batch 4: 4 images, 6
        data = np.concatenate([batches[2][0], batches[3][0]])[rows] if b == 3 else batches[3][0][rows]
        np.savez(folder / f"train_data_batch_{b}.npz", data=data, labels=batches[b - 1][1])
    with pytest.raises(FrepoError, match=r"train_data_batch_3.npz: 24576 bytes of images, not 6 images of 3×32×32"):
        load_dataset("imagenet32", data_dir=tmp_path / "shift", download=False)

    write_imagenet(tmp_path / "other", size=32, per_batch=2, n_val=2)  # 32×32 files read as imagenet64
    for path in (tmp_path / "other").glob("Imagenet32_*"):
        path.rename(path.with_name(path.name.replace("32", "64")))
    with pytest.raises(FrepoError, match=r"train_data_batch_1.npz: .* not 2 images of 3×64×64"):
        load_dataset("imagenet64", data_dir=tmp_path / "other", download=False)

    write_cifar100(tmp_path / "c100")
    train = tmp_path / "c100" / "cifar-100-python" / "train"
    record = pickle.loads(train.read_bytes())
    record["data"] = np.concatenate([record["data"], record["data"][:5]])
    train.write_bytes(pickle.dumps(record))
    with pytest.raises(FrepoError, match=r"cifar-100-python/train: 25 images but 20 labels"):
        load_dataset("cifar100", data_dir=tmp_path / "c100", download=False)


@pytest.mark.parametrize(
    ("file", "line", "said"),
    [
        ("image_class_labels.txt", "1 0", r"image_class_labels.txt: image 1 has label '0', not 1..C"),
        ("image_class_labels.txt", "1 x", r"image_class_labels.txt: image 1 has label 'x', not 1..C"),
        ("train_test_split.txt", "1 2", r"train_test_split.txt: image 1 has split '2', not 1 or 0"),
    ],
)
def test_a_bad_line_of_cub_s_index_files_is_one_line(tmp_path, file, line, said):
    """A 0-based label file became label -1 unsaid; a label that is no number and a split other than 0/1 were
    tracebacks (ValueError, KeyError)."""
    folder = write_cub(tmp_path)
    lines = (folder / file).read_text().splitlines()
    (folder / file).write_text("\n".join([line, *lines[1:]]) + "\n")
    with pytest.raises(FrepoError, match=said):
        load_dataset("cub200", data_dir=tmp_path, download=False)


def test_a_negative_label_of_any_source_is_refused(tmp_path):
    """The checks every source passes held labels to < C only: a -1 reached distill (np.bincount's traceback)."""
    from frepo.data.registry import RawDataset, _check

    x = np.zeros((4, 2, 2, 1), np.uint8)
    raw = RawDataset("mine", x, np.array([0, 1, -1, 1]), x, np.array([0, 1, 0, 1]), ["a", "b"], False)
    with pytest.raises(FrepoError, match=r"mine: train label -1; labels are class ids 0..C-1"):
        _check(raw, "mine")


def test_cli_missing_dataset_is_one_line(tmp_path):
    proc = run_frepo(
        "distill", "--dataset", "tiny_imagenet", "--data-dir", tmp_path, "--no-download", "--ipc", 1,
        "--steps", 2, "--out", tmp_path / "run",
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "tiny-imagenet-200" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


# ---- downloads --------------------------------------------------------------------------------------------------
def test_a_download_is_moved_into_place_whole_or_not_at_all(tmp_path, monkeypatch):
    """The archive was downloaded and unpacked in --data-dir itself: one cut short by a kill was taken as complete
    by every later attempt (a traceback each time, EOFError), and a half-unpacked folder was read as the
    dataset. Both now happen in a temp folder, moved into place once all is unpacked."""
    import urllib.error

    import torchvision.datasets.utils

    data = tmp_path / "data"
    (data / "mine").mkdir(parents=True)  # the user's
    from frepo.data.cache import _HOST as host

    killed = data / f".tiny-imagenet-200.zip-download.{host}-4242-k1ll3d_x.tmp"  # of a kill -9 mid-download
    killed.mkdir()
    (killed / "tiny-imagenet-200.zip").write_bytes(b"PK cut")
    tries = []

    def download(url, download_root, extract_root=None, **kwargs):
        tries.append(Path(download_root).name)
        Path(download_root, "tiny-imagenet-200.zip").write_bytes(b"PK cut")
        write_tiny_imagenet(Path(extract_root))  # unpacked in part: all of it, then the cut
        if len(tries) == 1:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        if len(tries) == 2:
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", download)
    for why in ("end-of-stream marker", "no network"):
        with pytest.raises(FrepoError, match=f"could not download tiny_imagenet from .* into {data}: .*{why}"):
            load_dataset("tiny_imagenet", data, download=True)
        assert sorted(p.name for p in data.iterdir()) == ["mine"]  # nothing half-made, the killed try's gone too
    raw = load_dataset("tiny_imagenet", data, download=True)
    assert len(raw.y_train) == 9 and len(raw.y_test) == 6
    assert sorted(p.name for p in data.iterdir()) == ["mine", "tiny-imagenet-200"]
    assert [name.startswith(f".tiny-imagenet-200.zip-download.{host}-{os.getpid()}-") for name in tries] == [True] * 3
    load_dataset("tiny_imagenet", data, download=True)  # found: not downloaded again
    assert len(tries) == 3


def test_a_download_finished_by_another_process_meanwhile_is_taken_and_a_stranger_in_the_way_named(
    tmp_path, monkeypatch
):
    """cifar100 and cifar100_coarse share an archive: one lock per archive now. Where the archive's folder
    appeared meanwhile (unlocked filesystems), the dataset there is read, not called "in the way"; where a
    stranger is in the way, nothing of the download is moved (it moved the items before the conflict)."""
    import torchvision.datasets.utils

    data = tmp_path / "data"
    data.mkdir()

    def download(url, download_root, extract_root=None, **kwargs):
        write_tiny_imagenet(Path(extract_root))
        (Path(extract_root) / "zzz-readme.txt").write_text("last")  # after tiny-imagenet-200 in the moves
        if not (data / "stranger").exists():
            write_tiny_imagenet(data)  # another process's download, finished as this one ran

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", download)
    assert len(load_dataset("tiny_imagenet", data, download=True).y_train) == 9
    assert sorted(p.name for p in data.iterdir()) == ["tiny-imagenet-200"]
    other = tmp_path / "other"
    (other / "stranger").mkdir(parents=True)
    (other / "zzz-readme.txt").write_text("mine")  # a file of the archive's name: in the way
    data = other
    with pytest.raises(FrepoError, match="zzz-readme.txt is in the way of tiny_imagenet's download; move it"):
        load_dataset("tiny_imagenet", other, download=True)
    # nothing moved, tiny-imagenet-200 (before the conflict) included
    assert sorted(p.name for p in other.iterdir()) == ["stranger", "zzz-readme.txt"]
    assert (other / "zzz-readme.txt").read_text() == "mine"


# ---- the decoded cache -------------------------------------------------------------------------------------------
def test_cache_is_built_once_and_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    write_tiny_imagenet(tmp_path)
    first = load_dataset("tiny_imagenet", data_dir=tmp_path, download=False)
    assert isinstance(first.x_train, np.memmap) and first.source_id

    def no_decoding(path, *args, **kwargs):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(layouts_module, "read_image", no_decoding)
    again = load_dataset("tiny_imagenet", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(again.x_train, first.x_train)
    assert again.source_id == first.source_id
    monkeypatch.undo()
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text("\n".join(annotations.read_text().splitlines()[:4]) + "\n")
    changed = load_dataset("tiny_imagenet", data_dir=tmp_path, download=False)
    assert len(changed.y_test) == 4 and changed.source_id != first.source_id


def test_images_moved_between_class_folders_are_decoded_again_with_their_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("FREPO_CACHE", str(tmp_path / "frepo-cache"))
    # A folder's modification time does not change when a file two levels down is removed or added: the
    # cache must notice from the listing, or red images of class 0 get class 1's label.
    folder = write_imagenette(tmp_path)
    first = load_dataset("imagenette", data_dir=tmp_path, download=False)
    red = first.x_train[first.y_train == 0][1]
    (folder / "train" / "n01440764" / "n01440764_1.JPEG").unlink()
    _jpeg(folder / "train" / "n02102040" / "n02102040_9.JPEG", (160, 160), COLOURS[1])
    moved = load_dataset("imagenette", data_dir=tmp_path, download=False)
    assert moved.source_id != first.source_id
    assert list(moved.y_train) == [0, 1, 1, 1]
    assert not any(np.array_equal(image, red) for image in moved.x_train[moved.y_train == 1])
    _jpeg(folder / "train" / "n02102040" / "n02102040_8.JPEG", (160, 160), COLOURS[1])
    added = load_dataset("imagenette", data_dir=tmp_path, download=False)  # one more image: rebuilt, not refused
    assert len(added.x_train) == len(added.y_train) == 5
    # A layout of arrays (CIFAR-100, ImageNet) is identified by its files alone: its cache, 15.7 GB for ImageNet,
    # stays valid from the versions before the listing.
    write_cifar100(tmp_path)
    load_dataset("cifar100", data_dir=tmp_path, download=False)
    (cifar,) = (tmp_path / "frepo-cache" / "datasets").glob("cifar100-*/source.json")
    assert set(json.loads(cifar.read_text())["source"]) == {"format", "files", "name"}


def test_a_cache_of_other_shapes_is_rebuilt_not_trusted(tmp_path):
    from frepo.data import cache

    folder = tmp_path / "cache"
    cache.cached_arrays(folder, {"v": 1}, lambda: {"x": ((2,), np.dtype(np.uint8))}, lambda a: None)
    rebuilt = cache.cached_arrays(folder, {"v": 1}, lambda: {"x": ((3,), np.dtype(np.uint8))}, lambda a: None)
    assert rebuilt["x"].shape == (3,)


def test_a_full_disk_is_one_line_before_any_decoding_not_a_bus_error(tmp_path, monkeypatch):
    """The cache is written through memory maps of sparse `.npy` files: a full disk met there kills the process
    with SIGBUS ("Bus error", seen on a 100 KB tmpfs). Before `fill` decodes anything, the space the files need is
    checked against the filesystem's free space, then reserved (fallocate) where the filesystem can; a filesystem
    that cannot (EOPNOTSUPP: NFSv3, older ZFS) still builds, sparse."""
    import ctypes
    import errno

    from frepo.data import cache

    shapes = {"x": ((4096, 64), np.dtype(np.uint8)), "y": ((4096,), np.dtype(np.int64))}
    reserved, decoded = [], []

    def fallocate(fd, mode, offset, length):
        reserved.append((mode, offset, length))
        return 0

    def fill(arrays):
        decoded.append(list(reserved))  # what was reserved before the decode began
        arrays["y"][:] = 1

    monkeypatch.setattr(cache, "libc_fallocate", lambda: fallocate)
    arrays = cache.cached_arrays(tmp_path / "roomy", {"v": 1}, lambda: shapes, fill)
    sizes = sorted(os.path.getsize(tmp_path / "roomy" / f"{n}.npy") for n in shapes)
    assert len(decoded) == 1 and sorted(decoded[0]) == [(0, 0, size) for size in sizes]  # each file, whole
    assert list(arrays["y"][:2]) == [1, 1]

    def unsupported(fd, mode, offset, length):
        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1

    monkeypatch.setattr(cache, "libc_fallocate", lambda: unsupported)
    assert list(cache.cached_arrays(tmp_path / "nfs", {"v": 1}, lambda: shapes, fill)["y"][:2]) == [1, 1]

    def full(fd, mode, offset, length):
        ctypes.set_errno(errno.ENOSPC)
        return -1

    decoded.clear()
    monkeypatch.setattr(cache, "libc_fallocate", lambda: full)
    with pytest.raises(FrepoError, match=r"cannot write the dataset cache .*full: No space left on device"):
        cache.cached_arrays(tmp_path / "full", {"v": 1}, lambda: shapes, fill)
    monkeypatch.setattr(cache, "libc_fallocate", lambda: fallocate)
    monkeypatch.setattr(cache, "free_bytes", lambda folder: 100 * 2**10)  # 100 KiB free, as on that tmpfs
    with pytest.raises(
        FrepoError, match=r"small: No space left on device: the decoded dataset takes 288 KiB, 100 KiB free"
    ):
        cache.cached_arrays(tmp_path / "small", {"v": 1}, lambda: shapes, fill)
    assert decoded == []  # nothing decoded into a cache that could not be written whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nfs", "roomy"]  # no temp folder, no lock left
    monkeypatch.undo()
    if cache.libc_fallocate() is not None:  # the C library's own call, on this filesystem: it reserves or says
        with open(tmp_path / "real", "wb") as file:  # it cannot (no error either way)
            cache.allocate(file.fileno(), 1 << 20)
        assert os.path.getsize(tmp_path / "real") == 1 << 20


def test_a_set_read_from_pixels_finds_the_run_s_preprocessing(tmp_path, monkeypatch):
    """An image folder read against a layout dataset is put in the preprocessing a run of that dataset fits,
    found in the cache (it was fitted again under another key, from a copy of the whole memory-mapped split)."""
    from frepo.config import DataConfig
    from frepo.data import prepare
    from frepo.data import preprocess as preprocess_module
    from frepo.data.recipes import frepo_preprocessing

    write_tiny_imagenet(tmp_path)
    run = prepare(DataConfig(dataset="tiny_imagenet", data_dir=str(tmp_path), download=False))

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(preprocess_module, "fit_preprocessing", no_fit)
    raw = load_dataset("tiny_imagenet", data_dir=tmp_path, download=False)
    pre = frepo_preprocessing(raw, tmp_path)
    assert pre.kind == run.preprocessing.kind == "zca" and torch.equal(
        pre.basis, run.preprocessing.basis
    )  # low rank: 9 images


def test_other_tools_zcas_of_a_cached_dataset_are_keyed_by_its_source_not_by_reading_every_image(tmp_path, monkeypatch):
    """The reference's and MTT's ZCA (foreign sets, DD-Ranking exports) keyed a cached dataset by hashing its
    whole split on every call, hit or miss (ImageNet: 15.7 GB read), and the reference's tag named the split's
    channel statistics, a pass of their own; frepo's own fit keys it by its source. (The keys only: a fit of Tiny
    ImageNet's 12 288 dimensions takes minutes.)"""
    import dataclasses

    from frepo.data import preprocess, recipes
    from frepo.data.preprocess import fingerprint

    keys = []
    monkeypatch.setattr(recipes, "cached", lambda tag, images, reg, *a: keys.append(fingerprint(images, tag, reg)))
    write_tiny_imagenet(tmp_path)
    raw = load_dataset("tiny_imagenet", data_dir=tmp_path, download=False)
    unread = dataclasses.replace(raw, x_train=np.zeros_like(raw.x_train))  # hashed, its key would be another's
    monkeypatch.setattr(preprocess, "channel_stats", lambda *a: pytest.fail("the split read for a cache key"))
    monkeypatch.setattr(recipes, "channel_stats", preprocess.channel_stats)
    for fit in (recipes.reference_preprocessing, recipes.mtt_zca_preprocessing):
        fit(raw, tmp_path / "cache")
        fit(unread, tmp_path / "cache")
    assert len(keys) == 4 and keys[0] == keys[1] and keys[2] == keys[3]


def test_a_cache_decoded_again_from_edited_images_gets_its_own_zca(tmp_path, monkeypatch):
    """An image edited in place is not noticed (docs/datasets.md: delete the cache folder). Once deleted and decoded
    again, the ZCA fitted on the old pixels was still found: the preprocessing's key named the source files'
    names, sizes and times, the same. It names the decoded pixels' digest too now: the same pixels decoded again
    keep their fit."""
    import shutil

    from frepo.config import DataConfig
    from frepo.data import prepare

    def zca_mean():
        run = prepare(DataConfig(dataset="tiny_imagenet", data_dir=str(tmp_path), download=False))
        assert run.preprocessing.kind == "zca"
        return run.preprocessing.mean.clone()

    monkeypatch.setenv("FREPO_CACHE", str(tmp_path / "frepo-cache"))
    folder = write_tiny_imagenet(tmp_path)
    before = zca_mean()
    assert torch.equal(zca_mean(), before)  # the same build: the same fit (read from the cache)
    (cache_folder,) = (tmp_path / "frepo-cache" / "datasets").glob("tiny_imagenet-*")
    shutil.rmtree(cache_folder)  # decoded again from the same images (a cache deleted to free space): its fit found
    assert torch.equal(zca_mean(), before)
    assert len(list((tmp_path / "preprocessing").glob("zca-*.safetensors"))) == 1
    for f in (folder / "train").glob("*/images/*.JPEG"):  # brighter pixels under the same names
        Image.open(f).point(lambda v: min(255, v + 60)).save(f, format="JPEG")
    shutil.rmtree(cache_folder)
    after = zca_mean()
    assert not torch.equal(after, before) and float((after - before).mean()) > 0.1


def test_a_failed_build_leaves_no_cache(tmp_path, monkeypatch):
    write_cub(tmp_path)
    calls = {"n": 0}
    real = layouts_module.read_image

    def fail_on_third(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    caches = default_data_dir() / "datasets"
    before = set(caches.iterdir()) if caches.exists() else set()
    monkeypatch.setattr(layouts_module, "read_image", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("cub200", data_dir=tmp_path, download=False)
    assert set(caches.iterdir()) == before  # neither a cache, nor its temp folder, nor its lock
    monkeypatch.undo()
    raw = load_dataset("cub200", data_dir=tmp_path, download=False)
    assert raw.x_train.shape == (2, 32, 32, 3)


def test_the_temp_folder_of_a_killed_build_goes_and_builds_take_turns(tmp_path):
    """A kill -9 of a decode left its temp folder (16 GB for ImageNet 64), named by its pid: each later attempt
    had another pid and left another. The next build removes them; a build in progress, holding the lock,
    is waited for and its cache mapped, not decoded again."""
    import threading

    from frepo.data import cache

    folder = tmp_path / "caches" / "set-abc"
    folder.parent.mkdir()
    killed = folder.parent / f".set-abc.{cache._HOST}-4242-k1ll3d_x.tmp"
    elsewhere = folder.parent / ".set-abc.other_host-4242-abcdefgh.tmp"  # a build another host may be making now
    old = folder.parent / ".set-abc.4242.tmp"  # an older frepo's, named by its pid alone: untouched for a day
    old.mkdir()
    os.utime(old, (time.time() - 2 * cache.STALE_ELSEWHERE_S,) * 2)
    sibling = folder.parent / f".set-abc.x.{cache._HOST}-4242-abcdefgh.tmp"  # of a cache named set-abc.x
    sibling.mkdir()
    elsewhere.mkdir()
    killed.mkdir()
    (killed / "x.npy").write_bytes(b"half")
    mine = {"x": ((3,), np.dtype(np.uint8))}
    decoded = []

    def fill(arrays):
        decoded.append(1)
        arrays["x"][:] = [1, 2, 3]

    arrays = cache.cached_arrays(folder, {"v": 1}, lambda: mine, fill)
    assert list(arrays["x"]) == [1, 2, 3] and decoded == [1]
    left = sorted(p.name for p in folder.parent.iterdir())
    assert left == sorted([elsewhere.name, sibling.name, "set-abc"])  # the lock went too
    # A second build of a changed source waits for the one in progress, then maps what it built.
    started, release, results = threading.Event(), threading.Event(), []

    def slow_fill(arrays):
        started.set()
        release.wait(10)
        fill(arrays)

    first = threading.Thread(target=lambda: cache.cached_arrays(folder, {"v": 2}, lambda: mine, slow_fill))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=lambda: results.append(cache.cached_arrays(folder, {"v": 2}, lambda: mine, fill)))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # waiting on the lock, not decoding beside the first
    assert decoded == [1]  # the second has not decoded beside the first
    release.set()
    first.join(120), second.join(120)  # generous for a loaded machine (10 s ran out), yet a hang stops
    assert not first.is_alive() and not second.is_alive()
    assert decoded == [1, 1] and list(results[0]["x"]) == [1, 2, 3]


# ---- real batches gathered per step --------------------------------------------------------------------------------
def _uint8_data(n=64, size=16, classes=4, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), np.arange(n) % classes


def _streaming_pair(kind: str):
    """(in-memory trainer, streaming trainer) on the same uint8 images, a subset of rows as in a hold-out."""
    from frepo.config import DistillConfig
    from frepo.data import StreamingImages, fit_preprocessing
    from frepo.method.trainer import FRePoTrainer

    images, labels = _uint8_data()
    rows = np.arange(4, 64)  # the first 4 rows held out
    pre = fit_preprocessing(images[rows], kind)
    config = DistillConfig(ipc=2, batch_size=16, steps=10, use_flip=True)
    config.model.width = 8
    config.pool.num_models = 2
    y = torch.from_numpy(labels[rows])
    memory = FRePoTrainer(config, pre(images[rows]), y, 4, torch.device("cpu"))
    stream = FRePoTrainer(config, StreamingImages(images, rows, pre), y, 4, torch.device("cpu"))
    return memory, stream


def test_batch_sampler_peek_does_not_advance():
    from frepo.method.trainer import BatchSampler

    sampler = BatchSampler(10, 4, torch.Generator().manual_seed(0))
    for _ in range(6):  # across epoch boundaries
        ahead = sampler.peek()
        torch.testing.assert_close(sampler.next(), ahead)


def test_streaming_batches_give_the_in_memory_trajectory():
    """Standardisation is elementwise, so gathering per step is bit for bit the in-memory run (prefetch included)."""
    memory, stream = _streaming_pair("standard")
    assert stream.prefetch is not None
    for _ in range(5):
        mm, ms = memory.step(), stream.step()
        assert float(mm["loss"]) == float(ms["loss"])
    assert torch.equal(memory.syn.images, stream.syn.images)
    assert torch.equal(memory.syn.labels, stream.syn.labels)


def test_streaming_with_zca_stays_within_rounding():
    """ZCA is a matmul: a 16-image batch may round differently from the whole split's, nothing more."""
    memory, stream = _streaming_pair("zca")
    start = memory.syn.images.detach().clone()
    for _ in range(3):
        memory.step(), stream.step()
    assert (stream.syn.images - memory.syn.images).norm() < 1e-2 * (memory.syn.images - start).norm()


def test_streaming_resume_is_exact():
    """A checkpoint taken while the next batch is being prefetched resumes on the same batches."""
    _, whole = _streaming_pair("standard")
    for _ in range(6):
        whole.step()
    _, first = _streaming_pair("standard")
    for _ in range(3):
        first.step()
    state = first.state_dict()
    _, second = _streaming_pair("standard")
    second.load_state_dict(state)
    for _ in range(3):
        second.step()
    assert torch.equal(second.syn.images, whole.syn.images)


def test_distil_from_a_layout_then_evaluate_without_data_dir(tmp_path):
    """frepo distill on a (tiny) Tiny ImageNet layout, streaming its batches; frepo evaluate of the result
    reads the same test split without --data-dir, from another folder than the relative --data-dir was given
    in (recorded as given, it was looked for there and not found)."""
    data = tmp_path / "data"
    write_tiny_imagenet(data, per_class=4)
    run = tmp_path / "run"
    proc = run_frepo(
        "distill", "--dataset", "tiny_imagenet", "--data-dir", "data", "--no-download", "--ipc", 1, "--steps", 3,
        "--batch-size", 6, "--stream", "on", "--width", 8, "--num-models", 2, "--val-size", 3, "--eval-every", 0,
        "--eval-steps", 5, "--out", run,
        "--preprocess", "standard",  # a 12288-dim ZCA fit takes minutes on 2 cores: not for a unit test
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["stream"] == "on" and config["data"]["data_dir"] == str(data.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_frepo(
        "evaluate", run / "distilled.safetensors", "--models", 1, "--steps", 5, "--json", tmp_path / "eval.json",
        "--no-download", cwd=elsewhere,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["dataset"] == "tiny_imagenet"


def test_a_cache_builds_unlocked_where_the_filesystem_has_no_locks(tmp_path, monkeypatch, caplog):
    """Lustre without `flock` says ENOSYS, some FUSE mounts EOPNOTSUPP: only ENOLCK built, the others failed
    every build with "cannot write the dataset cache"."""
    import errno

    from frepo.data import cache

    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(cache.fcntl, "flock", no_locks)
    folder = tmp_path / "set-abc"
    with caplog.at_level("WARNING", logger="frepo"):
        arrays = cache.cached_arrays(folder, {"v": 1}, lambda: {"x": ((2,), np.dtype(np.uint8))}, lambda a: None)
    assert list(arrays["x"]) == [0, 0] and "building " in caplog.text and "unlocked" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set-abc"]
