"""Dataset registry, torchvision layouts (downloads off), .npz and ImageFolder inputs, bad inputs,
the validation hold-out."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

from frepo.base.errors import FrepoError
from frepo.config import DataConfig
from frepo.data import load_dataset, prepare
from frepo.data.splits import default_val_size, holdout_split


@pytest.fixture
def no_offline_copies(monkeypatch):
    monkeypatch.delenv("FREPO_DATA_DIR", raising=False)


def test_digits_is_offline_fixed_and_seeded():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.x_train.shape == (1257, 8, 8, 1) and a.x_test.shape == (540, 8, 8, 1)
    assert a.x_train.dtype == np.uint8 and a.x_train.max() == 255
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert sorted(np.unique(a.y_train)) == list(range(10)) and not a.mirror_invariant


def _write_idx(path, array: np.ndarray, magic: int, compress: bool = False):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_layout_is_read_with_downloads_off(tmp_path, no_offline_copies, name, folder):
    raw_dir = tmp_path / folder / "raw"
    raw_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x_train, x_test = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 256, (5, 28, 28))
    y_train, y_test = np.arange(12) % 10, np.arange(5) % 10
    _write_idx(raw_dir / "train-images-idx3-ubyte", x_train, 2051)
    _write_idx(raw_dir / "train-labels-idx1-ubyte", y_train, 2049)
    _write_idx(raw_dir / "t10k-images-idx3-ubyte", x_test, 2051)
    _write_idx(raw_dir / "t10k-labels-idx1-ubyte", y_test, 2049)
    raw = load_dataset(name, tmp_path, download=False)
    assert raw.x_train.shape == (12, 28, 28, 1) and raw.x_test.shape == (5, 28, 28, 1)
    assert np.array_equal(raw.x_train[..., 0], x_train) and np.array_equal(raw.y_test, y_test)
    assert raw.num_classes == 10 and not raw.mirror_invariant


def test_missing_torchvision_dataset_with_downloads_off_is_a_clear_error(tmp_path, no_offline_copies):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"made up")  # fails the md5 check
    with pytest.raises(FrepoError, match="downloads are off") as error:
        load_dataset("cifar10", tmp_path, download=False)
    assert "download=True" not in str(error.value)  # torchvision's advice, in its API's words
    # a set distilled where $FREPO_DATA_DIR held cifar10.npz, evaluated where it is unset: said where to look
    assert "an offline copy, cifar10.npz in $FREPO_DATA_DIR or in --data-dir, is read in its place" in str(error.value)


def test_offline_copy_is_used_when_present(shared_data_dir):
    raw = load_dataset("mnist")
    assert raw.x_train.shape == (60000, 28, 28, 1) and raw.x_test.shape == (10000, 28, 28, 1)
    assert list(raw.y_train[:5]) == [5, 0, 4, 1, 9] and list(raw.y_test[:5]) == [7, 2, 1, 0, 4]


def test_a_registered_datasets_npz_in_the_data_dir_stands_in_for_its_download(tmp_path, no_offline_copies):
    """A user with mnist.npz in --data-dir (data_dir=) got a torchvision download attempt, which fails offline."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8), "y_train": np.arange(20) % 10}
    arrays |= {"x_test": rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8), "y_test": np.arange(10)}
    np.savez(tmp_path / "mnist.npz", **arrays)
    raw = load_dataset("mnist", tmp_path, download=False)
    assert np.array_equal(raw.x_train, arrays["x_train"]) and np.array_equal(raw.y_test, arrays["y_test"])
    assert raw.name == "mnist"


