"""Population stability index (PSI): has a population moved since training?

    PSI = sum over bins of (a_i - e_i) * ln(a_i / e_i)

with ``e_i`` the share of the reference (training) rows in bin ``i`` and
``a_i`` the share of the compared rows (test rows, or a cohort scored later).
Bins are the reference's deciles (equal-frequency on the training rows; tied
quantiles merge), with missing values in a bin of their own. A share of zero
is floored at ``FLOOR`` so that an empty bin gives a large, finite PSI.

Categorical columns are binned by value: each value carried by at least
``RARE_SHARE`` (1 %) of the reference rows has a bin of its own; rarer values,
and values the reference never had, are pooled in one bin ``(other)``; a
missing value (empty text) is a category of its own, ``(missing)``.

The usual reading: below 0.1 stable, 0.1 to 0.25 watch, 0.25 and above act.
A party computes the column PSI of its own columns only; no protocol is needed.
"""
from __future__ import annotations

import math

import numpy as np

WATCH, ACT = 0.1, 0.25
FLOOR = 1e-4
BINS = 10
RARE_SHARE = 0.01
OTHER, MISSING = "(other)", "(missing)"


def psi_flag(value: float | None) -> str | None:
    """``"stable"`` below 0.1, ``"watch"`` from 0.1, ``"act"`` from 0.25."""
    if value is None or not math.isfinite(value):
        return None
    return "act" if value >= ACT else "watch" if value >= WATCH else "stable"


def reference_edges(reference: np.ndarray, bins: int = BINS) -> list[float]:
    """Inner cut points: the reference's quantiles at 1/bins, ..., (bins-1)/bins, duplicates merged."""
    x = np.asarray(reference, dtype=float)
    x = x[~np.isnan(x)]
    if not len(x):
        return []
    return [float(v) for v in np.unique(np.quantile(x, np.arange(1, bins) / bins))]


def bin_shares(values: np.ndarray, edges: list[float]) -> list[float]:
    """Shares of ``values`` per bin: ``len(edges) + 1`` value bins (bin i holds edges[i-1] < x <= edges[i]),
    then one bin for missing values."""
    x = np.asarray(values, dtype=float)
    if not len(x):
        return [0.0] * (len(edges) + 2)
    missing = np.isnan(x)
    idx = np.searchsorted(np.asarray(edges, dtype=float), x[~missing], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    return [float(c) for c in counts / len(x)] + [float(missing.sum() / len(x))]


def psi(expected: list[float], actual: list[float], floor: float = FLOOR) -> float:
    """PSI of two share vectors over the same bins (shares of zero floored at ``floor``)."""
    e = np.maximum(np.asarray(expected, dtype=float), floor)
    a = np.maximum(np.asarray(actual, dtype=float), floor)
    both_empty = (np.asarray(expected) == 0) & (np.asarray(actual) == 0)
    return float(np.sum(np.where(both_empty, 0.0, (a - e) * np.log(a / e))))


def compare(reference: np.ndarray, actual: np.ndarray, edges: list[float] | None = None,
            expected: list[float] | None = None) -> dict:
    """PSI of ``actual`` against ``reference`` (or against saved ``edges``/``expected`` shares)."""
    if edges is None:
        edges = reference_edges(reference)
        expected = bin_shares(reference, edges)
    actual_shares = bin_shares(actual, edges)
    value = psi(expected, actual_shares) if len(np.asarray(actual)) else None
    return {"kind": "numeric", "psi": None if value is None else round(value, 6), "flag": psi_flag(value),
            "edges": edges, "expected": list(expected), "actual": actual_shares}


def score_psi(train_scores: np.ndarray, other_scores: np.ndarray) -> dict:
    """Score PSI: the other rows' scores binned on the training scores' deciles."""
    return compare(train_scores, other_scores)


def column_psi(columns: list[str], train: np.ndarray, other: np.ndarray) -> dict[str, dict]:
    """PSI of each of a party's own numeric columns (rows of ``train`` against rows of ``other``)."""
    return {c: compare(train[:, j], other[:, j]) for j, c in enumerate(columns)}


def _is_missing(values: np.ndarray) -> np.ndarray:
    return np.fromiter((v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "" for v in values),
                       dtype=bool, count=len(values))


def reference_categories(reference: np.ndarray, rare_share: float = RARE_SHARE) -> list[str]:
    """The values with a bin of their own: carried by at least ``rare_share`` of the reference rows
    (missing values excluded), most frequent first, ties by value."""
    x = np.asarray(reference, dtype=object)
    if not len(x):
        return []
    known = np.array([str(v) for v in x[~_is_missing(x)]], dtype=object)
    values, counts = np.unique(known.astype(str), return_counts=True) if len(known) else ([], [])
    kept = [(int(c), str(v)) for v, c in zip(values, counts) if c >= rare_share * len(x)]
    return [v for _, v in sorted(kept, key=lambda t: (-t[0], t[1]))]


def category_shares(values: np.ndarray, categories: list[str]) -> list[float]:
    """Shares of ``values`` per category, then ``(other)`` (rare and unseen values), then ``(missing)``."""
    x = np.asarray(values, dtype=object)
    if not len(x):
        return [0.0] * (len(categories) + 2)
    missing = _is_missing(x)
    pos = {c: i for i, c in enumerate(categories)}
    idx = np.fromiter((pos.get(str(v), len(categories)) for v in x[~missing]), dtype=np.int64,
                      count=int((~missing).sum()))
    counts = np.bincount(idx, minlength=len(categories) + 1).astype(float)
    return [float(c) for c in counts / len(x)] + [float(missing.sum() / len(x))]


def compare_categorical(reference: np.ndarray, actual: np.ndarray, categories: list[str] | None = None,
                        expected: list[float] | None = None) -> dict:
    """PSI of a categorical column by value (rare values pooled, missing its own category)."""
    if categories is None:
        categories = reference_categories(reference)
        expected = category_shares(reference, categories)
    actual_shares = category_shares(actual, categories)
    value = psi(expected, actual_shares) if len(np.asarray(actual, dtype=object)) else None
    return {"kind": "categorical", "psi": None if value is None else round(value, 6), "flag": psi_flag(value),
            "categories": list(categories), "expected": list(expected), "actual": actual_shares}


def categorical_psi(columns: list[str], train: np.ndarray, other: np.ndarray) -> dict[str, dict]:
    """PSI of each of a party's own categorical columns (text values; rows of ``train`` against ``other``)."""
    return {c: compare_categorical(train[:, j], other[:, j]) for j, c in enumerate(columns)}


def bin_labels(saved: dict) -> list[str]:
    """Readable names of a saved comparison's bins, in the order of its shares."""
    if saved.get("kind") == "categorical":
        return list(saved["categories"]) + [OTHER, MISSING]
    e = saved["edges"]
    bounds = ["−∞"] + [f"{v:.4g}" for v in e] + ["∞"]
    return [f"({lo}, {hi}]" for lo, hi in zip(bounds, bounds[1:])] + [MISSING]


def against_saved(saved: dict, actual: np.ndarray) -> dict:
    """PSI of new rows against a saved comparison (its training bins and expected shares)."""
    if saved.get("kind") == "categorical":
        return compare_categorical(np.empty(0, dtype=object), actual, categories=list(saved["categories"]),
                                   expected=list(saved["expected"]))
    return compare(np.empty(0), actual, edges=list(saved["edges"]), expected=list(saved["expected"]))
