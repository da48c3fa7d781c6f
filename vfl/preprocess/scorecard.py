"""Scorecard points per bin: each party's table for its own columns.

The model's log-odds of a bad outcome is ``z = b + sum_p sum_j w_j (WOE_j(x) - m_j) / s_j``
(guest intercept ``b``, each party's standardised WOE columns). With the
usual scaling (``[scorecard]``: ``base_score`` points at good:bad odds
``base_odds``, ``pdo`` points to double them), ``factor = pdo / ln 2`` and

    points(x) = base_score - factor ln(base_odds) - factor z
              = offset_points + sum over every column of points[column, bin of x]
    points[j, b]  = -factor w_j (WOE_j,b - m_j) / s_j
    offset_points = base_score - factor (ln(base_odds) + b)

So a row's points are the offset plus one table entry per column, summed over
all parties' tables: the same ranking as the model (points are affine in the
log-odds). Each party computes only its own entries from its own weights;
the offset holds the guest's intercept and stays with the guest.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from ..job.config import ScorecardConfig
from ..io.files import write_json, write_rows_atomically
from .split import Standardizer
from .transform import WoeEncoder

log = logging.getLogger("vfl.scorecard")


def describe(sc: ScorecardConfig) -> str:
    return f"base_points {sc.base_points:g}, base_odds {sc.base_odds:g}, pdo {sc.pdo:g}"


def model_scaling(saved: ScorecardConfig | None, configured: ScorecardConfig, party: str) -> ScorecardConfig:
    """The points scaling to score with: the one the model was trained with (``saved`` in the guest's
    part), since the points tables (every party's ``scorecard.csv``) and ``metrics.json`` were computed
    with it; the job file's ``[scorecard]`` (``configured``) only for parts saved before they kept it.
    A job file whose scaling changed since training is warned about, not followed."""
    if saved is None:
        return configured
    if (saved.base_points, saved.base_odds, saved.pdo) != \
            (configured.base_points, configured.base_odds, configured.pdo):
        log.warning("%s: the job file's [scorecard] (%s) differs from the scaling the model was trained with "
                    "(%s): points use the model's, so they still add up with the points tables; retrain the job "
                    "to change the scaling", party, describe(configured), describe(saved))
    return saved


def factor(sc: ScorecardConfig) -> float:
    return sc.pdo / math.log(2.0)


def offset_points(sc: ScorecardConfig, intercept: float) -> float:
    return sc.base_points - factor(sc) * (math.log(sc.base_odds) + intercept)


def points_table(sc: ScorecardConfig, encoder: WoeEncoder, coef: np.ndarray, std: Standardizer,
                 events: list[np.ndarray] | None = None) -> list[dict]:
    """One row per (column, bin): the bin, its training rows, events (label holder only), WOE and points."""
    f = factor(sc)
    out = []
    for k, (cb, woe) in enumerate(zip(encoder.bins, encoder.woe)):
        pts = -f * coef[k] * (woe - std.mean[k]) / std.scale[k]
        for b, label in enumerate(cb.labels()):
            out.append({"column": cb.column, "bin": label, "rows": int(cb.rows[b]),
                        "events": int(events[k][b]) if events is not None else None,
                        "woe": float(woe[b]), "points": float(pts[b])})
    return out


def row_points(sc: ScorecardConfig, encoder: WoeEncoder, coef: np.ndarray, std: Standardizer, table) -> np.ndarray:
    """A party's share of each row's points: the sum of its own table entries."""
    f = factor(sc)
    x = std.transform(encoder.transform(table))
    return -f * (x @ coef)


def scorecard_figures(sc: ScorecardConfig, key: str, table: list[dict], offset: float | None) -> dict:
    """The ``scorecard`` figures of ``metrics.json`` / a party's ``scorecard.json``."""
    return {"pdo": sc.pdo, "base_score": sc.base_points, "base_odds": sc.base_odds, "offset_points": offset,
            key: table}


def write_scorecard(folder: Path, figures: dict, key: str) -> None:
    """``scorecard.json`` and ``scorecard.csv`` (column, bin, rows, events, woe, points) for the
    party's own decision engine."""
    write_json(folder / "scorecard.json", figures)
    write_rows_atomically(folder / "scorecard.csv", ["column", "bin", "rows", "events", "woe", "points"],
                          ([r["column"], r["bin"], r["rows"], "" if r["events"] is None else r["events"],
                            repr(r["woe"]), repr(r["points"])] for r in figures[key]))
