"""Membership-inference attacks on a trained network's outputs, and how to score them.

Inputs, per example: the network's outputs (logits, N×K), its per-example loss and its label; members
(training images of the victim) and non-members (images it never saw) in equal numbers. Two attack sets
of the same five attacks:
  threshold            the per-example loss itself as the score (lower loss: member); no training
  logistic_regression, mlp, random_forest, knn
                       scikit-learn classifiers of membership
- `reference`: TensorFlow Privacy's trained attacks, as the official `script/mia.py` runs them: features
  [logits, loss]; each model family tuned by a 3-fold grid search over TF-Privacy's grids (`models.py`:
  C in logspace(-4, 2, 10); hidden layers (64,) or (32, 32) × alpha 1e-4/1e-3/1e-2; forests of 100
  trees over depth, split and leaf sizes; 3, 5 or 7 neighbours); every example scored once by the model
  trained on the other fold of a 2-fold split (TF-Privacy's `cross_validation_folds=2`). Departures:
  seeded models and folds (TF-Privacy leaves them unseeded), and the forests' `max_features` grid is
  ['sqrt'] alone (its 'auto' meant 'sqrt' for classifiers and is gone from scikit-learn).
- `frepo`: faster and richer: features [logits, loss, one-hot label], standardised, fixed
  hyperparameters, trained on one half of a stratified split and scored on the other.
and, beyond the paper, `lira`: the offline likelihood-ratio attack (Carlini et al. 2022) with shadow
networks trained without the targets: per example, the victim's logit-scaled confidence in the true
class against a Gaussian fitted to the shadows' confidences (a global variance, as LiRA does with few
shadows). Every attack is scored by ROC AUC and by the true-positive rate at 1% and 0.1% false-positive
rate (the low-FPR view the paper lacks, which later critiques of "privacy for free" ask for).
"""

from __future__ import annotations

import warnings

import numpy as np

ATTACKS = ("threshold", "logistic_regression", "mlp", "random_forest", "knn")
ATTACK_SETS = ("reference", "frepo")
LOW_FPRS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


