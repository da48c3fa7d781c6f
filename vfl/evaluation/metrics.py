"""Metrics credit-risk users expect: AUC, KS, accuracy (scikit-learn underneath)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve


def ks_statistic(y: np.ndarray, score: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score distributions of positives and
    negatives, ``max |TPR - FPR|`` over thresholds (two-sided, as ``scipy.stats.ks_2samp``: a
    model ranking the wrong way round has a large KS and an AUC below 0.5). The one definition
    of KS here: :func:`gains_table` and the evaluation figures use it too."""
    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    return float(np.max(np.abs(tpr - fpr)))


def tie_bands(key: np.ndarray, bands: int) -> list[np.ndarray]:
    """Row indices in about ``bands`` equal-frequency bands, ``key`` ascending, cut only between
    distinct values: tied rows always share a band, whatever their order in the file.

    Each band ends at the first change of value at or after the cut ``np.array_split`` would
    make, so without ties the bands are exactly ``np.array_split``'s; with ties they may differ
    in size and be fewer (all rows equal: one band)."""
    key = np.asarray(key, dtype=float)
    n = len(key)
    if n == 0:
        return []
    order = np.argsort(key, kind="stable")
    ranked = key[order]
    ends = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]) + 1, n)     # where each run of ties ends
    b = min(int(bands), n)
    targets = np.cumsum([n // b + 1] * (n % b) + [n // b] * (b - n % b))   # np.array_split's band ends
    cuts = np.unique(ends[np.searchsorted(ends, targets, side="left")])
    return np.split(order, cuts[:-1])


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
    """Score bands of about equal frequency, riskiest (fewest points) first: rows, bad rate,
    cumulative shares, KS (``|cum_bad_share - cum_good_share|``, as :func:`ks_statistic`).

    The table credit teams read to pick cut-offs. Bands are cut between distinct points
    (:func:`tie_bands`): tied rows share a band, so bands may differ in size (see ``rows``)
    and be fewer than ``bands``. Every band ends at a threshold, so its ``ks`` is a true
    point of the KS curve and the largest is the KS statistic up to banding.
    """
    y = np.asarray(y, dtype=float)
    points = np.asarray(points, dtype=float)
    chunks = tie_bands(points, bands)
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