def test_data_and_cache_variables_that_name_nothing_are_said_or_unset(tmp_path, monkeypatch):
    """$FREPO_DATA_DIR naming a file (or a missing folder) was passed over unsaid: "not found", or a download in
    place of the copy the user meant. An empty $FREPO_CACHE put every cache in the current folder."""
    from frepo.data import default_data_dir
    from frepo.data.registry import offline_copy

    monkeypatch.setenv("FREPO_DATA_DIR", str(tmp_path / "mnist.npz"))  # the file, not its folder
    np.savez(tmp_path / "mnist.npz", x=np.zeros(1))
    with pytest.warns(UserWarning, match=r"\$FREPO_DATA_DIR is .*mnist.npz, which is no folder"):
        assert offline_copy("mnist", tmp_path / "elsewhere") is None
    monkeypatch.setenv("FREPO_DATA_DIR", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert offline_copy("mnist", tmp_path / "elsewhere") == tmp_path / "mnist.npz"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FREPO_CACHE", "")
    assert default_data_dir() == tmp_path / "home" / ".cache" / "frepo"
    monkeypatch.setenv("FREPO_CACHE", "~/cache")
    assert default_data_dir() == tmp_path / "home" / "cache"


def test_npz_dataset_and_classes(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "toy.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8),
        y_train=np.arange(20) % 4,
        x_test=rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8),
        y_test=np.arange(8) % 4,
        classes=np.array(["w", "x", "y", "z"]),
    )
    raw = load_dataset(str(path))
    assert raw.classes == ["w", "x", "y", "z"] and raw.image_shape == (3, 6, 6)
    assert raw.name == str(path.resolve())
    # Loaded again (each task of an experiment): decoded once and shared read-only, as a layout's memory map
    # is, not copied for each caller (a large .npz was held twice for the life of the process).
    again = load_dataset(str(path))
    assert np.shares_memory(again.x_train, raw.x_train) and not again.x_train.flags.writeable
    assert not again.y_train.flags.writeable and not again.x_test.flags.writeable
    # Names saved as bytes were "b'w'" (and exported as folders 0_b_w); a text file named .npz was called
    # pickled data to be loaded unsafely.
    with np.load(path) as archive:
        np.savez(path, **{**dict(archive), "classes": np.array([b"w", b"x", b"y", b"z"])})
    assert load_dataset(str(path)).classes == ["w", "x", "y", "z"]
    (tmp_path / "notes.npz").write_text("x_train,y_train\n1,2\n")
    with pytest.raises(FrepoError, match="notes.npz: it is not a .npz archive \\(np.savez writes one\\)"):
        load_dataset(str(tmp_path / "notes.npz"))


def _arrays(y_train, y_test, **more) -> dict:
    return dict(
        x_train=np.zeros((len(y_train), 6, 6), np.uint8),
        y_train=np.array(y_train),
        x_test=np.zeros((len(y_test), 6, 6), np.uint8),
        y_test=np.array(y_test),
        **more,
    )


