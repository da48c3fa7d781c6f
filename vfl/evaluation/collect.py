"""What the guest adds to ``metrics.json`` after training and to ``predict_metrics.json``
after scoring a later cohort: the validation figures and the stability of scores and
of the guest's own columns. Host columns never enter: the guest has only its own."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import stability
from .curves import evaluate_sample, histogram_edges

SAMPLES = ("train", "test")


def run_figures(columns: list[str], features: np.ndarray, labels: np.ndarray, test: np.ndarray,
                score: np.ndarray, points: np.ndarray) -> dict:
    """``evaluation`` (train and test side by side) and ``stability`` for ``metrics.json``."""
    train = ~test
    edges = histogram_edges(score)
    evaluation = {name: evaluate_sample(labels[rows], score[rows], points[rows], edges)
                  for name, rows in (("train", train), ("test", test))}
    stab = {"thresholds": {"watch": stability.WATCH, "act": stability.ACT},
            "method": f"train deciles, missing values in their own bin, shares floored at {stability.FLOOR}",
            "score": stability.score_psi(score[train], score[test]),
            "columns": stability.column_psi(list(columns), features[train], features[test])}
    return {"evaluation": evaluation, "stability": stab}


def cohort_figures(metrics_path: Path, columns: list[str], features: np.ndarray, score: np.ndarray,
                   points: np.ndarray, labels: np.ndarray | None) -> dict:
    """A later cohort against the training rows: score PSI, the guest's column PSI and,
    if the cohort has outcomes, every figure of :func:`evaluate_sample`."""
    out: dict = {}
    saved = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    stab = saved.get("stability")
    if stab:
        out["stability"] = {
            "score": stability.against_saved(stab["score"], score),
            "columns": {c: stability.against_saved(stab["columns"][c], features[:, j])
                        for j, c in enumerate(columns) if c in stab["columns"]}}
    if labels is not None:
        train_hist = saved.get("evaluation", {}).get("train", {}).get("score_histogram")
        edges = np.asarray(train_hist["edges"]) if train_hist else None
        if edges is not None and len(score) and score.max() > edges[-1]:
            edges = None
        out["evaluation"] = evaluate_sample(labels, score, points, edges)
    return out
