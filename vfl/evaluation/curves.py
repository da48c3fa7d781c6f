"""The figures a credit validator reads, machine-readable: curves, decile and calibration tables.

All of them are computed by the guest from its labels and the joint scores
(probability of default; higher = riskier). Curves are sampled at every 1 % of
the population ranked riskiest first, at score thresholds (so tied scores are
never split), plus the threshold where KS is reached: ROC, KS, lift, cumulative
gain and precision-recall share one table of points. AUC, KS and average
precision are computed on all rows. KS is
``max |TPR - FPR|`` (:func:`~vfl.evaluation.metrics.ks_statistic`). Decile and calibration
bands are cut between distinct scores too, so tied scores share a band and bands may differ
in size.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .metrics import ks_statistic, tie_bands

DEPTHS = 100        # curve points: one per 1 % of the population
BANDS = 10          # decile table and calibration bands
HIST_BINS = 20      # score distribution by class


def _r(x, nd: int = 6):
    return None if x is None else round(float(x), nd)


def sample_summary(y: np.ndarray) -> dict:
    y = np.asarray(y, dtype=float)
    bads = int(y.sum())
    return {"rows": int(len(y)), "bads": bads, "goods": int(len(y) - bads),
            "bad_rate": _r(bads / len(y)) if len(y) else None}


def curve_points(y: np.ndarray, score: np.ndarray, depths: int = DEPTHS) -> dict:
    """Points of the ranked population, riskiest first: for each threshold, the depth (share of
    rows flagged), TPR (= recall = cumulative gain), FPR, precision, lift and |TPR - FPR| (the KS curve)."""
    y = np.asarray(y, dtype=float)
    fpr, tpr, thr = roc_curve(y, score, drop_intermediate=False)
    n, pos = len(y), y.sum()
    neg = n - pos
    tp, fp = tpr * pos, fpr * neg
    depth = (tp + fp) / n
    # keep, for each 1 % step of depth, the first threshold reaching it (plus the end points and the
    # threshold of the KS statistic, so that the curve's largest gap is the KS reported beside it)
    targets = np.arange(1, depths + 1) / depths
    ks_at = int(np.argmax(np.abs(tpr - fpr)))
    keep = np.unique(np.concatenate([[0], np.searchsorted(depth, targets - 1e-12, side="left"), [ks_at],
                                     [len(depth) - 1]]))
    keep = keep[keep < len(depth)]
    flagged = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(flagged > 0, tp / np.maximum(flagged, 1), np.nan)
    base = pos / n
    rows = {
        "threshold": [None if not np.isfinite(thr[i]) else _r(thr[i]) for i in keep],
        "depth": [_r(depth[i]) for i in keep],
        "tpr": [_r(tpr[i]) for i in keep],
        "fpr": [_r(fpr[i]) for i in keep],
        "precision": [None if np.isnan(precision[i]) else _r(precision[i]) for i in keep],
        "lift": [None if np.isnan(precision[i]) else _r(precision[i] / base) for i in keep],
        "ks": [_r(abs(tpr[i] - fpr[i])) for i in keep],
    }
    return rows


def decile_table(y: np.ndarray, score: np.ndarray, points: np.ndarray | None = None, bands: int = BANDS
                 ) -> list[dict]:
    """Score bands of about equal frequency, riskiest (highest probability) first.

    Per band: rows, bads, bad rate, score and points range, cumulative capture of
    bads (= cumulative gain), lift (band bad rate over the overall bad rate),
    cumulative lift and KS (``|cum. bad share - cum. good share|``). Bands are cut
    between distinct scores (:func:`~vfl.evaluation.metrics.tie_bands`): tied scores
    share a band, so bands may differ in size (``rows``) and be fewer than ``bands``.
    """
    y = np.asarray(y, dtype=float)
    score = np.asarray(score, dtype=float)
    chunks = tie_bands(-score, bands)
    total_bad = y.sum()
    total_good = len(y) - total_bad
    base = total_bad / len(y) if len(y) else 0.0
    cum_rows = cum_bad = cum_good = 0.0
    table = []
    for k, c in enumerate(chunks, 1):
        bad = float(y[c].sum())
        cum_rows += len(c)
        cum_bad += bad
        cum_good += len(c) - bad
        row = {"band": k, "rows": int(len(c)), "bads": int(bad), "bad_rate": _r(bad / len(c)),
               "min_score": _r(score[c].min()), "max_score": _r(score[c].max()),
               "cum_capture": _r(cum_bad / total_bad) if total_bad else None,
               "lift": _r(bad / len(c) / base, 4) if base else None,
               "cum_lift": _r(cum_bad / cum_rows / base, 4) if base else None,
               "ks": _r(abs(cum_bad / total_bad - cum_good / total_good)) if total_bad and total_good else None}
        if points is not None:
            row["min_points"] = _r(np.asarray(points)[c].min(), 1)
            row["max_points"] = _r(np.asarray(points)[c].max(), 1)
        table.append(row)
    return table


def calibration_table(y: np.ndarray, score: np.ndarray, bands: int = BANDS) -> list[dict]:
    """Mean predicted probability against the observed bad rate per band of about equal
    frequency (lowest risk first, the order of a calibration plot). Bands are cut between
    distinct scores, as in :func:`decile_table`: tied scores share a band."""
    y = np.asarray(y, dtype=float)
    score = np.asarray(score, dtype=float)
    chunks = tie_bands(score, bands)
    return [{"band": k, "rows": int(len(c)), "mean_predicted": _r(score[c].mean()),
             "observed_bad_rate": _r(y[c].mean()), "difference": _r(y[c].mean() - score[c].mean())}
            for k, c in enumerate(chunks, 1)]


def score_histogram(y: np.ndarray, score: np.ndarray, edges: np.ndarray) -> dict:
    """Counts of goods and bads per score bin (``edges`` shared by every sample)."""
    y = np.asarray(y).astype(bool)
    score = np.clip(np.asarray(score, dtype=float), edges[0], edges[-1])
    return {"edges": [_r(e) for e in edges],
            "goods": np.histogram(score[~y], bins=edges)[0].astype(int).tolist(),
            "bads": np.histogram(score[y], bins=edges)[0].astype(int).tolist()}


def histogram_edges(*scores: np.ndarray, bins: int = HIST_BINS) -> np.ndarray:
    """Equal-width bins from 0 to a round upper bound covering every sample's scores."""
    top = max((float(np.max(s)) for s in scores if len(s)), default=1.0)
    top = min(1.0, np.ceil(top * 20) / 20) or 1.0
    return np.linspace(0.0, top, bins + 1)


