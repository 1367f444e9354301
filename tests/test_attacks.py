"""Membership-inference attacks: near-perfect on a deliberately overfit network, at chance when members and
non-members come from the same distribution, and the low-FPR metrics against a hand-computed ROC."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from frepo.apps.attacks import (
    ATTACKS,
    LOW_FPRS,
    auc_difference,
    auc_standard_error,
    confidence,
    lira_offline,
    resampled_mean_aucs,
    roc_metrics,
    run_attacks,
    weighted_auc,
)
from frepo.apps.privacy import outputs, train_victim
from frepo.base.atomic import atomic_write_json


def test_tpr_at_low_fpr_against_a_hand_computed_roc():
    # 1000 non-members scored 0..999, 10 members: 5 above every non-member, 5 in the middle.
    scores = np.concatenate([np.arange(1000.0), [2000, 2001, 2002, 2003, 2004, 500.5, 600.5, 700.5, 800.5, 900.5]])
    truth = np.concatenate([np.zeros(1000), np.ones(10)])
    m = roc_metrics(truth, scores)
    # By hand: at FPR 0 five members are above every non-member (TPR 0.5); the next member (900.5) needs
    # the 99 non-members above 900 (FPR 0.099 > 1%), so TPR stays 0.5 at 1% and at 0.1%.
    assert m["tpr_at_0.1pct_fpr"] == pytest.approx(0.5) and m["tpr_at_1pct_fpr"] == pytest.approx(0.5)
    # AUC by hand: each top member beats 1000 non-members, member at k + 0.5 beats k + 1 of them.
    expected = (5 * 1000 + sum(k + 1 for k in (500, 600, 700, 800, 900))) / (10 * 1000)
    assert m["auc"] == pytest.approx(expected)
    ten = roc_metrics(truth, np.concatenate([np.arange(1000.0), [995.5] * 10]))  # above 4 non-members: FPR 0.4%
    assert ten["tpr_at_1pct_fpr"] == 1.0 and ten["tpr_at_0.1pct_fpr"] == 0.0
    # Ties of one member and one non-member at each of 1000 scores: the ROC is the diagonal, every point a real
    # threshold; sklearn's default dropped the collinear ones, and TPR at 1% FPR read 0 in place of 0.9% (the
    # point below 1%: 9 non-members of 1000 pass, with 9 members).
    diagonal = np.repeat(-np.arange(1000.0), 2)
    tied = roc_metrics(np.tile([1, 0], 1000), diagonal)
    assert tied["tpr_at_1pct_fpr"] == pytest.approx(0.009) and tied["tpr_at_0.1pct_fpr"] == 0.0


def test_the_auc_standard_error_is_the_bootstrap_s():
    """The AUC's sampling error (Hanley-McNeil) against a bootstrap over the examples scored (independent: it
    resamples members and non-members and measures the spread of the AUC itself)."""
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.6, 1.0, 150), rng.normal(0.0, 1.0, 600)
    truth = np.concatenate([np.ones(150), np.zeros(600)])
    m = roc_metrics(truth, np.concatenate([members, nonmembers]))

    def auc(a: np.ndarray, b: np.ndarray) -> float:  # Mann-Whitney: the share of pairs a member wins
        return float((a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean())

    boot = [auc(rng.choice(members, 150), rng.choice(nonmembers, 600)) for _ in range(400)]
    assert m["auc"] == pytest.approx(auc(members, nonmembers), abs=1e-12)
    assert m["auc_se"] == pytest.approx(np.std(boot), rel=0.2)  # 400 resamples: their std within ~7%
    # Members and non-members are not interchangeable in it: by hand, 0.030573 (0.027037 the other way round).
    assert auc_standard_error(0.6, 100, 2000) == pytest.approx(0.0305727, rel=1e-5)
    assert np.isnan(auc_standard_error(0.6, 0, 2000))


def test_the_weighted_auc_is_sklearn_s_auc_of_the_repeated_examples():
    """Unit weights: roc_auc_score (ties counted half); multinomial weights: the AUC of the resample itself,
    each example repeated as often as drawn."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    members, nonmembers = rng.integers(0, 12, 40).astype(float), rng.integers(0, 10, 60).astype(float)  # ties
    truth = np.r_[np.ones(40), np.zeros(60)]
    plain = weighted_auc(members, nonmembers, np.ones((1, 40)), np.ones((1, 60)))
    assert plain[0] == pytest.approx(roc_auc_score(truth, np.r_[members, nonmembers]), abs=1e-12)
    w, v = rng.multinomial(40, np.full(40, 1 / 40), size=3), rng.multinomial(60, np.full(60, 1 / 60), size=3)
    for b, auc in enumerate(weighted_auc(members, nonmembers, w.astype(float), v.astype(float))):
        repeated = np.r_[np.repeat(members, w[b]), np.repeat(nonmembers, v[b])]
        expected = roc_auc_score(np.r_[np.ones(40), np.zeros(60)], repeated)
        assert auc == pytest.approx(expected, abs=1e-12)


