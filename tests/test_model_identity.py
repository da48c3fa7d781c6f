"""Every model part carries its training's model_id; `vfl predict` refuses parts of two trainings.

A crash between the parties' saves (hosts save their parts before the guest saves its own) or a part
copied from another run used to be combined silently, with scores off by a few hundredths. Now the
guest draws a model_id when a training starts (kept across --resume), every party stores it, and
scoring compares them before anything is scored.
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_job
from vfl.io.synth import vertical_split
from vfl.job.config import load_job
from vfl.job.threads import JobFailed, run_local, run_predict_local
from vfl.models.model_file import (ModelFileError, ModelPart, OtherTraining, TowerPart, check_same_training,
                                  load_part)
from vfl.protocol.spec import SpecViolation, model_id_of

PARTIES = ("guest", "host0", "host1")


def _job(tmp_path, model: dict | None = None, folder: str = "."):
    """A tiny two-host job (small keys, few rows, no label-DP so that it may be trained again in its
    workdir) that trains in a few seconds; its files and workdir under ``tmp_path / folder``."""
    tmp_path = tmp_path / folder
    tmp_path.mkdir(exist_ok=True)
    guest, hosts = vertical_split(500, 3, [2, 2], overlap=0.95, seed=3)
    guest.to_csv(tmp_path / "g.csv", index=False)
    paths = [tmp_path / f"h{i}.csv" for i in range(2)]
    for h, p in zip(hosts, paths):
        h.to_csv(p, index=False)
    loops = {} if (model or {}).get("type") == "secureboost" else {"epochs": 2, "batch_size": 128, "label_dp": "off"}
    return load_job(write_job(tmp_path, tmp_path / "g.csv", paths, model={**loops, **(model or {})}))


def _ids(job) -> dict[str, str | None]:
    return {p: json.loads((job.output_dir(p) / "model.json").read_text()).get("model_id") for p in PARTIES}


def _scores(job) -> pd.DataFrame:
    return pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str})


@pytest.fixture(scope="module")
def two_trainings(tmp_path_factory):
    """The same job trained twice, in two workdirs, with different model seeds: the first training's
    part ids and host1's part (kept aside), and the second training's scores."""
    tmp = tmp_path_factory.mktemp("identity")
    job = _job(tmp, {"seed": 7}, "first")
    run_local(job)
    first = _ids(job)
    kept = tmp / "host1_first.json"
    shutil.copy(job.output_dir("host1") / "model.json", kept)
    job = _job(tmp, {"seed": 8}, "second")
    run_local(job)
    run_predict_local(job)
    return job, first, kept, _scores(job)


def test_every_part_of_a_training_carries_one_model_id_and_a_new_training_a_new_one(two_trainings):
    job, first, _, _ = two_trainings
    second = _ids(job)
    assert len(set(first.values())) == 1 and len(set(second.values())) == 1
    assert first["guest"] != second["guest"]
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in second.values())
    for p in PARTIES:
        assert load_part(job.output_dir(p) / "model.json", p).model_id == second[p]


def test_predict_refuses_a_host_part_of_another_training_and_works_with_matched_parts(two_trainings, tmp_path):
    job, first, kept, before = two_trainings
    part = job.output_dir("host1") / "model.json"
    mine = part.read_bytes()
    try:
        shutil.copy(kept, part)                      # host1's part of the first training
        with pytest.raises(JobFailed, match=r"host1 .*different trainings.*retrain") as exc:
            run_predict_local(job)
        assert first["host1"][:12] in str(exc.value) and "\n" not in str(exc.value)
        pd.testing.assert_frame_equal(_scores(job), before)     # refused before anything was scored
        from vfl.protocol.audit import audit_job
        ok, text = audit_job(job)                    # the refused run is a clean failure in every ledger
        assert ok, text
    finally:
        part.write_bytes(mine)
    run_predict_local(job)                           # matched parts: scored as before
    after = _scores(job)
    np.testing.assert_array_equal(after["id"], before["id"])
    np.testing.assert_allclose(after["score"], before["score"], atol=1e-12)


def test_parts_saved_before_they_kept_a_model_id_are_scored_with_a_warning(two_trainings, tmp_path, caplog):
    job, _, _, before = two_trainings
    saved = {p: (job.output_dir(p) / "model.json").read_bytes() for p in PARTIES}
    try:
        for p in ("guest", "host0"):
            d = json.loads(saved[p])
            del d["model_id"]
            (job.output_dir(p) / "model.json").write_text(json.dumps(d))
        with caplog.at_level(logging.WARNING):
            run_predict_local(job)
    finally:
        for p, raw in saved.items():
            (job.output_dir(p) / "model.json").write_bytes(raw)
    np.testing.assert_allclose(_scores(job)["score"], before["score"], atol=1e-12)
    warned = [r.getMessage() for r in caplog.records if "carries no model_id" in r.getMessage()]
    assert warned and any("guest and host0" in w for w in warned), warned


def test_a_guest_killed_after_the_hosts_saved_leaves_parts_predict_refuses_until_resume_repairs_them(
        tmp_path, monkeypatch):
    """The review's repro: a retraining whose guest dies after the hosts saved their new parts (and
    before it saved its own). Predict must refuse the mix; `--resume` (the training had ended: every
    party takes its final state and saves its part again) keeps the training's model_id and repairs it."""
    model = {"type": "embedding", "embedding_dim": 2, "hidden_units": [4]}
    job = _job(tmp_path, {"seed": 7, **model})
    run_local(job)
    old = _ids(job)
    job = _job(tmp_path, {"seed": 8, **model})
    real_save = TowerPart.save

    def guest_dies(self, path):
        if self.role == "guest":
            raise RuntimeError("killed before saving its part")
        real_save(self, path)
    monkeypatch.setattr(TowerPart, "save", guest_dies)
    with pytest.raises(JobFailed, match="killed"):
        run_local(job)
    monkeypatch.setattr(TowerPart, "save", real_save)
    mixed = _ids(job)
    assert mixed["guest"] == old["guest"] and mixed["host0"] == mixed["host1"] != old["guest"]
    with pytest.raises(JobFailed, match="different trainings"):
        run_predict_local(job)
    run_local(job, resume=True)
    assert _ids(job) == {p: mixed["host0"] for p in PARTIES}      # the interrupted training's, kept by the resume
    run_predict_local(job)
    trained = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str})
    merged = trained.merge(_scores(job), on="id", suffixes=("_train", "_predict"))
    np.testing.assert_allclose(merged["score_train"], merged["score_predict"], atol=1e-9)