def test_read_only_splits_give_no_warning_of_torch_s(blobs):
    """A shared .npz split (and a memory-mapped cache) is read-only; torch warns once a process when a tensor
    is made of one, and the CLI showed users "frepo: warning: The given NumPy array is not writable". A fresh
    process: the warning is torch's once per process, so one already given in this one would hide it."""
    script = f"""
import warnings
warnings.simplefilter("error")
import frepo
from frepo.config import DataConfig
from frepo.data import prepare
data = prepare(DataConfig(dataset={str(blobs)!r}, val_size=20))
data.train(), data.val(), data.test(), data.train_stream()
data.preprocessing(data.raw.x_test)
ds = frepo.make_subset({str(blobs)!r}, 1)
ds.transform(data.raw.x_test)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "arrays, message",
    [
        (
            dict(
                x_train=np.zeros((4, 6, 6), np.uint8),
                y_train=np.zeros(3, int),
                x_test=np.zeros((2, 6, 6), np.uint8),
                y_test=np.zeros(2, int),
            ),
            "4 train images but 3 train labels",
        ),
        (  # labels cut short so that a class has none left: the counts, not missing classes
            dict(
                x_train=np.zeros((4, 6, 6), np.uint8),
                y_train=np.array([0, 1, 2]),
                x_test=np.zeros((3, 6, 6), np.uint8),
                y_test=np.array([0, 1, 3]),
            ),
            "4 train images but 3 train labels",
        ),
        (
            dict(
                x_train=np.zeros((4, 6), np.uint8),
                y_train=np.zeros(4, int),
                x_test=np.zeros((2, 6), np.uint8),
                y_test=np.zeros(2, int),
            ),
            "must be N×H×W",
        ),
        (dict(x_train=np.zeros((4, 6, 6), np.uint8), y_train=np.zeros(4, int)), "lacks the arrays"),
        (
            dict(
                x_train=np.zeros((4, 6, 6), np.uint8),
                y_train=np.zeros((4, 2), int),
                x_test=np.zeros((2, 6, 6), np.uint8),
                y_test=np.zeros(2, int),
            ),
            "1-D array of integer class labels",
        ),
        (
            dict(
                x_train=np.zeros((4, 6, 6), np.uint8),
                y_train=np.zeros(4, int),
                x_test=np.zeros((2, 5, 5), np.uint8),
                y_test=np.zeros(2, int),
            ),
            "differ in shape",
        ),
        (
            dict(
                x_train=np.full((4, 6, 6), 2.0),
                y_train=np.zeros(4, int),
                x_test=np.zeros((2, 6, 6)),
                y_test=np.zeros(2, int),
            ),
            "lie in \\[0, 1\\]",
        ),
        (  # labels that are not class ids: "class 0 has 0 training images, fewer than ipc=1" at distill
            dict(
                x_train=np.zeros((4, 6, 6), np.uint8),
                y_train=np.array([100, 101, 100, 101]),
                x_test=np.zeros((2, 6, 6), np.uint8),
                y_test=np.array([100, 101]),
            ),
            "2 distinct labels run 100..101: remap them to 0..1",
        ),
        # A class without training images was "class 2 has 0 training images, fewer than ipc=1" at distill;
        # one class was a traceback from the label loss and left a half-made run directory.
        (_arrays([0, 0, 0, 0], [0, 0]), "one class \\('0'\\); distillation and evaluation need at least two"),
        (
            _arrays([0, 1, 5, 0], [0, 1]),
            "3 of 6 classes have no training image \\(2, 3, 4\\); the training labels are 0, 1, 5",
        ),
        (_arrays([0, 1, 2, 0], [0, 7]), "5 of 8 classes have no training image \\(3, 4, 5, 6, 7\\)"),
        # One stray label: 10**9 class names and a bincount of 8 GB were made, for minutes, before the error.
        (
            _arrays([0, 1, 2, 0], [0, 10**9]),
            "999999998 of 1000000001 classes have no training image \\(3, 4, 5, 6, 7 and 999999993 more\\)",
        ),
        (_arrays(np.array([0, 1, 0, 2**64 - 1], np.uint64), [0, 1]), "label 18446744073709551615 is no class id"),
        (
            _arrays([0, 1, 2, 0], [0, 1], classes=np.array(list("abcde"))),
            "2 of 5 classes have no training image \\(d, e\\)",
        ),
        (
            _arrays([0, 1, 2, 0], [0, 1], classes=np.array(["a", "b", "c"], dtype=object)),
            "'classes' holds Python objects.*dtype=str",
        ),
    ],
)
def test_bad_npz_inputs(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(FrepoError, match=message):
        load_dataset(str(path))


def test_class_folders_spelt_in_two_unicode_forms_are_one_class(tmp_path):
    """A folder copied from macOS spells é as e and an accent (NFD): train/ and test/ spelt otherwise were
    "different class folders" whose names printed the same ("test/ lacks ['café']; test/ has ['café']"). The
    classes keep torchvision's order of train/'s folders (a set made before keeps its class ids), and test/'s
    images take those ids by name, whichever order its spelling sorts in."""
    import unicodedata

    from PIL import Image

    names = ("café", "été", "fée")  # été sorts before fée spelt NFD (e...), after it spelt NFC (é...)
    for split, form in (("train", "NFD"), ("test", "NFC")):
        for k, name in enumerate(names):
            folder = tmp_path / split / unicodedata.normalize(form, name)
            folder.mkdir(parents=True)
            Image.fromarray(np.full((4, 4), 10 * k, np.uint8)).save(folder / "0.png")
    raw = load_dataset(str(tmp_path))
    assert raw.classes == list(names)
    for x, y in ((raw.x_train, raw.y_train), (raw.x_test, raw.y_test)):  # each image with its class's id
        assert sorted(y.tolist()) == [0, 1, 2] and all(int(image.max()) == 10 * int(k) for image, k in zip(x, y))
    # Two folders of one split spelling one name: refused, not two classes of one name
    (tmp_path / "train" / unicodedata.normalize("NFC", "été")).mkdir()
    with pytest.raises(FrepoError, match="two class folders named 'été', in two Unicode spellings: merge them"):
        load_dataset(str(tmp_path))


def test_npz_arrays_saved_as_other_tools_save_them(tmp_path):
    """Keras's N×1 labels are read; torch's channels-first images, levels saved as floats and label names get
    the line that fixes them; a header declaring more than the machine holds was out-of-memory advice to lower
    --batch-size; a file named .NPZ was "neither a .npz file nor an ImageFolder directory"."""
    x = np.arange(4 * 36, dtype=np.uint8).reshape(4, 6, 6)
    path = tmp_path / "KERAS.NPZ"

    def save(**arrays):
        with open(path, "wb") as fh:  # np.savez would add .npz to the name
            np.savez(
                fh,
                **{**dict(x_train=x, y_train=np.array([0, 1, 0, 1]), x_test=x[:2], y_test=np.array([0, 1])), **arrays},
            )

    save(y_train=np.array([[0], [1], [0], [1]]), y_test=np.array([[0], [1]]))
    raw = load_dataset(str(path))
    assert list(raw.y_train) == [0, 1, 0, 1] and list(raw.y_test) == [0, 1]
    for arrays, hint in (
        (dict(x_train=np.zeros((4, 3, 6, 6), np.uint8)), "channels first.*x.transpose\\(0, 2, 3, 1\\)"),
        (dict(x_train=np.full((4, 6, 6), 200.0)), "levels 0..255 as floats\\? save them as uint8"),
        (dict(y_train=np.array(["cat", "dog", "cat", "dog"])), "names\\? save np.unique\\(y, return_inverse=True\\)"),
        (dict(y_train=np.array([0.0, 1.0, 0.0, 1.0])), "whole numbers as floats\\? save y.astype"),
        (dict(y_train=np.eye(2)[[0, 1, 0, 1]].astype(int)), "one-hot\\? save y.argmax\\(1\\)"),
    ):
        save(**arrays)
        with pytest.raises(FrepoError, match=hint):
            load_dataset(str(path))
    # A header declaring 10**12 images of 6×6 (36 TB) in a file of 144 bytes of them.
    save()
    with zipfile.ZipFile(path) as archive:  # the header rewritten in place: sizes and CRC made to agree
        members = {name: archive.read(name) for name in archive.namelist()}
    # as long as before (the header's length is recorded): 12 of its padding spaces make room for 12 digits
    members["x_train.npy"] = members["x_train.npy"].replace(b"(4, 6, 6), }" + b" " * 12, b"(1000000000000, 6, 6), }")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(
        FrepoError,
        match="no memory to read the array 'x_train': its header declares shape "
        "\\(1000000000000, 6, 6\\) \\(33527.6 GiB\\) but it holds .* bytes: damaged",
    ):
        load_dataset(str(path))


def test_truncated_npz_and_wrong_paths(tmp_path, blobs):
    cut = tmp_path / "cut.npz"
    cut.write_bytes(blobs.read_bytes()[: len(blobs.read_bytes()) // 2])
    with pytest.raises(FrepoError, match="corrupt or truncated"):
        load_dataset(str(cut))
    with pytest.raises(FrepoError, match="not found"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(FrepoError, match="unknown dataset"):
        load_dataset("imagenet-9000")
    with pytest.raises(FrepoError, match="dataset folder not found: .*missing_dir"):  # a path: not "unknown dataset"
        load_dataset(str(tmp_path / "missing_dir"))
    with pytest.raises(FrepoError, match="dataset folder not found"):
        load_dataset("./missing_dir")
    with pytest.raises(FrepoError, match="train/"):
        load_dataset(str(tmp_path))  # a folder without train/ and test/


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    raw = load_dataset(str(tmp_path))
    assert raw.x_train.shape == (6, 8, 8, 3) and raw.classes == ["cat", "dog"]
    assert list(raw.y_test) == [0, 0, 1, 1]
    # Too few images for the IPC: the class named, and the IPC that fits ("class 0 has 3 training images").
    import frepo

    with pytest.raises(
        FrepoError, match="2 of 2 classes have fewer than ipc=4 .*: class 0 \\(cat\\) has 3; give --ipc 3"
    ):
        frepo.make_subset(DataConfig(dataset=str(tmp_path), val_size=0), 4)
    # Hidden folders are no classes (a notebook's checkpoints made train/ and test/ "different").
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / ".ipynb_checkpoints" / "0.png")
    assert load_dataset(str(tmp_path)).classes == ["cat", "dog"]
    # Files of a type frepo does not read are named, not skipped without a word (a class of GIFs lost them).
    for i in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "dog" / f"g{i}.gif")
    with pytest.warns(UserWarning, match="skipped 2 .gif files \\(first: .*g0.gif\\), which frepo does not read"):
        assert len(load_dataset(str(tmp_path)).x_train) == 6
    for name in ("0.png", "1.png", "2.png"):
        (tmp_path / "train" / "dog" / name).unlink()
    with pytest.raises(FrepoError, match="no images in class folder\\(s\\) \\['dog'\\] \\(they hold 2 .gif files"):
        load_dataset(str(tmp_path))
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "dog" / f"{i}.png")
        (tmp_path / "train" / "dog" / f"g{i}.gif").unlink(missing_ok=True)
    # Class folders that differ are named.
    (tmp_path / "test" / "dog").rename(tmp_path / "test" / "cow")
    with pytest.raises(FrepoError, match="same class folders; test/ lacks \\['dog'\\]; test/ has \\['cow'\\] that"):
        load_dataset(str(tmp_path))
    (tmp_path / "test" / "cow").rename(tmp_path / "test" / "dog")
    # Mixed sizes: centre-cropped and resized to 32×32, as the reference does for CUB, and said (a folder of
    # 64×64 images with one odd one became 32×32 without a word).
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "train" / "cat" / "big.png")
    with pytest.warns(UserWarning, match="several sizes \\(10 of 8×8, 1 of 30×20; 30×20: .*train/cat/big.png\\)"):
        assert load_dataset(str(tmp_path)).x_train.shape == (7, 32, 32, 3)


def test_16_bit_greyscale_pngs_keep_their_levels():
    """PIL's convert("L") clips 16-bit levels to 255: such a PNG was read as a black-and-white image."""
    from PIL import Image

    from frepo.data.folders import to_array

    levels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # 0 .. 63 000 of 65 535
    image = Image.fromarray(levels)
    assert image.mode == "I;16"
    got = to_array(image, channels=1)[..., 0]
    assert np.array_equal(got, np.rint(levels / 257).astype(np.uint8))
    assert len(np.unique(got)) == 64


