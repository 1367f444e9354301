"""The validation hold-out: disjoint from the distillation images and from the test split, and the only
split that selection (best.safetensors) ever reads: a distillation whose test split cannot be read
still completes and picks its best set by validation accuracy."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

import frepo.data
from frepo import distill
from frepo.config import DataConfig, DistillConfig
from frepo.data import PreparedData, RawDataset, prepare
from frepo.io.artifact import load_distilled
from frepo.jobs.subset import make_subset


class WithheldTestSplit(RawDataset):
    """A dataset whose test split raises on any read: whatever touches it fails the run."""

    def __getattribute__(self, name):
        if name in ("x_test", "y_test"):
            raise AssertionError(f"the test split ({name}) was read during distillation")
        return super().__getattribute__(name)

    def test_fingerprint(self) -> str:  # metadata only; the real one hashes the test split
        return "withheld"


def test_selection_never_reads_the_test_split(tmp_path, blobs, monkeypatch):
    real_load = frepo.data.load_dataset

    def load_without_test(*args, **kwargs):
        raw = real_load(*args, **kwargs)
        fields = {k: getattr(raw, k) for k in ("name", "x_train", "y_train", "x_test", "y_test", "classes")}
        return WithheldTestSplit(**fields, mirror_invariant=raw.mirror_invariant)

    def no_test(self):
        raise AssertionError("PreparedData.test() was called during distillation")

    monkeypatch.setattr(frepo.data, "load_dataset", load_without_test)
    monkeypatch.setattr(PreparedData, "test", no_test)
    config = DistillConfig(ipc=2, steps=4, batch_size=32, eval_every=1, eval_models=1, eval_steps=5, log_every=1)
    config.data = DataConfig(dataset=str(blobs), val_size=15)
    config.model.width, config.pool.num_models, config.pool.max_online_updates = 8, 2, 2
    config.checkpoint_every, config.device = 2, "cpu"
    result = distill(config, tmp_path / "run", progress=False)

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_acc" in r]
    assert [r["step"] for r in val] == [1, 2, 3, 4]
    best = load_distilled(result.best_path)
    top = max(r["val_acc"] for r in val)
    assert best.meta["val_acc"] == top
    assert best.meta["step"] == next(r["step"] for r in val if r["val_acc"] == top)  # the first best one
    assert best.meta["test_fingerprint"] == "withheld"


def _digests(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(image.tobytes()).hexdigest() for image in images}


def test_validation_is_disjoint_from_distillation_images_and_test_split(shared_data_dir):
    data = DataConfig(dataset="mnist")
    prepared = prepare(data)
    raw = prepared.raw
    assert not set(prepared.train_idx) & set(prepared.val_idx)
    assert len(prepared.train_idx) + len(prepared.val_idx) == len(raw.x_train) and len(prepared.val_idx) == 5000
    val, train, test = (
        _digests(x) for x in (raw.x_train[prepared.val_idx], raw.x_train[prepared.train_idx], raw.x_test)
    )
    assert not val & train and not val & test
    # A distillation starts from (and a random subset is) images of the distillation part only.
    start = make_subset(data, 5, "random", seed=0)
    pixels = torch.round(start.pixels() * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    chosen = _digests(pixels)
    assert len(chosen) == 50 and chosen <= train and not chosen & val


def test_split_val_finds_the_hold_out_of_a_narrowed_run(tmp_path):
    """A set distilled from some classes (or a chunk) was validated on their part of the hold-out, but
    `--split val` re-drew as many images from every class (the file recorded the count only): 92% in the
    run, 16% under evaluate. The file records the hold-out itself now; files written before it, and their
    exports, are read through their settings. On the test split, a set without some classes says how far it
    can go."""
    import warnings

    import pytest

    from frepo.base.errors import FrepoError
    from frepo.data import load_dataset
    from frepo.io.artifact import DistilledSet
    from frepo.io.export import export
    from frepo.io.foreign import load_export
    from frepo.jobs.evaluate import eval_split

    raw = load_dataset("digits")
    for k, narrowed in enumerate(
        (DataConfig(dataset="digits", classes="0,1"), DataConfig(dataset="digits", train_chunk=1, train_chunk_size=500))
    ):
        prepared = prepare(narrowed)
        images, labels = prepared.val()
        ds = make_subset(narrowed, 1)
        before = {key: v for key, v in ds.meta.items() if key != "holdout"}  # a file of an earlier frepo
        old = DistilledSet(ds.images, ds.labels, ds.preprocessing, before)
        export(old, tmp_path / f"old{k}", "pt")  # its export records the hold-out from its settings
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the hold-out holds the set's classes only: nothing is missing
            for found in (ds, old, load_export(tmp_path / f"old{k}")):
                val_images, val_labels = eval_split(found, raw, "val")
                assert torch.equal(val_labels, labels) and torch.equal(val_images, images)
        assert len(labels) == ds.meta["val_size"] < len(raw.y_train) // 10
    assert sorted(set(labels.tolist())) == list(range(10))  # the chunk's part of the hold-out spans every class
    two = make_subset(DataConfig(dataset="digits", classes="0,1"), 1)
    share = 100 * np.isin(raw.y_test, [0, 1]).mean()
    with pytest.warns(
        UserWarning, match=rf"no images of 8 of the 10 classes of digits \(2, 3, .*other classes are {share:.1f}%"
    ):
        eval_split(two, raw, "test")
    recorded = json.loads(json.dumps(two.meta["holdout"]))
    assert recorded == {"size": len(raw.y_train) // 10, "chunk": None, "classes": [0, 1]}
    export(two, tmp_path / "pt", "pt")  # an export carries it
    assert load_export(tmp_path / "pt").meta["holdout"] == two.meta["holdout"]
    # A count the record does not give (another hold-out than the file's) is refused, not evaluated
    wrong = DistilledSet(two.images, two.labels, two.preprocessing, {**two.meta, "val_size": two.meta["val_size"] + 1})
    with pytest.raises(FrepoError, match="records a hold-out of 26 images, but 25 of digits"):
        eval_split(wrong, raw, "val")


def test_a_set_without_a_hold_out_says_to_use_the_test_split(tmp_path, monkeypatch, capsys):
    """Another tool's set (and a run with val_size 0) has no hold-out: said so, not as 'val_size 0'."""
    import pytest

    from frepo.base.errors import FrepoError
    from frepo.data import load_dataset
    from frepo.io.artifact import DistilledSet
    from frepo.io.export import export
    from frepo.io.foreign import load_export, load_foreign
    from frepo.jobs.evaluate import eval_split

    raw = load_dataset("digits")
    ds = make_subset(DataConfig(dataset="digits"), 1)
    np.savez(tmp_path / "step1.npz", image=ds.images.permute(0, 2, 3, 1).numpy(), label=np.eye(10) - 0.1)
    foreign = load_foreign(tmp_path / "step1.npz", raw, preprocess="frepo")
    with pytest.raises(
        FrepoError, match="another tool's set .other tools distil from the whole training split. records no"
    ):
        eval_split(foreign, raw, "val")
    # said by the file's format, before the dataset is loaded and its preprocessing fitted (a ZCA: seconds)
    import frepo.jobs.evaluate as evaluate_module
    from frepo.cli import main

    monkeypatch.setattr(evaluate_module, "open_set", lambda *a: pytest.fail("the data was loaded first"))
    assert main(["evaluate", str(tmp_path / "step1.npz"), "--dataset", "digits", "--split", "val"]) == 2
    assert "another tool's set (other tools distil from the whole training split) records no" in capsys.readouterr().err
    monkeypatch.undo()
    none = DistilledSet(ds.images, ds.labels, ds.preprocessing, {**ds.meta, "val_size": 0, "holdout": None})
    with pytest.raises(FrepoError, match="^the set records no validation hold-out .val_size 0.: use --split test"):
        eval_split(none, raw, "val")
    export(none, tmp_path / "none", "pt")  # frepo's own export of such a set is no other tool's
    with pytest.raises(FrepoError, match="^the set records no validation hold-out"):
        eval_split(load_export(tmp_path / "none"), raw, "val")
    with pytest.raises(FrepoError, match="classes must name at least one class id"):
        DataConfig(dataset="digits", classes=[]).validate()
    with pytest.raises(FrepoError, match="classes must name each class once, got '1,1'"):  # one class, unsaid
        DataConfig(dataset="digits", classes="1,1").class_ids(10)


def test_a_chunk_or_class_the_dataset_lacks_is_refused_before_the_fit(monkeypatch):
    """Both were checked after the preprocessing's fit: on ImageNet, a pass over 15.7 GB before the one-line error."""
    import pytest

    from frepo.base.errors import FrepoError

    monkeypatch.setattr(frepo.data, "cached_preprocessing", lambda *a: pytest.fail("fitted before the check"))
    with pytest.raises(FrepoError, match=r"chunk 3 is beyond the training split: 1257 images make 3 chunks of 500"):
        prepare(DataConfig(dataset="digits", train_chunk=3, train_chunk_size=500))
    with pytest.raises(FrepoError, match=r"classes must be class ids in 0..9, got .0,12."):
        prepare(DataConfig(dataset="digits", classes="0,12"))
