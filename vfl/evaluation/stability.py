"""Population stability index (PSI): has a population moved since training?

    PSI = sum over bins of (a_i - e_i) * ln(a_i / e_i)

with ``e_i`` the share of the reference (training) rows in bin ``i`` and
``a_i`` the share of the compared rows (test rows, or a cohort scored later).
Bins are the reference's deciles (equal-frequency on the training rows; tied
quantiles merge), with missing values in a bin of their own. A share of zero
is floored at ``FLOOR`` so that an empty bin gives a large, finite PSI.

The usual reading: below 0.1 stable, 0.1 to 0.25 watch, 0.25 and above act.
A party computes the column PSI of its own columns only; no protocol is needed.
"""
from __future__ import annotations

import math

import numpy as np

WATCH, ACT = 0.1, 0.25
FLOOR = 1e-4
BINS = 10


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
    return {"psi": None if value is None else round(value, 6), "flag": psi_flag(value), "edges": edges,
            "expected": list(expected), "actual": actual_shares}


def score_psi(train_scores: np.ndarray, other_scores: np.ndarray) -> dict:
    """Score PSI: the other rows' scores binned on the training scores' deciles."""
    return compare(train_scores, other_scores)


def column_psi(columns: list[str], train: np.ndarray, other: np.ndarray) -> dict[str, dict]:
    """PSI of each of a party's own numeric columns (rows of ``train`` against rows of ``other``)."""
    return {c: compare(train[:, j], other[:, j]) for j, c in enumerate(columns)}


def against_saved(saved: dict, actual: np.ndarray) -> dict:
    """PSI of new rows against a saved comparison (its training edges and expected shares)."""
    return compare(np.empty(0), actual, edges=list(saved["edges"]), expected=list(saved["expected"]))