def _folder(root, images: dict) -> str:
    """root/{train,test}/<class>/<name> from {"<class>/<name>": PIL image} (the same images in both splits)."""
    for split in ("train", "test"):
        for name, image in images.items():
            (root / split / name).parent.mkdir(parents=True, exist_ok=True)
            image.save(root / split / name)
    return str(root)


def test_an_image_is_read_as_it_is_shown_and_in_its_own_levels(tmp_path, monkeypatch):
    """A phone's portrait photo (stored sideways, turned by its EXIF orientation) was read sideways; a 32-bit
    TIFF's levels were clipped to white or black; a palette image of greys and a greyscale image with alpha made
    a greyscale dataset three-channel; a damaged header was a traceback."""
    from PIL import Image

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (2, 4, 3), dtype=np.uint8)  # 4 wide, 2 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise: 2 wide, 4 tall
    portrait = Image.fromarray(stored)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "turned" / split / cls).mkdir(parents=True)
            portrait.save(tmp_path / "turned" / split / cls / "0.png", exif=exif)
    raw = load_dataset(str(tmp_path / "turned"))
    assert raw.x_train.shape == (2, 4, 2, 3)
    assert np.array_equal(raw.x_train[0], np.rot90(stored, k=-1))

    greys = rng.integers(0, 256, (6, 6), dtype=np.uint8)
    palette = Image.fromarray(greys).convert("P")  # a palette of 256 greys
    with_alpha = Image.fromarray(np.stack([greys, np.full_like(greys, 9)], -1), "LA")
    deep = Image.fromarray((greys.astype(np.uint16) * 257).astype(">u2"))  # 16-bit, big-endian
    assert (palette.mode, deep.mode) == ("P", "I;16B")
    pgm = Image.fromarray(greys.astype(np.uint16) * 257)  # PIL opens a 16-bit PGM as 32-bit "I"
    root = _folder(
        tmp_path / "greys", {"a/p.png": palette, "a/pgm.pgm": pgm, "b/la.png": with_alpha, "b/deep.tif": deep}
    )
    assert Image.open(tmp_path / "greys" / "train" / "a" / "pgm.pgm").mode == "I"
    raw = load_dataset(root)
    assert raw.x_train.shape == (4, 6, 6, 1)  # one channel: every image is greyscale
    for image in raw.x_train:
        assert np.array_equal(image[..., 0], greys)
    # A palette image of colours is colour.
    colour = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).convert("P")
    _folder(tmp_path / "greys", {"a/c.png": colour})
    assert load_dataset(root).x_train.shape == (5, 6, 6, 3)

    for mode, array in (("I", greys.astype(np.int32) * 100), ("F", greys / 255.0)):
        root = _folder(
            tmp_path / mode,
            {"a/0.tif": Image.fromarray(array.astype({"I": np.int32, "F": np.float32}[mode])), "b/0.png": palette},
        )
        with pytest.raises(
            FrepoError, match=f"0.tif is a 32-bit {'integer' if mode == 'I' else 'float'} image.*8- or 16-bit PNG"
        ):
            load_dataset(root)

    root = _folder(tmp_path / "damaged", {"a/0.png": palette, "b/0.png": palette})
    (tmp_path / "damaged" / "train" / "b" / "0.ppm").write_bytes(b"P6\n4 x\n255\n" + bytes(48))
    with pytest.raises(FrepoError, match="cannot read image .*b/0.ppm"):
        load_dataset(root)
    (tmp_path / "damaged" / "train" / "b" / "0.ppm").unlink()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 36 pixels: over twice the limit, a "decompression bomb"
    with pytest.raises(FrepoError, match="cannot read image .*0.png: .*exceeds limit"):
        load_dataset(root)


