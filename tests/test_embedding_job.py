"""A whole embedding-model job from CSV files: equals its twin, scores new rows as trained, wire is clean."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from crypto import EncryptedArray
from tests.conftest import write_job
from vfl.evaluation.baselines import _table, twin_metrics
from vfl.protocol.channel import LocalNetwork
from vfl.job.config import load_job
from vfl.protocol.messages import BigInts
from vfl.job.threads import run_local, run_predict_local
from vfl.preprocess.split import split_mask
from vfl.io.synth import write_categorical_credit_demo

CATS = ["merchant", "city", "device_model", "category"]


def _job(tmp_path, model_extra=None):
    bank, shop = write_categorical_credit_demo(tmp_path / "data", n_people=1500, seed=4)
    path = write_job(tmp_path, bank, [shop], label="default",
                     model={"type": "embedding", "host_weights": "plain", "epochs": 2, "batch_size": 256,
                            "learning_rate": 0.02,
                            "embedding_dim": 3, "hidden_units": [6], "tolerance": 0.0, **(model_extra or {})},
                     host_keys={"host0": {"categorical_columns": CATS, "crosses": [["merchant", "city"]]}})
    return load_job(path)


def test_unprotected_job_equals_the_pooled_twin_and_predict_rescores_exactly(tmp_path):
    job = _job(tmp_path, {"min_rows_per_release": 1, "label_dp": "off"})
    m = run_local(job)["guest"]
    pred = pd.read_csv(job.output_dir("guest") / "predictions.csv", dtype={"id": str}, keep_default_na=False)
    common = pred["id"].to_numpy(dtype=object)
    test = split_mask(common, job.seed, job.test_fraction)
    tables = [_table(job.guest, common), _table(job.hosts[0], common)]
    twin = twin_metrics(job, tables, test)
    assert abs(m["test"]["auc"] - twin["auc"]) < 1e-6
    # the report's "train" sample is the rows trained on, as metrics["train"]: no validation rows
    ev = json.loads((job.workdir / "metrics.json").read_text())["evaluation"]["train"]
    assert m["validation"] and abs(ev["auc"] - m["train"]["auc"]) < 1e-4
    assert ev["sample"]["rows"] == m["train"]["rows"] < int((~test).sum())
    # vfl predict on the training files scores every aligned row exactly as training did.
    run_predict_local(job)
    scores = pd.read_csv(job.output_dir("guest") / "scores.csv", dtype={"id": str}, keep_default_na=False)
    assert scores["id"].tolist() == pred["id"].tolist()
    np.testing.assert_allclose(scores["score"], pred["score"], atol=1e-9)


def test_protected_job_wire_holds_no_plaintext_and_no_small_release(tmp_path):
    job = _job(tmp_path)
    assert job.model.label_dp_on and job.model.min_rows_per_release == 32
    net = LocalNetwork(["guest", "host0", "arbiter"], record=True)
    results = run_local(job, network=net)
    assert results["host0"]["smallest_release_rows"] >= 32 and results["guest"]["smallest_release_rows"] >= 32
    assert 0 < results["arbiter"]["label_dp"]["epsilon_spent"] <= job.model.dp_epsilon + 1e-9
    declared = {r.sender: r.payload["values"] for r in net.transcript
                if r.step in ("emb/plan", "emb/values")}
    assert set(declared) == {"guest", "host0"}
    for r in net.transcript:
        p = r.payload
        if isinstance(p, np.ndarray):
            assert p.dtype.kind != "f", f"plaintext floats in {r.step} ({r.sender} -> {r.receiver})"
        if r.receiver == "arbiter":
            assert isinstance(p, (EncryptedArray, dict)), r.step
        if r.receiver == "host0":
            assert isinstance(p, (EncryptedArray, dict, BigInts, np.ndarray)), r.step
        if isinstance(p, BigInts):          # decrypted values: never more than the party's parameters
            assert r.sender == "arbiter" and (r.step.endswith("masked_grad_plain")
                                              or r.step.endswith("/loss_plain") and r.receiver == "guest")
            assert len(p.values) <= declared[r.receiver]
        if r.step.endswith("enc_d"):        # residuals reach hosts encrypted only
            assert isinstance(p, EncryptedArray)