def paired_auc_difference(arm, other, truth, resamples, seed) -> dict:
    means = resampled_mean_aucs({"arm": arm, "other": other}, truth, resamples, seed)
    return auc_difference(means["arm"], means["other"])


def test_the_paired_auc_difference_and_its_interval():
    rng = np.random.default_rng(1)
    n = 400
    truth = np.r_[np.ones(n), np.zeros(n)].astype(bool)
    base = rng.normal(size=(3, 2 * n)) + 0.3 * truth  # 3 victims, AUC ≈ 0.58
    # One victim scoring the same examples the same way: no difference in any resample. Three: each arm's
    # victims are drawn apart, so the interval is their spread.
    same = paired_auc_difference(base[:1], base[:1], truth, resamples=300, seed=0)
    assert same == {"delta_auc": 0.0, "ci95": [0.0, 0.0], "share_at_or_below_zero": 1.0}
    spread = paired_auc_difference(base, base, truth, resamples=300, seed=0)
    assert spread["delta_auc"] == 0.0 and spread["ci95"][0] < 0 < spread["ci95"][1]
    # Paired: one victim's scores of the same examples with 40 members raised. The difference is the same
    # examples' in every resample, so its interval is far narrower than either AUC's sampling error (0.02 here).
    raised = base[:1].copy()
    raised[:, :40] += 1.0
    paired = paired_auc_difference(raised, base[:1], truth, resamples=300, seed=0)
    from sklearn.metrics import roc_auc_score

    expected = roc_auc_score(truth, raised[0]) - roc_auc_score(truth, base[0])
    assert paired["delta_auc"] == pytest.approx(expected, abs=1e-12)
    low, high = paired["ci95"]
    assert 0 < low < paired["delta_auc"] < high and high - low < 0.02 and paired["share_at_or_below_zero"] == 0.0
    # Independent arms: the resampled difference spreads as two independent AUCs' errors do (Hanley-McNeil),
    # give or take the bootstrap's own noise over 300 resamples and the victims' few draws.
    other = rng.normal(size=(3, 2 * n)) + 0.3 * truth
    independent = paired_auc_difference(base[:1], other[:1], truth, resamples=2000, seed=0)
    se = np.hypot(*(auc_standard_error(roc_auc_score(truth, x[0]), n, n) for x in (base, other)))
    width = independent["ci95"][1] - independent["ci95"][0]
    assert 0.8 < width / (2 * 1.96 * se) < 1.2