def test_a_set_of_a_folder_now_read_in_another_shape_says_so(tmp_path):
    """A set made from a folder that frepo reads otherwise now (grey palettes and grey-with-alpha images as one
    channel, photos turned by their EXIF orientation) failed deep in the first transform ("C = 3 ... got 1")."""
    from PIL import Image

    import frepo

    colour = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8))
    root = _folder(tmp_path / "data", {f"{c}/{i}.png": colour for c in "ab" for i in range(3)})
    path = frepo.save_distilled(frepo.make_subset(root, 2), tmp_path / "set.safetensors")
    grey = Image.fromarray(np.zeros((4, 4), np.uint8))
    _folder(tmp_path / "data", {f"{c}/{i}.png": grey for c in "ab" for i in range(3)})
    with pytest.raises(FrepoError, match=r"set.safetensors holds images of 3×4×4 \(C×H×W\), but .*data reads as "
                       r"1×4×4 now: the data changed since the set was made, or frepo reads it otherwise"):  # fmt: skip
        frepo.evaluate(path, models=1, steps=1)
    # class folders renamed since: the set's labels would pair with other classes
    _folder(tmp_path / "data", {f"{c}/{i}.png": colour for c in "ab" for i in range(3)})
    for split in ("train", "test"):
        (tmp_path / "data" / split / "b").rename(tmp_path / "data" / split / "0b")
    with pytest.raises(FrepoError, match=r"numbers its classes otherwise than .*data does now \(class 0: 'a' in the "
                       r"set, '0b' in the data\)"):  # fmt: skip
        frepo.evaluate(path, models=1, steps=1)


