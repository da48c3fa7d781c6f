"""Scoring new rows with a trained split model: PSI on the new IDs, then a secure sum."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_job
from vfl.job.config import load_job
from vfl.evaluation.metrics import scorecard_points
from vfl.models.model_file import ModelFileError, ModelPart, load_part
from vfl.job.threads import JobFailed, run_local, run_predict_local
from vfl.io.synth import vertical_split


def _job_kwargs(tmp_path, model: dict | None = None, **job) -> dict:
    """``write_job``'s keywords of the job the tests train: the guest's first 700 rows train it, the rest
    (``g_new.csv``) are its ``predict_data``; hosts score from their full tables."""
    paths = [tmp_path / f"h{i}.csv" for i in range(2)]
    return {"guest": tmp_path / "g.csv", "hosts": paths, "model": {"epochs": 3, "batch_size": 256, **(model or {})},
            "guest_keys": {"predict_data": tmp_path / "g_new.csv"}, **job}


def _trained_job(tmp_path, model: dict | None = None, **job_keys):
    guest, hosts = vertical_split(1200, 3, [2, 2], overlap=0.9, seed=6)
    old, new = guest.iloc[:700], guest.iloc[700:]
    old.to_csv(tmp_path / "g.csv", index=False)
    new.to_csv(tmp_path / "g_new.csv", index=False)
    for i, h in enumerate(hosts):
        h.to_csv(tmp_path / f"h{i}.csv", index=False)        # a host scores from its full table
    job = load_job(write_job(tmp_path, **_job_kwargs(tmp_path, model, **job_keys)))
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


def _bin_points(folder, data: pd.DataFrame, part) -> np.ndarray:
    """Each row's sum of the party's ``scorecard.csv`` points, its bins found by the model's bin edges."""
    table = pd.read_csv(folder / "scorecard.csv", keep_default_na=False)
    total = np.zeros(len(data))
    assert table["column"].unique().tolist() == [cb.column for cb in part.encoder.bins]
    for cb in part.encoder.bins:
        rows = table[table["column"] == cb.column]
        assert rows["bin"].tolist() == cb.labels()
        total += rows["points"].to_numpy(float)[cb.assign(data[cb.column].to_numpy(float))]
    return total


def test_points_keep_the_scaling_the_model_was_trained_with(tmp_path, caplog):
    """[scorecard] edited after training: `vfl predict` scores with the model's scaling (saved in the
    guest's part), so the points still equal the offset plus every party's scorecard.csv entries, and
    warns naming both; a part saved before parts kept the scaling follows the job file, as before."""
    job, new, hosts = _trained_job(tmp_path, preprocess={"bins": 5})
    assert json.loads((job.output_dir("guest") / "model.json").read_text())["scorecard"] == \
        {"base_points": 600.0, "base_odds": 50.0, "pdo": 20.0}
    assert "scorecard" not in json.loads((job.output_dir("host0") / "model.json").read_text())
    run_predict_local(job)
    before = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})

    edited = load_job(write_job(tmp_path, **_job_kwargs(tmp_path, preprocess={"bins": 5},
                                                        scorecard={"base_points": 500, "pdo": 40})))
    assert edited.scorecard.pdo == 40 and edited.workdir == job.workdir
    with caplog.at_level(logging.WARNING):
        run_predict_local(edited)
    after = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})
    np.testing.assert_array_equal(after["id"], before["id"])
    np.testing.assert_allclose(after["score"], before["score"], atol=1e-12)
    np.testing.assert_array_equal(after["points"], before["points"])
    warned = [r.getMessage() for r in caplog.records if "[scorecard]" in r.getMessage()]
    assert len(warned) == 1 and "base_points 500, base_odds 50, pdo 40" in warned[0] \
        and "base_points 600, base_odds 50, pdo 20" in warned[0] and "retrain" in warned[0]
    page = (job.workdir / "report.html").read_text()         # the Job table: the model's scaling, and the edit
    assert "600 points at 50:1, PDO 20 (the job file now says 500 points at 50:1, PDO 40" in page

    # the points are the offset plus one scorecard.csv entry per column of every party
    ids = after["id"].tolist()
    guest = load_part(job.output_dir("guest") / "model.json", "guest")
    total = json.loads((job.output_dir("guest") / "scorecard.json").read_text())["offset_points"] + \
        _bin_points(job.output_dir("guest"), new.set_index("id").loc[ids], guest)
    for i, name in enumerate(("host0", "host1")):
        total += _bin_points(job.output_dir(name), hosts[i].set_index("id").loc[ids],
                             load_part(job.output_dir(name) / "model.json", name))
    np.testing.assert_allclose(after["points"], total, atol=0.05 + 1e-6)      # scores.csv: one decimal

    # a guest's part saved before parts kept their scaling: the job file's, as before
    path = job.output_dir("guest") / "model.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "scorecard"}))
    run_predict_local(edited)
    legacy = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})
    np.testing.assert_allclose(legacy["points"], scorecard_points(legacy["score"], 500, 50, 40).round(1), atol=1e-9)


