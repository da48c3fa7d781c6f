"""``vfl predict`` with hosts whose weights are encrypted under the arbiter's key (``host_weights = "encrypted"``).

Scoring the training's own rows again gives the training's scores; the arbiter takes part only in such jobs;
a host decrypts nothing and checks the arbiter's key is the one its weights are under; a missing key, another
key and a job file that no longer says "encrypted" each fail clearly; the predict ledgers pass ``vfl audit``.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from crypto import EncryptedArray, generate_keypair
from tests.conftest import write_job
from vfl.io.synth import write_categorical_credit_demo
from vfl.job.config import ConfigError, load_job
from vfl.job.tasks import task
from vfl.job.threads import JobFailed, run_local, run_predict_local
from vfl.models.key_holder import KEY_FILE
from vfl.protocol.audit import audit_job
from vfl.protocol.channel import LocalNetwork

CATS = ["merchant", "city", "device_model", "category"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("encrypted_predict")
    bank, shop = write_categorical_credit_demo(tmp / "data", n_people=1200, seed=5)
    path = write_job(tmp, bank, [shop], label="default",
                     model={"type": "embedding", "host_weights": "encrypted", "epochs": 2, "batch_size": 256,
                            "embedding_dim": 3, "hidden_units": [6], "min_category_rows": 16},
                     host_keys={"host0": {"categorical_columns": CATS}})
    job = load_job(path)
    run_local(job)
    return job


def _copy(job, tmp_path):
    """The trained job in a fresh folder (tests that break its files leave the module's fixture intact)."""
    shutil.copytree(job.workdir, tmp_path / "work")
    return replace(job, workdir=tmp_path / "work")


def test_scoring_the_training_rows_again_gives_the_trainings_scores(trained, tmp_path):
    job = _copy(trained, tmp_path)
    net = LocalNetwork(["guest", "host0", "arbiter"], record=True)
    results = run_predict_local(job, network=net)
    assert results["arbiter"]["packed_values"] > 0
    trained_scores = pd.read_csv(job.output_dir("guest") / "predictions.csv").set_index("id")
    scored = pd.read_csv(job.output_dir("guest") / "scores.csv").set_index("id")
    assert len(scored) == len(trained_scores) > 500
    np.testing.assert_allclose(scored["score"].to_numpy(), trained_scores.loc[scored.index, "score"].to_numpy(),
                               rtol=0, atol=1e-9)
    report = json.loads((job.workdir / "predict_metrics.json").read_text())
    labels = trained_scores.loc[scored.index, "label"].to_numpy()
    assert report["metrics"]["auc"] == pytest.approx(roc_auc_score(labels, scored["score"]), abs=1e-9)
    # the host received the key, PSI and the guest's model id; nothing decrypted, no score of anyone's
    to_host = {r.step for r in net.transcript if r.receiver == "host0"}
    assert "predict/public_key" in to_host
    assert all(s.startswith("psi/") or s in ("predict/public_key", "predict/model_id") for s in to_host), to_host
    from_host = [r for r in net.transcript if r.sender == "host0" and r.step == "predict/enc_u"]
    assert len(from_host) == 1 and isinstance(from_host[0].payload, EncryptedArray)
    to_arbiter = {r.step for r in net.transcript if r.receiver == "arbiter"}
    assert to_arbiter == {"predict/masked_sum"}
    ok, text = audit_job(job)
    assert ok, text


def test_the_arbiter_takes_part_only_with_encrypted_hosts(trained):
    t = task("predict")
    assert [r for r, _ in t.parties(trained)] == ["guest", "host", "arbiter"]
    plain = replace(trained, model=replace(trained.model, host_weights="plain"))
    assert [r for r, _ in t.parties(plain)] == ["guest", "host"] and "arbiter" in t.absent(plain)
    with pytest.raises(ConfigError, match="the predict task of this job needs no arbiter: start only the "
                                          "guest, hosts"):
        t.check_role(plain, "arbiter")


def test_a_missing_key_fails_naming_the_file(trained, tmp_path):
    job = _copy(trained, tmp_path)
    (job.output_dir("arbiter") / KEY_FILE).unlink()
    with pytest.raises(JobFailed, match=r"paillier_key.json: the arbiter's private key is not there"):
        run_predict_local(job)


def test_a_host_refuses_another_key_than_its_weights_are_under(trained, tmp_path):
    job = _copy(trained, tmp_path)
    _, other = generate_keypair(512)
    other.save(job.output_dir("arbiter") / KEY_FILE)
    with pytest.raises(JobFailed, match="the weights are encrypted under the key with fingerprint .*, not under "
                                        "this key"):
        run_predict_local(job)


def test_a_job_file_no_longer_saying_encrypted_is_refused(trained, tmp_path):
    job = _copy(trained, tmp_path)
    plain = replace(job, model=replace(job.model, host_weights="plain"))
    with pytest.raises(JobFailed, match='is scored with the arbiter, which holds their key: the job file must say '
                                        'host_weights = "encrypted"'):
        run_predict_local(plain)


def test_the_key_is_kept_private_and_dropped_by_a_plain_training(trained, tmp_path):
    job = _copy(trained, tmp_path)
    key = job.output_dir("arbiter") / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    plain = replace(job, model=replace(job.model, host_weights="plain", label_dp="off", early_stopping="off",
                                       epochs=1))
    run_local(plain)
    assert not key.exists()


def test_with_two_hosts_each_hosts_scores_alone_decrypt_to_noise(tmp_path):
    """Two hosts: each adds pairwise masks mod n (from the secure sum's key exchange) to its encrypted scores,
    so only the sum over both decrypts to scores; one host's ciphertexts alone, which a deviating guest could
    send the arbiter, decrypt to uniform values mod n. Scoring the training rows again gives the training's
    scores, and the ledgers pass the audit."""
    from crypto import PrivateKey
    bank, shop = write_categorical_credit_demo(tmp_path / "data", n_people=900, seed=6)
    frame = pd.read_csv(shop)
    id_col = frame.columns[0]
    left, right = ["merchant", "city"], ["device_model", "category"]
    numeric = [c for c in frame.columns if c not in (id_col, *left, *right)]
    frame[[id_col, *left, *numeric[:1]]].to_csv(tmp_path / "h0.csv", index=False)
    frame[[id_col, *right, *numeric[1:]]].to_csv(tmp_path / "h1.csv", index=False)
    path = write_job(tmp_path, bank, [tmp_path / "h0.csv", tmp_path / "h1.csv"], label="default",
                     model={"type": "embedding", "epochs": 1, "batch_size": 256, "embedding_dim": 2,
                            "hidden_units": [4], "min_category_rows": 16},
                     host_keys={"host0": {"categorical_columns": left}, "host1": {"categorical_columns": right}})
    job = load_job(path)
    assert job.model.encrypted_hosts and len(job.hosts) == 2
    net = LocalNetwork(["guest", "host0", "host1", "arbiter"], record=True)
    run_local(job, network=net)
    sk = PrivateKey.load(job.output_dir("arbiter") / KEY_FILE)
    n = sk.public_key.n
    sent = {r.sender: r.payload for r in net.transcript if r.step == "predict/enc_u"}
    assert set(sent) == {"host0", "host1"}
    alone = {h: [int(v) for v in sk.decrypt_raw(enc.with_key(sk.public_key).ciphertexts).tolist()]
             for h, enc in sent.items()}
    both = [(a + b) % n for a, b in zip(alone["host0"], alone["host1"])]
    small = 1 << 80                     # honest scores at 40 fractional bits are far below this, either sign
    assert all(min(v, n - v) < small for v in both)                       # the sum: the scores
    for h in alone:                                                       # each alone: uniform mod n
        assert sum(min(v, n - v) < small for v in alone[h]) == 0, h
    steps = {r.step for r in net.transcript}
    assert {"predict/sum_key", "predict/sum_keys"} <= steps
    # vfl predict on the training rows: the same scores, through the same masked round
    run_predict_local(job)
    trained = pd.read_csv(job.output_dir("guest") / "predictions.csv").set_index("id")["score"]
    scored = pd.read_csv(job.output_dir("guest") / "scores.csv").set_index("id")["score"]
    np.testing.assert_allclose(scored.to_numpy(), trained.loc[scored.index].to_numpy(), rtol=0, atol=1e-9)
    ok, text = audit_job(job)
    assert ok, text
