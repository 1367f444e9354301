"""Membership-inference attacks on a trained network's outputs, and how to score them.

Inputs, per example: the network's outputs (logits, N×K), its per-example loss and its label; members
(training images of the victim) and non-members (images it never saw) in equal numbers. The attacks of
the reference (TensorFlow Privacy's, as the official `script/mia.py` runs them):
  threshold            the per-example loss itself as the score (lower loss: member); no training
  logistic_regression, mlp, random_forest, knn
                       scikit-learn classifiers on [logits, loss, one-hot label], trained on one half of a
                       stratified split of members and non-members and scored on the other half
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
LOW_FPRS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


def roc_metrics(is_member: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """AUC and TPR at 1% / 0.1% FPR of `score` (higher: more likely a member) against the truth.

    TPR at FPR x is the largest true-positive rate of any threshold whose false-positive rate is at most x
    (sklearn's ROC points; 0 when no threshold gets there)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    is_member = np.asarray(is_member).astype(bool)
    fpr, tpr, _ = roc_curve(is_member, score)
    out = {"auc": float(roc_auc_score(is_member, score))}
    for name, x in LOW_FPRS.items():
        ok = fpr <= x + 1e-12
        out[name] = float(tpr[ok].max()) if ok.any() else 0.0
    return out


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


def run_attacks(
    member: tuple[np.ndarray, np.ndarray, np.ndarray],
    nonmember: tuple[np.ndarray, np.ndarray, np.ndarray],
    num_classes: int,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Every attack of ATTACKS on (logits, loss, labels) of members and of non-members (equal counts).

    The trained attacks learn on a stratified half and are scored on the other half; the threshold
    attack needs no training and is scored on all examples."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    x = np.concatenate([features(*member, num_classes), features(*nonmember, num_classes)])
    truth = np.concatenate([np.ones(len(member[1])), np.zeros(len(nonmember[1]))])
    loss = np.concatenate([member[1], nonmember[1]])
    results = {"threshold": roc_metrics(truth, -loss)}
    x_fit, x_score, y_fit, y_score = train_test_split(x, truth, test_size=0.5, stratify=truth, random_state=seed)
    for name in ATTACKS[1:]:
        with warnings.catch_warnings():  # an MLP attack stopped at its iteration cap is still an attack
            warnings.simplefilter("ignore", ConvergenceWarning)
            attack = _classifier(name, seed).fit(x_fit, y_fit)
        results[name] = roc_metrics(y_score, attack.predict_proba(x_score)[:, 1])
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
    without the targets (S×N): the one-sided likelihood that the victim's confidence is higher than an
    OUT model's, Φ((φ - μ_out) / σ_out), with σ_out the shadows' global spread."""
    from scipy.stats import norm

    shadows = np.asarray(shadows, np.float64)
    if shadows.ndim != 2 or len(shadows) < 2:
        raise ValueError("offline LiRA needs at least two shadow networks (their spread is the OUT variance)")
    mu = shadows.mean(axis=0)
    sigma = max(float(shadows.std(axis=0).mean()), 1e-6)
    return norm.cdf((np.asarray(victim, np.float64) - mu) / sigma)
