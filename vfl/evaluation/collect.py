"""What a party adds to its saved results after training and after scoring a later cohort.

The guest adds to ``metrics.json`` the validation figures and the stability of
the scores and of its own columns; a host adds to its ``report.json`` the
stability of its own columns (train against test: every party derives the same
split alone from the common IDs and the job seed). Nobody needs a message for
this, and nobody sees another party's columns.

Every cohort scored later by ``vfl predict`` is kept in a directory of its own,
``<workdir>/cohorts/<cohort>/`` for the guest and ``<workdir>/<host>/cohorts/<cohort>/``
for a host, named by the UTC time of scoring and the file scored, so a second
scoring never erases the first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.files import write_csv_atomically, write_json
from . import stability
from .curves import evaluate_sample, histogram_edges

SAMPLES = ("train", "test")
COHORTS = "cohorts"
UNSEEN_WARN = 0.5        # a cohort's share of rows with a category training lacked, above which a warning
log = logging.getLogger("vfl.predict")


def _method() -> str:
    return (f"numeric: training deciles, missing values in their own bin; categorical: by value, values under "
            f"{stability.RARE_SHARE:.0%} of training rows pooled as {stability.OTHER}, missing as "
            f"{stability.MISSING}; shares floored at {stability.FLOOR}")


def own_column_psi(columns: list[str], features: np.ndarray, categorical_columns: list[str] | None,
                   categorical: np.ndarray | None, reference: np.ndarray, other: np.ndarray) -> dict[str, dict]:
    """PSI of each of a party's own columns (numeric, then categorical): rows ``other`` against ``reference``."""
    out = stability.column_psi(list(columns), features[reference], features[other])
    if categorical_columns:
        out.update(stability.categorical_psi(list(categorical_columns), categorical[reference], categorical[other]))
    return out


def columns_against_saved(saved: dict[str, dict], columns: list[str], features: np.ndarray,
                          categorical_columns: list[str] | None, categorical: np.ndarray | None) -> dict[str, dict]:
    """PSI of a later cohort's own columns against the training bins saved at training time."""
    out = {c: stability.against_saved(saved[c], features[:, j]) for j, c in enumerate(columns) if c in saved}
    for j, c in enumerate(categorical_columns or []):
        if c in saved:
            out[c] = stability.against_saved(saved[c], categorical[:, j])
    return out


def _warn_unseen(party: str, comparisons: dict[str, dict]) -> None:
    """Warn when most rows of a scored cohort have, in a categorical column, a value the training rows
    lacked (or had under 1 % of them): the model scores them all as one unknown value, usually because
    the values are written otherwise than at training ("1" against "1.0", another code list)."""
    for column, c in comparisons.items():
        if c.get("kind") != "categorical" or not c["actual"]:
            continue
        share, trained = c["actual"][-2], c["expected"][-2]          # the "(other)" bin
        if share > UNSEEN_WARN and share > trained:
            log.warning("%s: categorical column %r: %.0f%% of the rows scored have values that no training row, or "
                        "under 1%% of them, had (%.0f%% of the training rows), which the model scores as unknown or "
                        "rare: are they written as at training (e.g. '1' against '1.0')?", party, column,
                        100 * share, 100 * trained)


def run_figures(columns: list[str], features: np.ndarray, labels: np.ndarray, test: np.ndarray,
                score: np.ndarray, points: np.ndarray, categorical_columns: list[str] | None = None,
                categorical: np.ndarray | None = None, train: np.ndarray | None = None) -> dict:
    """``evaluation`` (train and test side by side) and ``stability`` for the guest's ``metrics.json``.

    ``train``: the rows trained on (default: every non-test row); the validation slice is neither,
    so that "train" here is the same sample as ``metrics["train"]``."""
    train = ~test if train is None else train
    edges = histogram_edges(score)
    evaluation = {name: evaluate_sample(labels[rows], score[rows], points[rows], edges)
                  for name, rows in (("train", train), ("test", test))}
    stab = {"thresholds": {"watch": stability.WATCH, "act": stability.ACT}, "method": _method(),
            "score": stability.score_psi(score[train], score[test]),
            "columns": own_column_psi(columns, features, categorical_columns, categorical, train, test)}
    return {"evaluation": evaluation, "stability": stab}


