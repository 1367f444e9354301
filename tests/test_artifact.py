"""The distilled-set file: round trip, preprocessing travels with it, damage is rejected."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from frepo.base.errors import FrepoError
from frepo.data.preprocess import fit_preprocessing
from frepo.io.artifact import DistilledSet, load_distilled, save_distilled


def _set(labels_2d=True):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, size=(40, 4, 4, 3)).astype(np.uint8)
    pre = fit_preprocessing(raw, "zca", 0.1)
    images = pre(raw[:6])
    labels = torch.randn(6, 3) if labels_2d else torch.tensor([0, 0, 1, 1, 2, 2])
    meta = {
        "kind": "distilled",
        "dataset": "toy",
        "classes": ["a", "b", "c"],
        "ipc": 2,
        "seed": 0,
        "step": 5,
        "config": {"lr": 3e-4},
        "mirror_invariant": True,
        "val_size": 0,
    }
    return DistilledSet(images, labels, pre, meta), raw


@pytest.mark.parametrize("labels_2d", [True, False])
def test_round_trip(tmp_path, labels_2d):
    ds, raw = _set(labels_2d)
    path = save_distilled(ds, tmp_path / "set.safetensors")
    back = load_distilled(path)
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
    assert back.classes == ["a", "b", "c"] and back.meta["step"] == 5 and back.meta["format_version"] == 1
    # The preprocessing travels: raw test images are transformed exactly as at distillation time.
    torch.testing.assert_close(back.transform(raw), ds.transform(raw))
    np.testing.assert_allclose(back.pixels().permute(0, 2, 3, 1).numpy(), raw[:6] / 255.0, atol=1e-4)
    assert back.targets().shape == (6, 3)
    # In a notebook: `==` raised ("Boolean value of Tensor ... is ambiguous"), and the repr dumped every tensor.
    assert back == back and back != load_distilled(path)  # identity; the same contents: the same checksum
    assert back.meta["checksum"] == load_distilled(path).meta["checksum"]
    assert repr(back).startswith(f"DistilledSet(6×{'×'.join(map(str, ds.images.shape[1:]))} images, ")
    assert len(repr(back)) < 200 and "\n" not in repr(back)


def test_tampered_file_is_rejected(tmp_path):
    ds, _ = _set()
    path = save_distilled(ds, tmp_path / "set.safetensors")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # flip one bit of the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(FrepoError, match="checksum"):
        load_distilled(path)


def test_edited_metadata_is_rejected(tmp_path):
    from safetensors.torch import load_file, save_file

    ds, _ = _set()
    path = save_distilled(ds, tmp_path / "set.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["frepo"])
    meta["dataset"] = "cifar10"  # claim another dataset
    save_file(load_file(str(path)), str(path), metadata={"frepo": json.dumps(meta)})
    with pytest.raises(FrepoError, match="checksum"):
        load_distilled(path)


def test_truncated_and_foreign_files_are_rejected(tmp_path):
    ds, _ = _set()
    path = save_distilled(ds, tmp_path / "set.safetensors")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FrepoError, match="corrupt or truncated"):
        load_distilled(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a file at all")
    with pytest.raises(FrepoError):
        load_distilled(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"images": torch.zeros(2, 3, 4, 4)}, str(foreign))
    with pytest.raises(FrepoError, match="--dataset"):
        load_distilled(foreign)
    with pytest.raises(FrepoError, match=r"is a folder; load_distilled reads a set's file \(a run's is .*distilled"):
        load_distilled(tmp_path)  # "file not found" of a folder that is there
    (tmp_path / "export.json").write_text("{}")  # an export folder: its reader named, not a run's file it lacks
    with pytest.raises(FrepoError, match=r"is a frepo export folder: frepo.load_export\("):
        load_distilled(tmp_path)
    (tmp_path / "export.json").unlink()
    with pytest.raises(FrepoError, match="not found"):
        load_distilled(tmp_path / "missing.safetensors")


def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    ds, _ = _set()
    path = save_distilled(ds, tmp_path / "set.safetensors")
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    with pytest.raises(FrepoError, match="No space left"):
        save_distilled(ds, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["set.safetensors"]  # no temp file left behind


def test_block_zca_travels_with_the_file(tmp_path, monkeypatch):
    """ImageNette-sized sets carry the checkerboard block ZCA (a sub-image matrix and its stride)."""
    from frepo.data import preprocess

    monkeypatch.setattr(preprocess, "MAX_ZCA_DIMS", 12)  # 4×4×3 images: 2×2 sub-images of 2×2×3
    ds, raw = _set()
    ds.preprocessing = fit_preprocessing(raw, "zca_block", 0.1)
    ds.images = ds.preprocessing(raw[:6])
    assert ds.preprocessing.stride == 2
    back = load_distilled(save_distilled(ds, tmp_path / "set.safetensors"))
    assert back.preprocessing.kind == "zca_block" and back.preprocessing.stride == 2
    torch.testing.assert_close(back.transform(raw), ds.transform(raw))
    np.testing.assert_allclose(back.pixels().permute(0, 2, 3, 1).numpy(), raw[:6] / 255.0, atol=1e-4)


def test_a_set_the_loader_would_refuse_is_never_saved_nor_evaluated(tmp_path):
    """save_distilled wrote hand-built sets that load_distilled then refused, over a good file; evaluate
    trained them to chance accuracy (NaN or uint8 images) or failed deep inside torch (labels that do not fit)."""
    import frepo

    ds, _ = _set()
    good = save_distilled(ds, tmp_path / "keep.safetensors")
    kept = good.read_bytes()
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    without_dataset = {k: v for k, v in ds.meta.items() if k != "dataset"}
    cases = {
        "labels are (6, 2), expected (6, 3)": DistilledSet(ds.images, ds.labels[:, :2], ds.preprocessing, ds.meta),
        "images contain NaN": DistilledSet(ds.images * float("nan"), ds.labels, ds.preprocessing, ds.meta),
        "images are torch.uint8": DistilledSet(ds.images.to(torch.uint8), ds.labels, ds.preprocessing, ds.meta),
        "class ids must lie in 0..2": DistilledSet(ds.images, ids + 3, ds.preprocessing, ds.meta),
        "integer tensor": DistilledSet(ds.images, ids.float(), ds.preprocessing, ds.meta),
        "lacks 'dataset'": DistilledSet(ds.images, ds.labels, ds.preprocessing, without_dataset),
        "'ipc' is True": DistilledSet(ds.images, ds.labels, ds.preprocessing, {**ds.meta, "ipc": True}),
    }
    for fragment, bad in cases.items():
        with pytest.raises(FrepoError, match=f"not saved to .*keep.safetensors: .*{re.escape(fragment)}"):
            save_distilled(bad, good)
        with pytest.raises(FrepoError, match=f"not exported to .*: .*{re.escape(fragment)}"):
            frepo.export(bad, tmp_path / "export", "pt")  # 5 PNGs of 10 images, NaN images, were exported
        with pytest.raises(FrepoError, match=f"the set: .*{re.escape(fragment)}"):
            frepo.evaluate(bad, models=1, steps=1, width=8)
    with pytest.raises(FrepoError, match=re.escape("one label per image; got images (6, 3, 4, 4) and labels (4,)")):
        DistilledSet(ds.images, ids[:4], ds.preprocessing, ds.meta)  # refused as it is made
    bare = DistilledSet(ds.images, ds.labels, ds.preprocessing)  # meta={}: .classes was a KeyError
    for read in (lambda s: s.classes, lambda s: s.num_classes, lambda s: s.targets(), lambda s: s.dataset):
        with pytest.raises(FrepoError, match="this set's meta has no '(classes|dataset)': a DistilledSet made by"):
            read(bare)
    with pytest.raises(FrepoError, match="lacks 'dataset' and 'classes': a DistilledSet made by hand needs meta="):
        frepo.evaluate(bare, models=1, steps=1, width=8)  # both at once: one key a time before, without the advice
    assert good.read_bytes() == kept
    # What the file's JSON would hold is what is checked: classes as a tuple are saved as a list.
    as_tuple = DistilledSet(ds.images, ds.labels, ds.preprocessing, {**ds.meta, "classes": ("a", "b", "c")})
    assert load_distilled(save_distilled(as_tuple, tmp_path / "tuple.safetensors")).classes == ["a", "b", "c"]
    for name, value in (("images", ds.images.numpy()), ("labels", ds.labels.tolist()), ("preprocessing", None)):
        with pytest.raises(FrepoError, match=f"a DistilledSet's {name} must be a"):
            DistilledSet(**{"images": ds.images, "labels": ds.labels, "preprocessing": ds.preprocessing, name: value})


@pytest.mark.parametrize("labels_2d", [True, False])
def test_a_set_is_a_torch_dataset_for_a_data_loader(tmp_path, labels_2d):
    """`TensorDataset(ds.images, ds.targets())` was written by hand; class ids for a cross-entropy recipe."""
    from torch.utils.data import DataLoader

    ds = load_distilled(save_distilled(_set(labels_2d)[0], tmp_path / "set.safetensors"))
    for labels, expected in (("targets", ds.targets()), ("class_ids", ds.class_ids())):
        pairs = list(DataLoader(ds.torch_dataset(labels), batch_size=3))
        assert torch.equal(torch.cat([x for x, _ in pairs]), ds.images)
        assert torch.equal(torch.cat([y for _, y in pairs]), expected)
    assert ds.targets().shape == (len(ds.images), ds.num_classes) and ds.class_ids().dtype == torch.int64
    with pytest.raises(FrepoError, match="unknown labels 'soft': labels must be one of targets, class_ids"):
        ds.torch_dataset("soft")


def test_save_distilled_replaces_a_set_file_only(tmp_path):
    """`save_distilled(ds, "RUN/checkpoint.pt")` replaced the run's checkpoint (and config.json) with a set,
    and returned: the run could not resume."""
    ds, _ = _set()
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "config.json", "metrics.jsonl"):
        (run / name).write_bytes(b"kept")
        with pytest.raises(FrepoError, match=f"not saved to .*{name}: it is a file other than a set"):
            save_distilled(ds, run / name)
        assert (run / name).read_bytes() == b"kept"
    with pytest.raises(FrepoError, match="it is a folder"):
        save_distilled(ds, run)
    save_distilled(ds, run / "distilled.safetensors")
    save_distilled(ds, run / "distilled.safetensors")  # a set replaces a set
    assert load_distilled(run / "distilled.safetensors").meta["step"] == 5
    for name in ("sub.pt", "base", "SET.SAFETENSORS"):  # a set under another name (`subset --out base`) too
        save_distilled(ds, tmp_path / name)
        save_distilled(ds, tmp_path / name)
    # The command line refuses before the subset is made (herding takes minutes), not after.
    from frepo.cli import main

    (tmp_path / "notes").write_text("mine")
    assert main(["subset", "--dataset", "digits", "--ipc", "1", "--out", str(tmp_path / "notes")]) == 2
    assert (tmp_path / "notes").read_text() == "mine"


def test_a_set_read_from_its_file_knows_whether_it_changed_since(tmp_path):
    """A set changed in memory keeps its file's checksum: `still_as_read` tells, by its tensors' version counters
    and its preprocessing's settings, whether it still holds what the file held (evaluate's resumption keys by it)."""
    import dataclasses

    from frepo.io.artifact import still_as_read

    ds, _ = _set()
    path = save_distilled(ds, tmp_path / "s.safetensors")
    assert still_as_read(load_distilled(path)) and not still_as_read(ds)  # made in memory: no mark
    changes = {
        "images in place": lambda s: s.images.add_(1.0),
        "labels in place": lambda s: s.labels.mul_(2),
        "preprocessing in place": lambda s: s.preprocessing.mean.add_(1.0),
        "a preprocessing setting": lambda s: setattr(s.preprocessing, "std", s.preprocessing.std * 2),
        "images replaced": lambda s: setattr(s, "images", s.images.clone()),
    }
    for what, change in changes.items():
        read = load_distilled(path)
        change(read)
        assert not still_as_read(read), what
    assert not still_as_read(dataclasses.replace(load_distilled(path), meta={}))
    with torch.inference_mode():  # no version counters there: read, unmarked (it raised)
        assert not still_as_read(load_distilled(path))


def test_metadata_is_checksummed_as_the_file_holds_it(tmp_path):
    """The checksum was taken of the metadata as given, and checked against it as read back from JSON: int keys
    ({2: "a"}) came back as "2", and the set's own file said "modified or damaged"; mixed int and str keys were
    a TypeError from the JSON writer's key sort. A value JSON cannot hold is one line."""
    from frepo.base.errors import FrepoError
    from frepo.data.preprocess import Preprocessing
    from frepo.io.artifact import DistilledSet, load_distilled, save_distilled

    meta = {"dataset": "toy", "classes": ["a", "b"], "extra": {2: "a", 10: "b"}}
    standard = Preprocessing("standard", torch.zeros(1), torch.ones(1))
    ds = DistilledSet(torch.randn(2, 1, 4, 4), torch.tensor([0, 1]), standard, meta)
    save_distilled(ds, tmp_path / "s.safetensors")
    assert load_distilled(tmp_path / "s.safetensors").meta["extra"] == {"2": "a", "10": "b"}
    mixed = DistilledSet(ds.images, ds.labels, ds.preprocessing, {**meta, "extra": {2: "a", "b": 1}})
    save_distilled(mixed, tmp_path / "m.safetensors")
    assert load_distilled(tmp_path / "m.safetensors").meta["extra"] == {"2": "a", "b": 1}
    odd = DistilledSet(ds.images, ds.labels, ds.preprocessing, {**meta, "extra": torch.tensor(1)})
    with pytest.raises(FrepoError, match="metadata is not plain JSON"):
        save_distilled(odd, tmp_path / "o.safetensors")
