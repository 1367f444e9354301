"""Coreset baselines: herding and k-center greedy against brute-force computations of their rules, and
`make_subset` with them on tiny data (distillation part only, integer labels, seeded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frepo.base.errors import FrepoError
from frepo.config import DataConfig
from frepo.data import prepare
from frepo.jobs.subset import herding_select, kcenter_select, make_subset


def brute_herding(features: np.ndarray, k: int) -> list[int]:
    """Step j: the unchosen i for which the mean of the chosen images plus i is nearest the class mean."""
    mu, chosen = features.mean(0), []
    for _ in range(k):
        gaps = {i: np.linalg.norm(mu - features[chosen + [i]].mean(0)) for i in range(len(features)) if i not in chosen}
        chosen.append(min(gaps, key=lambda i: (gaps[i], i)))
    return chosen


def brute_kcenter(features: np.ndarray, k: int) -> list[int]:
    """First the point nearest the mean; then the point whose nearest chosen point is farthest."""
    mu = features.mean(0)
    chosen = [min(range(len(features)), key=lambda i: (np.linalg.norm(features[i] - mu), i))]
    while len(chosen) < k:
        gaps = {
            i: min(np.linalg.norm(features[i] - features[c]) for c in chosen)
            for i in range(len(features))
            if i not in chosen
        }
        chosen.append(max(gaps, key=lambda i: (gaps[i], -i)))
    return chosen


@pytest.mark.parametrize("seed", range(4))
def test_selections_match_brute_force(seed):
    features = np.random.default_rng(seed).normal(size=(25, 6))
    for k in (1, 5, 12):
        assert herding_select(torch.from_numpy(features).float(), k).tolist() == brute_herding(features, k)
        assert kcenter_select(torch.from_numpy(features).float(), k).tolist() == brute_kcenter(features, k)


def test_selection_rules_on_points_with_known_answers():
    line = torch.arange(11.0).view(-1, 1)  # 0..10 on a line, mean 5
    assert kcenter_select(line, 4).tolist() == [5, 0, 10, 2]  # ties go to the lower index
    assert herding_select(line, 1).tolist() == [5]
    assert sorted(herding_select(line, 11).tolist()) == list(range(11))
    # Herding balances around the mean: after 5 the next two pair up symmetrically.
    assert sorted(herding_select(line, 3).tolist()[1:]) in ([4, 6], [3, 7], [2, 8], [1, 9], [0, 10])


def test_herding_runs_on_l2_normalised_features_as_icarl_does(blobs, monkeypatch):
    """iCaRL's herding (the continual-learning baseline) selects on the unit sphere; frepo's ran on raw
    features, where a few long feature vectors pull the class mean."""
    import frepo.jobs.subset as subset

    seen = []
    original = subset.SELECTORS["herding"]
    monkeypatch.setitem(subset.SELECTORS, "herding", lambda features, k: seen.append(features) or original(features, k))
    ds = make_subset(DataConfig(dataset=str(blobs), val_size=0), 2, "herding", feature_steps=2, feature_width=8)
    assert seen and all(torch.allclose(f.norm(dim=1), torch.ones(len(f), dtype=f.dtype)) for f in seen)
    assert ds.meta["config"]["features"] == "l2-normalised"


@pytest.mark.parametrize("method", ["herding", "kcenter"])
def test_make_subset_with_network_features(blobs, method):
    data = DataConfig(dataset=str(blobs), val_size=9)
    ds = make_subset(data, 3, method, seed=1, feature_steps=3, feature_width=8, device="cpu")
    again = make_subset(data, 3, method, seed=1, feature_steps=3, feature_width=8, device="cpu")
    assert torch.equal(ds.images, again.images)  # seeded
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.meta["kind"] == f"subset-{method}" and ds.meta["config"]["feature_steps"] == 3
    # Every chosen image is a distinct image of the distillation part (never the validation hold-out).
    train_x, _ = prepare(data).train()
    rows = [int(torch.nonzero((train_x == image).flatten(1).all(1))[0]) for image in ds.images]
    assert len(set(rows)) == 9
    random_init = make_subset(data, 3, method, seed=1, feature_steps=0, feature_width=8, device="cpu")
    assert random_init.images.shape == ds.images.shape


def test_bad_subset_options(blobs):
    data = DataConfig(dataset=str(blobs))
    with pytest.raises(FrepoError, match="unknown subset method"):
        make_subset(data, 1, "forgetting")
    with pytest.raises(FrepoError, match="feature_steps"):
        make_subset(data, 1, "herding", feature_steps=-1)
    with pytest.raises(FrepoError, match="fewer than ipc=40"):
        make_subset(data, 40, "kcenter", feature_steps=0, feature_width=4)


@pytest.mark.parametrize("method", ["random", "herding", "kcenter"])
def test_a_streamed_split_selects_the_same_images_without_materialising_it(blobs, method, monkeypatch):
    """`--stream on` (auto for an ImageNet-sized split): the split stays uint8 and is preprocessed a batch at a
    time, the features one class at a time; the choice is the in-memory one (standardisation is elementwise,
    so the batches hold the very same values)."""
    from frepo.data import PreparedData

    kwargs = dict(seed=1, device="cpu")
    if method != "random":  # the feature network's settings; random has none, and refuses them
        kwargs.update(feature_steps=3, feature_width=8)
    in_memory = make_subset(DataConfig(dataset=str(blobs), val_size=9, stream="off"), 3, method, **kwargs)

    def refuse(self, channels_last=False):
        raise AssertionError("the whole split was preprocessed into memory")

    monkeypatch.setattr(PreparedData, "train", refuse)
    streamed = make_subset(DataConfig(dataset=str(blobs), val_size=9, stream="on"), 3, method, **kwargs)
    assert torch.equal(streamed.images, in_memory.images) and torch.equal(streamed.labels, in_memory.labels)


def test_large_holdout_and_test_splits_are_streamed_and_score_the_same(blobs, monkeypatch):
    """Past STREAM_AUTO_BYTES the hold-out and the test split are read a batch at a time (`split_view`), and
    evaluating on them gives the in-memory accuracies."""
    import frepo
    import frepo.data as data_module
    import frepo.jobs.evaluate as evaluate_module
    from frepo.data import StreamingImages

    data = DataConfig(dataset=str(blobs), val_size=9)
    ds = make_subset(data, 2, "random", seed=0)
    # 150 steps: at 20 every network predicted one class, and equal accuracies said little
    before = [frepo.evaluate(ds, split=split, models=2, steps=150, width=8).accuracies for split in ("test", "val")]
    # 3 classes: learnt (62..67 here), above one class's share (33.3; the next a 9-image split can give is 44.4)
    assert min(min(accuracies) for accuracies in before) > 100 / 3 + 1
    val_x, _ = prepare(data).val()
    assert isinstance(val_x, torch.Tensor)
    monkeypatch.setattr(data_module, "STREAM_AUTO_BYTES", 0)
    monkeypatch.setattr(evaluate_module, "STREAM_AUTO_BYTES", 0)
    prepared = prepare(data)
    (val_x, val_y), (test_x, _) = prepared.val(), prepared.test()
    assert isinstance(val_x, StreamingImages) and isinstance(test_x, StreamingImages)
    assert torch.equal(val_x[2:7], prepared.preprocessing(prepared.raw.x_train[prepared.val_idx[2:7]]))
    assert len(val_x) == len(val_y) == 9 and tuple(test_x.shape[1:]) == (1, 8, 8)
    seen = []
    view = evaluate_module.split_view
    monkeypatch.setattr(evaluate_module, "split_view", lambda *args: seen.append(view(*args)) or seen[-1])
    after = [frepo.evaluate(ds, split=split, models=2, steps=150, width=8).accuracies for split in ("test", "val")]
    assert len(seen) == 2 and all(isinstance(x, StreamingImages) for x in seen)  # evaluate streamed both
    assert after == before


def test_a_relative_data_dir_is_recorded_whole(tmp_path, monkeypatch):
    """A subset made with --data-dir given relative recorded it as given: read from another folder, its dataset
    was looked for in the wrong place."""
    from conftest import make_blobs_npz

    data = make_blobs_npz(tmp_path / "blobs.npz", channels=1)
    (tmp_path / "cache").mkdir()
    monkeypatch.chdir(tmp_path)
    ds = make_subset(DataConfig(dataset=str(data), data_dir="cache"), 1)
    assert ds.meta["config"]["data"]["data_dir"] == str((tmp_path / "cache").resolve())