def test_a_cohort_counts_its_rows_by_their_split_in_the_training_job(tmp_path, caplog):
    """`vfl predict` without predict_data scores the training file again: the cohort records how many
    scored rows were training, validation and test rows of the model ("overlap", from the guest's own
    predictions.csv) and warns; rows the training job never saw count as new."""
    job, new, hosts = _trained_job(tmp_path, model={"early_stopping": "on"})
    report = run_predict_local(job)["guest"]
    assert report["overlap"] == {"train": 0, "validation": 0, "test": 0, "new": report["scored_rows"]}

    again = load_job(write_job(tmp_path, **{**_job_kwargs(tmp_path, {"early_stopping": "on"}), "guest_keys": {}}))
    assert again.guest.predict_data is None and again.workdir == job.workdir
    with caplog.at_level(logging.WARNING):
        report = run_predict_local(again)["guest"]
    split = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str})["split"].value_counts()
    assert split["train"] and split["validation"] and split["test"]
    expected = {"train": int(split["train"]), "validation": int(split["validation"]), "test": int(split["test"]),
                "new": 0}
    assert report["overlap"] == expected and report["scored_rows"] == sum(expected.values())
    saved = json.loads((job.workdir / "predict_metrics.json").read_text())
    cohort = json.loads((job.workdir / "cohorts" / saved["cohort"] / "metrics.json").read_text())
    assert saved["overlap"] == cohort["overlap"] == expected
    assert any("not out-of-sample" in r.getMessage() and f"{expected['train']} of the" in r.getMessage()
               for r in caplog.records)
    page = (job.workdir / "report.html").read_text()         # the report says so beside the cohort
    assert "rows of the training job" in page and (f"{expected['train']:,} train, {expected['validation']:,} "
                                                   f"validation, {expected['test']:,} test") in page


def test_a_saved_scaling_is_checked_when_the_part_is_loaded(tmp_path):
    """The guest's part keeps its points scaling; a broken one, or one in a host's part, is refused."""
    from vfl.job.config import ScorecardConfig
    from vfl.preprocess.split import Standardizer
    std = Standardizer(np.zeros(2), np.ones(2))
    part = ModelPart("guest", "guest", ["a", "b"], np.array([0.5, -1.0]), std, 0.2,
                     scorecard=ScorecardConfig(700.0, 30.0, 25.0))
    part.save(tmp_path / "model.json")
    assert load_part(tmp_path / "model.json", "guest").scorecard == ScorecardConfig(700.0, 30.0, 25.0)
    d = part.to_dict()
    for bad in ({"base_points": 700.0, "base_odds": 0.0, "pdo": 25.0}, {"base_points": 700.0, "pdo": 25.0},
                {"base_points": float("nan"), "base_odds": 30.0, "pdo": 25.0}, [700.0, 30.0, 25.0],
                {"base_points": 700.0, "base_odds": 30.0, "pdo": 1e308}):
        (tmp_path / "bad.json").write_text(json.dumps({**d, "scorecard": bad}))
        with pytest.raises(ModelFileError, match="bad.json"):
            load_part(tmp_path / "bad.json", "guest")
    host = ModelPart("host", "h", ["a", "b"], np.array([0.5, -1.0]), std).to_dict()
    (tmp_path / "host.json").write_text(json.dumps({**host, "scorecard": d["scorecard"]}))
    with pytest.raises(ModelFileError, match="only the guest's"):
        load_part(tmp_path / "host.json", "h")


def test_values_far_outside_the_training_range_are_warned_about(tmp_path, caplog):
    """A unit error in new rows (a value a million times too large) would score 0 or 1 silently: each
    party warns, in its own log, naming its column and how many rows lie more than 10 training standard
    deviations out. Rows as the model saw them give no warning."""
    job, new, hosts = _trained_job(tmp_path)
    with caplog.at_level(logging.WARNING, logger="vfl.predict"):
        run_predict_local(job)
    assert not [r for r in caplog.records if "standard deviations" in r.getMessage()]
    column = [c for c in new.columns if c not in ("id", "y")][1]
    bad = new.copy()
    bad.loc[bad.index[:3], column] = bad[column].iloc[:3] * 1e6 + 1e6
    bad.to_csv(tmp_path / "g_new.csv", index=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vfl.predict"):
        run_predict_local(job)
    warned = [r.getMessage() for r in caplog.records if "standard deviations" in r.getMessage()]
    scored = set(pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})["id"])
    far = sum(i in scored for i in bad["id"].iloc[:3])
    assert warned == [f"guest: values more than 10 training standard deviations from the training mean in "
                      f"{column} ({far} rows); the model extrapolates there, so check these rows' units and "
                      "values before using their scores"]