def test_hidden_files_and_linked_loops_in_a_class_folder_add_no_images(tmp_path):
    """A notebook's .ipynb_checkpoints inside a class folder, and macOS's ._ files, were read as images of
    that class; a link back to a folder above read the other classes' images as this one's."""
    from PIL import Image

    image = Image.fromarray(np.zeros((4, 4), np.uint8))
    root = _folder(tmp_path, {"a/0.png": image, "b/0.png": image, "a/.ipynb_checkpoints/0-checkpoint.png": image})
    (tmp_path / "train" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble: no image
    assert len(load_dataset(root).x_train) == 2
    (tmp_path / "train" / "a" / "up").symlink_to(tmp_path / "train")
    with pytest.raises(FrepoError, match="a/up leads to .*train, a folder above it: reading it would loop"):
        load_dataset(root)
    (tmp_path / "train" / "a" / "up").unlink()
    # Two links that lead to each other's folder (a/x -> b/sub, b/sub/y -> a): no link leads above its own
    # folder, and the walk read 82 files of 2 images.
    (tmp_path / "train" / "b" / "sub").mkdir()
    (tmp_path / "train" / "a" / "x").symlink_to(tmp_path / "train" / "b" / "sub")
    (tmp_path / "train" / "b" / "sub" / "y").symlink_to(tmp_path / "train" / "a")
    with pytest.raises(FrepoError, match="a/x/y and .*train/a lead to the same folder .*train/a \\(a loop"):
        load_dataset(root)
    (tmp_path / "train" / "b" / "sub" / "y").unlink()
    (tmp_path / "train" / "a" / "x").unlink()
    (tmp_path / "train" / "b" / "sub").rmdir()
    (tmp_path / "train" / "a" / "sub").mkdir()  # one folder reached twice: its images were read twice
    image.save(tmp_path / "train" / "a" / "sub" / "1.png")
    (tmp_path / "train" / "a" / "alias").symlink_to(tmp_path / "train" / "a" / "sub")
    with pytest.raises(
        FrepoError, match="a/sub and .*a/alias lead to the same folder .*a/sub \\(a loop, or its images read twice\\)"
    ):
        load_dataset(root)
    (tmp_path / "train" / "a" / "alias").unlink()
    (tmp_path / "train" / "a" / "sub" / "1.png").unlink()
    (tmp_path / "train" / "a" / "sub").rmdir()
    (tmp_path / "train" / "a" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    image.save(tmp_path / "elsewhere" / "1.png")
    assert len(load_dataset(root).x_train) == 3  # a link to a folder elsewhere is followed, as torchvision does
    (tmp_path / "train" / "b" / "IMG_0001.HEIC").write_bytes(b"heic")
    with pytest.warns(UserWarning, match="skipped 1 .heic file"):
        load_dataset(root)


def test_validation_split_is_disjoint_stratified_and_fixed():
    labels = np.repeat(np.arange(10), 50)
    train, val = holdout_split(labels, 100)
    assert len(val) == 100 and len(train) == 400
    assert not set(train) & set(val)
    assert np.bincount(labels[val]).tolist() == [10] * 10
    train2, val2 = holdout_split(labels, 100)
    assert np.array_equal(val, val2)
    assert default_val_size(50_000) == 5000 and default_val_size(1257) == 125


def test_prepare_fits_preprocessing_on_the_distillation_part_only(blobs):
    data = prepare(DataConfig(dataset=str(blobs), val_size=9))
    x, y = data.train()
    assert len(x) == 90 - 9 and not set(data.train_idx) & set(data.val_idx)
    # Standardised with statistics of the distillation images: exactly zero mean there.
    assert abs(float(x.mean())) < 1e-5
    xv, _ = data.val()
    xt, yt = data.test()
    assert xv.shape[1:] == x.shape[1:] == xt.shape[1:] and len(yt) == len(data.raw.y_test)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.int64


def test_the_test_fingerprint_is_read_once_and_follows_a_replaced_split(monkeypatch):
    import frepo.data.registry as registry
    from frepo.data import load_dataset

    raw = load_dataset("digits")
    first = raw.test_fingerprint()
    monkeypatch.setattr(registry.hashlib, "sha256", lambda: (_ for _ in ()).throw(AssertionError("read again")))
    assert raw.test_fingerprint() == first  # remembered, not hashed again
    monkeypatch.undo()
    raw.x_test = raw.x_test[::-1].copy()
    assert raw.test_fingerprint() != first  # another split: hashed anew


def test_a_set_of_moved_data_is_evaluated_where_the_data_is_now(tmp_path, capsys, monkeypatch):
    """A set made from a dataset of one's own records its path: once the folder moved (or the set reached a
    colleague) it was "unknown dataset", and --dataset NEWPATH was refused ("drop --dataset")."""
    from conftest import make_blobs_npz

    import frepo
    from frepo.cli import main

    (tmp_path / "old").mkdir()
    data = make_blobs_npz(tmp_path / "old" / "blobs.npz")
    ds = frepo.make_subset(str(data), 2)
    frepo.save_distilled(ds, tmp_path / "set.safetensors")
    (tmp_path / "old").rename(tmp_path / "new")
    moved = tmp_path / "new" / "blobs.npz"
    flags = ["--models", "1", "--steps", "2", "--width", "8"]
    assert main(["evaluate", str(tmp_path / "set.safetensors"), *flags]) == 2
    err = capsys.readouterr().err
    assert f"was made from {data.resolve()}, which is not there any more: pass --dataset PATH" in err, err
    assert main(["evaluate", str(tmp_path / "set.safetensors"), "--dataset", str(moved), *flags]) == 0
    assert f"images of {moved.resolve()}" in capsys.readouterr().out
    result = frepo.evaluate(ds, dataset=str(moved), models=1, steps=2, width=8)  # a loaded set too
    assert result.extra["dataset"] == str(moved.resolve())
    # Other data under the name: refused by the test split's fingerprint.
    other = make_blobs_npz(tmp_path / "other.npz", seed=1)
    with pytest.raises(FrepoError, match="other.npz is other data \\(its test split is not the one the set"):
        frepo.evaluate(ds, dataset=str(other), models=1, steps=2)
    with pytest.raises(FrepoError, match="was distilled from digits, not mnist; drop --dataset"):
        frepo.evaluate(frepo.make_subset("digits", 1), dataset="mnist", models=1, steps=2)
    # A run started from the set (--init) takes the data where it is now, as evaluate does.
    run = ["distill", "--dataset", str(moved), "--ipc", "2", "--init", str(tmp_path / "set.safetensors")]
    tiny = ["--steps", "1", "--width", "8", "--num-models", "1", "--eval-every", "0", "--eval-steps", "2"]
    assert main([*run, *tiny, "--out", str(tmp_path / "r")]) == 0, capsys.readouterr().err
    # A hand-built set naming its dataset by a relative path is that dataset given by its absolute path.
    import dataclasses

    monkeypatch.chdir(tmp_path)
    meta = {k: v for k, v in ds.meta.items() if k != "test_fingerprint"}
    relative = dataclasses.replace(ds, meta={**meta, "dataset": "new/blobs.npz"})
    frepo.evaluate(relative, dataset=str(moved), models=1, steps=2, width=8)
    assert len(frepo.make_subset(moved, 1).images) == 3  # a pathlib.Path names a dataset too


def test_own_data_can_be_said_not_to_keep_its_class_under_a_flip(tmp_path, blobs):
    """A dataset of one's own (digits, text) was always taken as mirror-invariant: the flip trick on and every
    evaluation flipping its images, with no way to say otherwise."""
    import frepo
    from frepo import presets
    from frepo.eval.augment import reference_ops

    assert presets.resolve(str(blobs), 1).use_flip and frepo.make_subset(str(blobs), 1).meta["mirror_invariant"]
    said = presets.resolve(str(blobs), 1, overrides={"mirror_invariant": False})
    assert said.use_flip is False and said.data.mirror_invariant is False
    ds = frepo.make_subset(DataConfig(dataset=str(blobs), mirror_invariant=False), 1)
    assert ds.meta["mirror_invariant"] is False and "flip" not in reference_ops(ds.meta["mirror_invariant"])
    out = tmp_path / "s.safetensors"
    assert (
        frepo.cli.main(["subset", "--dataset", str(blobs), "--ipc", "1", "--no-mirror-invariant", "--out", str(out)])
        == 0
    )
    assert frepo.load_distilled(out).meta["mirror_invariant"] is False
    # A DistillConfig built by hand gets the same default as presets.resolve gives (it kept the trick on).
    config = frepo.DistillConfig(steps=1, eval_every=0, eval_steps=2)
    config.data.dataset, config.data.mirror_invariant = str(blobs), False
    config.model.width, config.pool.num_models = 8, 1
    made = frepo.load_distilled(frepo.distill(config, tmp_path / "run").distilled_path)
    assert made.meta["config"]["use_flip"] is False and made.meta["mirror_invariant"] is False


def test_an_empty_class_folder_is_not_said_to_hold_files_of_another(tmp_path):
    from PIL import Image

    for split, cls, name in (("train", "cat", "1.png"), ("train", "cat", "a.gif"), ("train", "dog", "1.png")):
        (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / split / cls / name)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "dog").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "test" / "cat" / "1.png")
    (tmp_path / "test" / "dog" / "notes.pdf").write_bytes(b"%PDF-1.4")  # PIL writes PDFs, it reads none
    (tmp_path / "test" / "dog" / "features.h5").write_bytes(b"\x89HDF")  # PIL identifies HDF5, decodes none
    with pytest.raises(FrepoError, match=r"no images in class folder\(s\) \['dog'\]$"):
        load_dataset(str(tmp_path))


