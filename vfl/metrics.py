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