def host_figures(columns: list[str], features: np.ndarray, categorical_columns: list[str] | None,
                 categorical: np.ndarray | None, test: np.ndarray, train: np.ndarray) -> dict:
    """``stability`` of a host's own columns, train against test, for its ``report.json``.

    ``train``: the rows trained on (``~test & ~valid``), the guest's reference too (:func:`run_figures`)
    and the host page's training row count."""
    return {"stability": {"thresholds": {"watch": stability.WATCH, "act": stability.ACT}, "method": _method(),
                          "columns": own_column_psi(columns, features, categorical_columns, categorical,
                                                    train, test)}}


def cohort_figures(metrics_path: Path, columns: list[str], features: np.ndarray, score: np.ndarray,
                   points: np.ndarray, labels: np.ndarray | None, categorical_columns: list[str] | None = None,
                   categorical: np.ndarray | None = None) -> dict:
    """A later cohort against the training rows: score PSI, the guest's column PSI and,
    if the cohort has outcomes, every figure of :func:`evaluate_sample`."""
    out: dict = {}
    saved = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    stab = saved.get("stability")
    if stab:
        out["stability"] = {
            "score": stability.against_saved(stab["score"], score),
            "columns": columns_against_saved(stab["columns"], columns, features, categorical_columns, categorical)}
        _warn_unseen("guest", out["stability"]["columns"])
    if labels is not None:
        train_hist = saved.get("evaluation", {}).get("train", {}).get("score_histogram")
        edges = np.asarray(train_hist["edges"]) if train_hist else None
        if edges is not None and len(score) and score.max() > edges[-1]:
            edges = None
        out["evaluation"] = evaluate_sample(labels, score, points, edges)
    return out


def host_cohort_figures(report_path: Path, columns: list[str], features: np.ndarray,
                        categorical_columns: list[str] | None, categorical: np.ndarray | None) -> dict:
    """A host's later cohort: the PSI of its own columns against its saved training bins."""
    saved = json.loads(report_path.read_text()) if report_path.is_file() else {}
    stab = saved.get("stability")
    if not stab:
        return {}
    found = columns_against_saved(stab["columns"], columns, features, categorical_columns, categorical)
    _warn_unseen(report_path.parent.name, found)             # <workdir>/<host>/report.json
    return {"stability": {"columns": found}}


# ---------------------------------------------------------------- keeping every cohort

def file_sha256(path: Path) -> str | None:
    """SHA-256 of a file (the model part a cohort was scored with), or None if it is absent."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else None


def new_cohort_dir(parent: Path, scored_file: Path, now: datetime | None = None) -> Path:
    """A fresh directory ``<parent>/cohorts/<UTC time>-<file stem>[-n]``, created here so that two
    scorings, even in the same second, never share one."""
    now = now or datetime.now(timezone.utc)
    stem = re.sub(r"[^\w.-]+", "_", Path(scored_file).stem)[:60].strip("._") or "cohort"   # \w: any script
    base = parent / COHORTS / f"{now:%Y%m%dT%H%M%SZ}-{stem}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{base}: too many cohorts scored at the same second")


def cohort_stamp(cohort_dir: Path, scored_file: Path, model_path: Path, now: datetime | None = None) -> dict:
    """What identifies a cohort in its saved figures: its name, when and from what it was scored,
    and the SHA-256 of the model part that scored it (a report shows only the current model's cohorts)."""
    now = now or datetime.now(timezone.utc)
    return {"cohort": cohort_dir.name, "scored_at": now.isoformat(timespec="microseconds"),
            "scored_file": str(scored_file), "model_sha256": file_sha256(model_path)}


def save_guest_cohort(workdir: Path, report: dict, scores: pd.DataFrame) -> Path:
    """Keep a guest cohort: ``cohorts/<cohort>/metrics.json`` and ``scores.csv``; also the latest
    figures as ``<workdir>/predict_metrics.json`` (what ``vfl predict`` always wrote)."""
    cdir = workdir / COHORTS / report["cohort"]
    cdir.mkdir(parents=True, exist_ok=True)
    write_csv_atomically(scores, cdir / "scores.csv", index=False)
    write_json(cdir / "metrics.json", report)
    write_json(workdir / "predict_metrics.json", report)
    return cdir


def load_cohorts(parent: Path, name: str) -> list[dict]:
    """Every kept cohort under ``<parent>/cohorts/`` (its ``name`` file), oldest first."""
    root = parent / COHORTS
    found = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        f = d / name
        if f.is_file():
            c = json.loads(f.read_text())
            c.setdefault("cohort", d.name)
            found.append(c)
    return sorted(found, key=lambda c: (c.get("scored_at", ""), c["cohort"]))
