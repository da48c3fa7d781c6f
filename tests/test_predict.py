"""Scoring new rows with a trained split model: PSI on the new IDs, then a secure sum."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_job
from vfl.job.config import load_job
from vfl.models.model_file import ModelFileError, ModelPart
from vfl.job.threads import JobFailed, run_local, run_predict_local
from vfl.io.synth import vertical_split


def _trained_job(tmp_path, extra_guest="", extra_host=""):
    guest, hosts = vertical_split(1200, 3, [2, 2], overlap=0.9, seed=6)
    old, new = guest.iloc[:700], guest.iloc[700:]
    old.to_csv(tmp_path / "g.csv", index=False)
    new.to_csv(tmp_path / "g_new.csv", index=False)
    paths = []
    for i, h in enumerate(hosts):
        h.to_csv(tmp_path / f"h{i}.csv", index=False)        # a host scores from its full table
        paths.append(tmp_path / f"h{i}.csv")
    path = write_job(tmp_path, tmp_path / "g.csv", paths, model={"epochs": 3, "batch_size": 256},
                     guest_keys={"predict_data": tmp_path / "g_new.csv"})
    job = load_job(path)
    run_local(job)
    return job, new, hosts


def test_scores_of_new_rows_equal_the_plaintext_model(tmp_path):
    job, new, hosts = _trained_job(tmp_path)
    report = run_predict_local(job)["guest"]
    scores = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})
    ids = sorted(set(new["id"]) & set(hosts[0]["id"]) & set(hosts[1]["id"]))
    assert scores["id"].tolist() == ids and report["scored_rows"] == len(ids)
    # Plaintext: apply every saved part to the joined new rows.
    parts = {n: ModelPart.load(job.output_dir(n) / "model.json", n) for n in ("guest", "host0", "host1")}
    g = new.set_index("id").loc[ids]
    z = parts["guest"].partial_score(g.drop(columns="y").to_numpy(float), [c for c in new.columns if c not in ("id", "y")])
    for i, name in enumerate(("host0", "host1")):
        h = hosts[i].set_index("id").loc[ids]
        z = z + parts[name].partial_score(h.to_numpy(float), list(h.columns))
    np.testing.assert_allclose(scores["score"], 1 / (1 + np.exp(-z)), atol=1e-7)
    assert scores["label"].tolist() == g["y"].tolist()
    saved = json.loads((job.workdir / "predict_metrics.json").read_text())
    assert saved["metrics"]["auc"] > 0.6 and len(saved["gains"]) == 10


def test_new_rows_whose_outcome_column_is_still_empty_are_scored_without_labels(tmp_path):
    """Applicants scored before their outcome is known carry the label column empty: that means no
    labels (scores, no metrics), not missing labels, and the same scores as without the column; the
    columns may come in any order (matched by name)."""
    job, new, _ = _trained_job(tmp_path)
    run_predict_local(job)
    labelled = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})
    new.assign(y="").to_csv(job.guest.predict_data, index=False)
    report = run_predict_local(job)["guest"]
    scores = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})
    assert "label" not in scores.columns and "metrics" not in report
    np.testing.assert_array_equal(scores["id"], labelled["id"])
    np.testing.assert_allclose(scores["score"], labelled["score"], atol=1e-12)
    new.assign(y="")[list(new.columns[::-1])].to_csv(job.guest.predict_data, index=False)   # columns in any order
    run_predict_local(job)
    reordered = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})
    np.testing.assert_allclose(reordered["score"], labelled["score"], atol=1e-12)
    new.assign(y=[""] * (len(new) - 1) + [1]).to_csv(job.guest.predict_data, index=False)
    with pytest.raises(JobFailed, match="label column 'y' has missing values"):     # some labels: all needed
        run_predict_local(job)


def test_scoring_without_a_trained_model_or_with_other_columns_fails_clearly(tmp_path):
    job, new, _ = _trained_job(tmp_path)
    new.rename(columns={"g0": "other"}).to_csv(job.guest.predict_data, index=False)
    with pytest.raises(JobFailed, match="guest.*data columns"):
        run_predict_local(job)
    (job.output_dir("host1") / "model.json").unlink()
    with pytest.raises(ModelFileError, match="train the job first"):
        ModelPart.load(job.output_dir("host1") / "model.json", "host1")
    with pytest.raises(JobFailed, match="host1.*train the job first"):
        run_predict_local(job)
