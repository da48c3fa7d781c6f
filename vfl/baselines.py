"""Reference models for demos and benchmarks: what pooling or going alone gives.

This reads every party's file in one place, which real parties never do; it
runs only when the job sets ``[job] baselines = true``.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from .config import JobConfig
from .data import load_table
from .metrics import binary_metrics
from .split import Standardizer


def _fit_score(X: np.ndarray, y: np.ndarray, test: np.ndarray) -> dict:
    std = Standardizer.fit(X[~test])
    Xs = std.transform(X)
    clf = LogisticRegression(max_iter=1000).fit(Xs[~test], y[~test])
    return binary_metrics(y[test], clf.predict_proba(Xs[test])[:, 1])


def baseline_aucs(job: JobConfig, common: np.ndarray, test: np.ndarray) -> dict:
    g = load_table(job.guest.data, job.guest.id_column, job.guest.label_column).take(common)
    parts = [g.features] + [load_table(h.data, h.id_column).take(common).features for h in job.hosts]
    central = _fit_score(np.hstack(parts), g.labels, test)
    guest_only = _fit_score(g.features, g.labels, test)
    return {"baseline_central_auc": central["auc"], "baseline_central_ks": central["ks"],
            "baseline_guest_only_auc": guest_only["auc"], "baseline_guest_only_ks": guest_only["ks"]}