def roc_metrics(is_member: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """AUC (with its standard error, `auc_standard_error`) and TPR at 1% / 0.1% FPR of `score` (higher: more
    likely a member) against the truth.

    TPR at FPR x is the largest true-positive rate of any threshold whose false-positive rate is below x, as
    LiRA's code reads it (sklearn's ROC points, every one of them: its default drops the points on a straight
    stretch of the curve, which ties of members and non-members make, and a real operating point with them; 0
    when no threshold gets there). Below, not at most: with n non-members, "at most x" lets x·n of them pass,
    so where members and non-members are alike the rate averages (x·n + 1)/(n + 1), twice x at 0.1% of 1 000
    non-members; "below" averages x·n/(n + 1) (x where x·n is whole; else the resolution, 1/(n + 1))."""
    from sklearn.metrics import roc_auc_score, roc_curve

    is_member = np.asarray(is_member).astype(bool)
    fpr, tpr, _ = roc_curve(is_member, score, drop_intermediate=False)
    auc = float(roc_auc_score(is_member, score))
    out = {"auc": auc, "auc_se": auc_standard_error(auc, int(is_member.sum()), int((~is_member).sum()))}
    for name, x in LOW_FPRS.items():
        ok = fpr < x - 1e-12
        out[name] = float(tpr[ok].max()) if ok.any() else 0.0
    return out


def auc_standard_error(auc: float, members: int, nonmembers: int) -> float:
    """Hanley and McNeil's (1982) standard error of an AUC measured on `members` positives and `nonmembers`
    negatives: the sampling error of the examples scored, which the spread over victims trained on the same
    examples leaves out (about 0.03 for 100 members against 2 000 non-members at AUC 0.6)."""
    if members < 1 or nonmembers < 1:
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = auc * (1 - auc) + (members - 1) * (q1 - auc**2) + (nonmembers - 1) * (q2 - auc**2)
    return float(np.sqrt(max(variance, 0.0) / (members * nonmembers)))


def weighted_auc(members: np.ndarray, nonmembers: np.ndarray, w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The ROC AUC of scores (higher: member) with each example counted as often as its weight: members (n1,)
    weighted by each row of w (B×n1), non-members (n0,) by each row of v (B×n0); shape (B,). Unit weights
    give `roc_auc_score`'s AUC, the Mann-Whitney statistic with ties counted half; a bootstrap resample is the
    weights of its multinomial counts. O(B·(n0 + n1)): no n1×n0 comparison matrix (10 000² at the paper's
    size)."""
    order = np.argsort(nonmembers, kind="stable")
    ranked = nonmembers[order]
    # below[b, k]: the weight of the k lowest non-members in resample b
    below = np.concatenate([np.zeros((len(v), 1)), np.cumsum(v[:, order], axis=1)], axis=1)
    lower = np.searchsorted(ranked, members, side="left")  # non-members below each member
    upper = np.searchsorted(ranked, members, side="right")  # and those tied with it
    wins = below[:, lower] + 0.5 * (below[:, upper] - below[:, lower])  # B×n1
    return (wins * w).sum(axis=1) / (w.sum(axis=1) * v.sum(axis=1))


def resampled_mean_aucs(
    scores: dict[str, np.ndarray], is_member: np.ndarray, resamples: int, seed: int
) -> dict[str, tuple[float, np.ndarray]]:
    """Each arm's mean AUC over its victims, and the same in each of `resamples` resamples of a two-level
    bootstrap, for `auc_difference` to compare any two arms.

    `scores`: arm → its victims' scores (V×N; higher: member) of the same N examples, `is_member` (N,) their
    truth. Each resample draws the members and the non-members with replacement, the same draw for every arm
    (they score the same examples, so a comparison is paired: the examples' sampling error that `auc_se` gives
    each AUC largely cancels in a difference, which independent errors would not), and each arm's victims with
    replacement, on their own (their training randomness; one victim: none; with few, a percentile interval
    over them runs narrow, by about √((V-1)/V) of their spread). Returns arm → (mean AUC, (B,) resampled)."""
    rng = np.random.default_rng(seed)
    is_member = np.asarray(is_member, bool)
    n1, n0 = int(is_member.sum()), int((~is_member).sum())
    arms = sorted(scores)  # the draws' order, whatever the dict's

    def aucs(arm: str, w: np.ndarray, v: np.ndarray) -> np.ndarray:  # V×B
        victims = np.asarray(scores[arm], np.float64)
        return np.stack([weighted_auc(x[is_member], x[~is_member], w, v) for x in victims])

    plain = {arm: float(aucs(arm, np.ones((1, n1)), np.ones((1, n0))).mean()) for arm in arms}
    resampled: dict[str, list[np.ndarray]] = {arm: [] for arm in arms}
    for start in range(0, resamples, 250):  # B×N weights at a time: 250 × 20 000 float64 at the paper's size
        b = min(250, resamples - start)
        w = rng.multinomial(n1, np.full(n1, 1 / n1), size=b).astype(np.float64)
        v = rng.multinomial(n0, np.full(n0, 1 / n0), size=b).astype(np.float64)
        for arm in arms:
            per_victim = aucs(arm, w, v)
            drawn = rng.integers(0, len(per_victim), size=per_victim.shape)  # each resample's victims
            resampled[arm].append(np.take_along_axis(per_victim, drawn, axis=0).mean(0))
    return {arm: (plain[arm], np.concatenate(resampled[arm])) for arm in arms}


def auc_difference(arm: tuple[float, np.ndarray], other: tuple[float, np.ndarray]) -> dict[str, float | list[float]]:
    """One arm's mean AUC minus another's (`resampled_mean_aucs`' entries): `delta_auc`, `ci95` (the 2.5th and
    97.5th percentiles of the resampled differences) and `share_at_or_below_zero` (of the resamples)."""
    differences = arm[1] - other[1]
    low, high = np.percentile(differences, [2.5, 97.5])
    below = float((differences <= 0).mean())
    return {"delta_auc": arm[0] - other[0], "ci95": [float(low), float(high)], "share_at_or_below_zero": below}


def features(logits: np.ndarray, loss: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[logits, loss, one-hot label] per example: what the trained attacks see."""
    onehot = np.eye(num_classes, dtype=np.float64)[np.asarray(labels)]
    return np.concatenate([np.asarray(logits, np.float64), np.asarray(loss, np.float64)[:, None], onehot], axis=1)


def _classifier(name: str, seed: int):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = {
        "logistic_regression": LogisticRegression(max_iter=1000),
        "mlp": MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=seed),
        "random_forest": RandomForestClassifier(n_estimators=100, min_samples_leaf=5, random_state=seed, n_jobs=1),
        "knn": KNeighborsClassifier(n_neighbors=5),
    }[name]
    return make_pipeline(StandardScaler(), model)


def _reference_search(name: str, seed: int, jobs: int = -1):
    """TF-Privacy's model family `name` inside its 3-fold grid search (tensorflow_privacy ... models.py)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    model, grid = {
        "logistic_regression": (LogisticRegression(solver="lbfgs"), {"C": np.logspace(-4, 2, 10)}),
        "mlp": (
            MLPClassifier(random_state=seed),
            {"hidden_layer_sizes": [(64,), (32, 32)], "solver": ["adam"], "alpha": [0.0001, 0.001, 0.01]},
        ),
        "random_forest": (
            RandomForestClassifier(random_state=seed, n_jobs=1),
            {
                "n_estimators": [100],
                "max_features": ["sqrt"],
                "max_depth": [5, 10, 20, None],
                "min_samples_split": [2, 5, 10],
                "min_samples_leaf": [1, 2, 4],
            },
        ),
        "knn": (KNeighborsClassifier(), {"n_neighbors": [3, 5, 7]}),
    }[name]
    # Its fits run in `jobs` processes (joblib; -1: one per CPU): the random forest's 108 fits of 100 trees took
    # 19 s of one core per fold at 200 examples. Each fit is seeded (the same scores in 1 and 2 processes here;
    # a worker's BLAS runs one thread, so a BLAS whose sums depend on its thread count could differ in ulps).
    return GridSearchCV(model, param_grid=grid, cv=3, n_jobs=jobs)


def run_attacks(
    member: tuple[np.ndarray, np.ndarray, np.ndarray],
    nonmember: tuple[np.ndarray, np.ndarray, np.ndarray],
    num_classes: int,
    seed: int = 0,
    attack_set: str = "frepo",
    jobs: int = -1,
) -> dict[str, dict[str, float]]:
    """Every attack of ATTACKS on (logits, loss, labels) of members and of non-members (equal counts), as
    `attack_set` (module docstring) trains and scores them. The threshold attack needs no training and is
    scored on all examples in both sets. `jobs`: processes of the reference set's grid searches (-1: one per CPU;
    each fit is seeded)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, train_test_split

    if attack_set not in ATTACK_SETS:
        raise ValueError(f"unknown attack set {attack_set!r}; use one of {ATTACK_SETS}")
    truth = np.concatenate([np.ones(len(member[1])), np.zeros(len(nonmember[1]))])
    loss = np.concatenate([member[1], nonmember[1]])
    results = {"threshold": roc_metrics(truth, -loss)}
    if attack_set == "reference":  # [logits, loss]; every example scored by the fold it was not fitted on
        logits = np.concatenate([member[0], nonmember[0]]).astype(np.float64)
        x = np.concatenate([logits, loss.astype(np.float64)[:, None]], axis=1)
        folds = list(StratifiedKFold(n_splits=2, shuffle=True, random_state=seed).split(x, truth))
    else:
        x = np.concatenate([features(*member, num_classes), features(*nonmember, num_classes)])
        fit, score = train_test_split(np.arange(len(x)), test_size=0.5, stratify=truth, random_state=seed)
        folds = [(fit, score)]
    for name in ATTACKS[1:]:
        scores: np.ndarray = np.zeros(len(x))
        scored: np.ndarray = np.zeros(len(x), dtype=bool)  # scored in some fold
        for fit, score in folds:
            with warnings.catch_warnings():  # an attack stopped at its iteration cap is still an attack
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = _reference_search(name, seed, jobs) if attack_set == "reference" else _classifier(name, seed)
                attack = model.fit(x[fit], truth[fit])
            scores[score], scored[score] = attack.predict_proba(x[score])[:, 1], True
        results[name] = roc_metrics(truth[scored], scores[scored])
    return results


def confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's statistic: log(p / (1 - p)) of the softmax probability p of the true class, computed
    stably as the true logit minus the log-sum-exp of the others."""
    logits = np.asarray(logits, np.float64)
    true = logits[np.arange(len(logits)), labels]
    others = logits.copy()
    others[np.arange(len(logits)), labels] = -np.inf
    top = others.max(axis=1, keepdims=True)
    return true - (top[:, 0] + np.log(np.exp(others - top).sum(axis=1)))


def lira_offline(victim: np.ndarray, shadows: np.ndarray) -> np.ndarray:
    """Offline LiRA scores (higher: member) of the victim's confidences (N,) against shadows trained
    without the targets (S×N): z = (φ - μ_out) / σ_out, with σ_out the shadows' global spread (the sample
    std, ddof 1; one global number, so it scales the scores and changes no AUC or TPR). The one-sided
    likelihood Φ(z) ranks as z does, but is 1.0 in float64 from z ≈ 8.3 on: every confident member tied
    exactly where TPR at a low FPR is read."""
    shadows = np.asarray(shadows, np.float64)
    if shadows.ndim != 2 or len(shadows) < 2:
        raise ValueError("offline LiRA needs at least two shadow networks (their spread is the OUT variance)")
    mu = shadows.mean(axis=0)
    sigma = max(float(shadows.std(axis=0, ddof=1).mean()), 1e-6)
    return (np.asarray(victim, np.float64) - mu) / sigma