def test_a_secureboost_host_part_of_another_training_is_refused(tmp_path):
    job = _job(tmp_path, {"type": "secureboost", "num_trees": 2, "max_depth": 2, "max_bin": 8, "min_leaf_rows": 10})
    run_local(job)
    ids = _ids(job)
    assert len(set(ids.values())) == 1 and ids["guest"] is not None
    run_predict_local(job)
    part = job.output_dir("host0") / "model.json"
    d = json.loads(part.read_text())
    part.write_text(json.dumps({**d, "model_id": "0" * 32}))
    with pytest.raises(JobFailed, match="host0 .*different trainings"):
        run_predict_local(job)
    part.write_text(json.dumps(d))
    run_predict_local(job)


def test_model_ids_are_checked_where_they_are_read():
    assert model_id_of({"model_id": "a" * 32}, "predict/model_id") == "a" * 32
    assert model_id_of({"model_id": None}, "predict/model_id", unknown=True) is None
    for bad in ({"model_id": None}, {"model_id": "A" * 32}, {"model_id": "a" * 31}, {"model_id": "a" * 32 + "\n"},
                {"model_id": "a" * 32, "x": 1}, {}, ["a" * 32], {"model_id": 7}):
        with pytest.raises(SpecViolation):
            model_id_of(bad, "lr/model_id")
    check_same_training({"guest": "a" * 32, "host0": "a" * 32, "host1": None}, "guest")
    with pytest.raises(OtherTraining, match=r"of guest and host1 \(model_id aaaa.*of host0 \(model_id bbbb"):
        check_same_training({"guest": "a" * 32, "host0": "b" * 32, "host1": "a" * 32}, "guest")


def test_a_malformed_model_id_in_a_part_is_refused_by_name(tmp_path):
    from vfl.preprocess.split import Standardizer
    part = ModelPart("host", "host0", ["a"], np.array([0.5]), Standardizer(np.zeros(1), np.ones(1)))
    path = tmp_path / "model.json"
    part.save(path)
    assert "model_id" not in json.loads(path.read_text()) and load_part(path, "host0").model_id is None
    part.model_id = "c" * 32
    part.save(path)
    assert load_part(path, "host0").model_id == "c" * 32
    d = json.loads(path.read_text())
    path.write_text(json.dumps({**d, "model_id": "C" * 32}))
    with pytest.raises(ModelFileError, match=f"{path}.*model_id"):
        load_part(path, "host0")