def evaluate_sample(y: np.ndarray, score: np.ndarray, points: np.ndarray | None = None,
                    hist_edges: np.ndarray | None = None) -> dict:
    """Every figure of one sample (train, test or a scored cohort)."""
    y = np.asarray(y).astype(int)
    score = np.asarray(score, dtype=float)
    out = {"sample": sample_summary(y)}
    edges = hist_edges if hist_edges is not None else histogram_edges(score)
    out["score_histogram"] = score_histogram(y, score, edges)
    out["score_mean"] = _r(score.mean()) if len(score) else None
    if len(np.unique(y)) < 2:
        out.update(auc=None, gini=None, ks=None, average_precision=None, curve=None, deciles=None,
                   brier=_r(np.mean((score - y) ** 2)) if len(y) else None,     # defined with one class too
                   calibration=calibration_table(y, score) if len(y) else [])
        return out
    auc = float(roc_auc_score(y, score))
    out.update(
        auc=_r(auc), gini=_r(2 * auc - 1), ks=_r(ks_statistic(y, score)),
        average_precision=_r(average_precision_score(y, score)),
        brier=_r(np.mean((score - y) ** 2)),
        curve=curve_points(y, score), deciles=decile_table(y, score, points),
        calibration=calibration_table(y, score))
    return out