def test_an_undefined_number_is_written_as_json_null(tmp_path):
    """JSON has no NaN: a strict reader refuses the bare `NaN` that json.dumps writes by default."""
    path = tmp_path / "r.json"
    atomic_write_json(path, {"auc": 0.5, "auc_se": auc_standard_error(0.6, 0, 2000), "rows": [float("inf"), 1.0]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auc": 0.5, "auc_se": None, "rows": [None, 1.0]}
    from frepo.apps.common import ExperimentDir

    folder = ExperimentDir(tmp_path / "exp", "toy")
    folder.path.mkdir()
    ran_now = folder.record("unit.json", {"auc_se": float("nan"), "pair": (1, 2)})
    assert ran_now == folder.done("unit.json") == {"auc_se": None, "pair": [1, 2]}  # as a resume reads it


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randn(n, 1, 8, 8, generator=g) + labels.view(-1, 1, 1, 1) * 0.3
    return images, labels


def _attack(victim, members, nonmembers, attack_set="frepo"):
    m = outputs(victim, *members, 3, torch.device("cpu"))
    nm = outputs(victim, *nonmembers, 3, torch.device("cpu"))
    parts = ("logits", "loss", "labels")
    results = run_attacks(tuple(m[p] for p in parts), tuple(nm[p] for p in parts), 3, seed=0, attack_set=attack_set)
    return results, m, nm


@pytest.fixture(scope="module")
def overfit():
    """(a victim that memorised its 200 members, members, non-members of the same distribution)."""
    from frepo.method.krr import centered_one_hot

    members, nonmembers = _blobs(200, 0), _blobs(200, 1)  # the same distribution
    targets = centered_one_hot(members[1], 3)
    # How far a victim memorises depends on summation order: at 400 steps and lr 3e-3 its member loss ranged
    # 0.0004-0.011 and the threshold attack's AUC 0.83-0.99 over 1 or 2 threads, ATen's default or AVX-512
    # kernels and MKL_CBWR=COMPATIBLE. At 800 steps and lr 1e-3 it memorises in all four: member loss
    # 0.0001-0.001 against 0.155-0.158, every AUC >= 0.92, and TF-Privacy's MLP, which sees unscaled
    # features, 0.855-0.876. The floors leave room for that spread.
    victim = train_victim(
        members[0], targets, steps=800, batch_size=200, lr=1e-3, width=16, num_classes=3, ops=(),
        gen=torch.Generator().manual_seed(0), device=torch.device("cpu"),
    )  # fmt: skip
    return victim, members, nonmembers


@pytest.mark.parametrize("attack_set", ["frepo", "reference"])
def test_every_attack_finds_the_members_of_an_overfit_network(attack_set, overfit):
    victim, members, nonmembers = overfit
    results, m, nm = _attack(victim, members, nonmembers, attack_set)
    assert set(results) == set(ATTACKS)
    assert m["loss"].mean() < 0.05 * nm["loss"].mean()  # memorised
    for name, metrics in results.items():
        floor = 0.75 if (attack_set, name) == ("reference", "mlp") else 0.85
        assert metrics["auc"] > floor, (name, metrics)


@pytest.mark.parametrize("attack_set", ["frepo", "reference"])
def test_no_attack_finds_members_in_two_sets_the_network_never_saw(attack_set, overfit, monkeypatch):
    """Chance. The reference set scores each example by the fold it was not fitted on, its own path: it runs
    here with frepo's fixed classifiers in place of its grid searches (half a minute, checked above)."""
    import frepo.apps.attacks as attacks

    monkeypatch.setattr(attacks, "_reference_search", lambda name, seed, jobs: attacks._classifier(name, seed))
    victim, _, nonmembers = overfit
    fresh, _, _ = _attack(victim, _blobs(200, 2), nonmembers, attack_set)
    for name, metrics in fresh.items():
        assert abs(metrics["auc"] - 0.5) < 0.12, (name, metrics)


def test_offline_lira_scores_and_its_statistic():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = np.log(p[[0, 1], [0, 1]] / (1 - p[[0, 1], [0, 1]]))
    np.testing.assert_allclose(confidence(logits, np.array([0, 1])), expected)
    shadows = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # OUT: mean 0.5, sample std sqrt(1/2)
    scores = lira_offline(np.array([0.5, 1.5, -0.5]), shadows)
    np.testing.assert_allclose(scores, [0.0, np.sqrt(2), -np.sqrt(2)], rtol=1e-12)
    # Far above every OUT model, members stay ranked (Φ of these z is 1.0 for both in float64: a tie).
    far = lira_offline(np.array([10.0, 20.0, 0.5]), shadows)
    assert far[1] > far[0] > far[2]
    with pytest.raises(ValueError, match="two shadow"):
        lira_offline(np.zeros(3), shadows[:1])


def test_the_reference_attacks_are_tf_privacy_s_grid_searches():
    """`reference`: TF-Privacy's model families and grids (models.py), each searched with 3-fold CV."""
    from frepo.apps.attacks import _reference_search

    grids = {name: _reference_search(name, 0) for name in ATTACKS[1:]}
    assert all(search.cv == 3 for search in grids.values())
    np.testing.assert_allclose(grids["logistic_regression"].param_grid["C"], np.logspace(-4, 2, 10))
    assert grids["mlp"].param_grid == {
        "hidden_layer_sizes": [(64,), (32, 32)], "solver": ["adam"], "alpha": [0.0001, 0.001, 0.01]
    }  # fmt: skip
    assert grids["random_forest"].param_grid == {
        "n_estimators": [100], "max_features": ["sqrt"], "max_depth": [5, 10, 20, None],
        "min_samples_split": [2, 5, 10], "min_samples_leaf": [1, 2, 4],
    }  # fmt: skip
    assert grids["knn"].param_grid == {"n_neighbors": [3, 5, 7]}
    empty = (np.zeros((2, 3)), np.zeros(2), np.zeros(2, int))
    with pytest.raises(ValueError, match="unknown attack set"):
        run_attacks(empty, empty, 3, 0, "tf")


def test_low_fpr_rates_are_at_chance_where_members_and_non_members_are_alike():
    """With 1 000 non-members, counting thresholds at FPR <= 0.1% let one non-member pass: a rate of 0.002 with
    no membership signal at all, read as leakage. Below x (LiRA's reading), the rate averages x."""
    rng = np.random.default_rng(0)
    rates = {name: [] for name in LOW_FPRS}
    for _ in range(400):
        scores = rng.standard_normal(2000)  # members and non-members from one distribution
        truth = np.arange(2000) < 1000
        for name, value in roc_metrics(truth, scores).items():
            if name in rates:
                rates[name].append(value)
    # 400 draws: standard errors ~9e-5 (0.1%) and ~2e-4 (1%); the old rule's means were 0.002 and 0.011
    assert 0.0007 < np.mean(rates["tpr_at_0.1pct_fpr"]) < 0.0013
    assert 0.0093 < np.mean(rates["tpr_at_1pct_fpr"]) < 0.0107