def test_a_builtin_dataset_s_file_read_by_its_path_says_it_is_read_as_the_user_s_own(tmp_path, no_offline_copies):
    """`--dataset data/mnist.npz` distilled MNIST with flips on and no preset, without a word."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (20, 4, 4), dtype=np.uint8),
        "y_train": np.arange(20) % 2,
        "x_test": rng.integers(0, 256, (4, 4, 4), dtype=np.uint8),
        "y_test": np.arange(4) % 2,
    }
    np.savez(tmp_path / "mnist.npz", **arrays)
    np.savez(tmp_path / "mine.npz", **arrays)
    with pytest.warns(
        UserWarning, match=r"mnist.npz is read as a dataset of your own, not as mnist: .*--dataset mnist"
    ):
        raw = load_dataset(str(tmp_path / "mnist.npz"))
    assert raw.mirror_invariant
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(str(tmp_path / "mine.npz"))


def test_one_process_downloads_a_torchvision_dataset_at_a_time(tmp_path, no_offline_copies, monkeypatch):
    """Two first runs at once each wrote torchvision's files in place, over each other's: a download now holds
    the dataset's build lock, which a second process waits for."""
    import fcntl

    import torchvision.datasets

    held = []

    def mnist(root, train, download):
        if not download:
            held.append(False)
            raise RuntimeError("Dataset not found or corrupted.")
        with open(tmp_path / ".mnist-download.lock") as other:  # another process's view: a separate open file
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(train)
        raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(torchvision.datasets, "MNIST", mnist)
    with pytest.raises(FrepoError, match="could not load mnist"):
        load_dataset("mnist", tmp_path, download=True)
    assert held == [False, True]  # looked for unlocked, then downloading locked: it failed here, so no second
    assert list(tmp_path.iterdir()) == []  # the lock file and the build's temp folder went with it
    # Files there are read with nothing written: a shared, read-only dataset folder had failed on the lock file.
    import frepo.data.registry as registry

    class Present:
        def __init__(self, root, train, download):
            assert not download
            self.data, self.targets = np.zeros((4, 2, 2), np.uint8), np.arange(4) % 2

    monkeypatch.setattr(torchvision.datasets, "MNIST", Present)
    monkeypatch.setattr(registry, "build_lock", lambda *a: pytest.fail("a lock for files that are there"))
    assert load_dataset("mnist", tmp_path, download=True).x_train.shape == (4, 2, 2, 1)


def test_a_failed_download_leaves_no_folders_it_made(tmp_path, no_offline_copies, monkeypatch):
    """A failed torchvision download left --data-dir and MNIST/raw made and empty; a partly written file stays
    (torchvision checks it on the next try), and so does every folder that was there before. (The layouts'
    downloads: tests/test_layouts.py.)"""
    import urllib.error

    import torchvision.datasets

    def fail_after_making(folder):
        def download(*args, download, **kwargs):
            if not download:  # as torchvision's datasets say it
                raise RuntimeError("Dataset not found.")
            (folder / "raw").mkdir(parents=True, exist_ok=True)
            raise urllib.error.URLError("no network")

        return download

    new = tmp_path / "new" / "data"
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda root, **kw: fail_after_making(new / "MNIST")(**kw))
    with pytest.raises(FrepoError, match="could not download mnist into .*no network"):
        load_dataset("mnist", new, download=True)
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    (kept / "old" / "empty").mkdir(parents=True)  # the user's, though empty
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda root, **kw: fail_after_making(kept / "MNIST")(**kw))
    with pytest.raises(FrepoError, match="no network"):
        load_dataset("mnist", kept, download=True)
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*")) == ["old", "old/empty"]
