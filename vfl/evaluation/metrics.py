"""Metrics credit-risk users expect: AUC, KS, accuracy (scikit-learn underneath)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve


def ks_statistic(y: np.ndarray, score: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score distributions of
    positives and negatives (max TPR - FPR over thresholds)."""
    fpr, tpr, _ = roc_curve(y, score)
    return float(np.max(tpr - fpr))


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict:
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return {"rows": int(len(y)), "auc": None, "ks": None,
                "accuracy": float(accuracy_score(y, score >= threshold)) if len(y) else None}
    return {
        "rows": int(len(y)),
        "auc": float(roc_auc_score(y, score)),
        "ks": ks_statistic(y, score),
        "accuracy": float(accuracy_score(y, score >= threshold)),
    }


def scorecard_points(prob_bad: np.ndarray, base_points: float = 600.0, base_odds: float = 50.0,
                     pdo: float = 20.0) -> np.ndarray:
    """Credit-score points: ``base_points`` at good:bad odds ``base_odds``, and every
    ``pdo`` more points double the odds (the usual scorecard scaling)."""
    p = np.clip(np.asarray(prob_bad, dtype=float), 1e-12, 1 - 1e-12)
    factor = pdo / np.log(2.0)
    return base_points + factor * (np.log((1 - p) / p) - np.log(base_odds))


def gains_table(y: np.ndarray, points: np.ndarray, bands: int = 10) -> list[dict]:
    """Equal-frequency score bands, riskiest first: rows, bad rate, cumulative shares, KS.

    The table credit teams read to pick cut-offs; its largest ``ks`` is the KS statistic
    up to banding.
    """
    y = np.asarray(y, dtype=float)
    order = np.argsort(points, kind="stable")
    chunks = [c for c in np.array_split(order, min(bands, len(order))) if len(c)]
    total_bad, total_good = y.sum(), len(y) - y.sum()
    cum_bad = cum_good = 0.0
    table = []
    for c in chunks:
        bad = float(y[c].sum())
        cum_bad += bad
        cum_good += len(c) - bad
        table.append({
            "min_points": round(float(points[c].min()), 1), "max_points": round(float(points[c].max()), 1),
            "rows": int(len(c)), "bad_rate": round(bad / len(c), 4),
            "cum_bad_share": round(cum_bad / total_bad, 4) if total_bad else None,
            "cum_good_share": round(cum_good / total_good, 4) if total_good else None,
            "ks": round(abs(cum_bad / total_bad - cum_good / total_good), 4) if total_bad and total_good else None,
        })
    return table
