"""Whole jobs in one process (threads over the in-memory channel), from job files and CSVs."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from parties.cli import main as vfl_main
from tests.conftest import write_job, write_tables
from vfl.job.config import load_job
from vfl.models.reference import fit_reference
from vfl.job.threads import JobFailed, run_local
from vfl.preprocess.split import Standardizer, split_mask
from vfl.io.synth import vertical_split


def _joined_reference(job, guest_csv, host_csvs):
    g = pd.read_csv(guest_csv, dtype={"id": str})
    frames = [pd.read_csv(p, dtype={"id": str}) for p in host_csvs]
    j = g
    for f in frames:
        j = j.merge(f, on="id")
    j = j.sort_values("id").reset_index(drop=True)
    test = split_mask(j["id"].to_numpy(str), job.seed, job.test_fraction)
    blocks = [j[[c for c in g.columns if c not in ("id", "y")]].to_numpy(float)]
    blocks += [j[[c for c in f.columns if c != "id"]].to_numpy(float) for f in frames]
    X = np.hstack([Standardizer.fit(b[~test]).transform(b) for b in blocks])
    return j, X, j["y"].to_numpy(float), test, blocks[0].shape[1]


def test_two_hosts_job_matches_plaintext_and_sklearn(tmp_path):
    _, paths = write_tables(tmp_path, *vertical_split(900, 3, [3, 2], overlap=0.85, seed=2))
    job = load_job(write_job(tmp_path, tmp_path / "g.csv", paths,
                             model={"epochs": 8, "batch_size": 256, "learning_rate": 0.1, "tolerance": 0.0,
                                    "label_dp": "off"}))       # exact: against the plaintext twin
    results = run_local(job)
    m = results["guest"]
    j, X, y, test, n_guest = _joined_reference(job, tmp_path / "g.csv", paths)
    assert m["aligned_rows"] == len(j)
    w_ref, loss_ref = fit_reference(X[~test], y[~test], job.model, seed=job.model.seed, n_guest=n_guest)
    np.testing.assert_allclose(m["loss_history"], loss_ref, atol=1e-6)
    clf = LogisticRegression(max_iter=1000).fit(X[~test], y[~test])
    sk_auc = roc_auc_score(y[test], clf.predict_proba(X[test])[:, 1])
    assert abs(m["test"]["auc"] - sk_auc) < 0.02
    for name in ("guest", "host0", "host1"):
        ids = pd.read_csv(job.output_dir(name) / "intersection.csv", dtype=str)["id"].tolist()
        assert ids == j["id"].tolist()
    saved = json.loads((job.workdir / "metrics.json").read_text())
    assert saved["test"]["auc"] == m["test"]["auc"] and len(saved["loss_history"]) == 8
    assert set(saved["stage_seconds"]) == {"psi", "train", "predict"}


def test_vfl_psi_command_and_clear_errors(tmp_path, capsys):
    guest, (host,) = vertical_split(300, 2, [2], overlap=0.7, seed=9)
    guest.to_csv(tmp_path / "g.csv", index=False)
    host.to_csv(tmp_path / "h.csv", index=False)
    path = write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"])
    assert vfl_main(["psi", "--threads", str(path)]) == 0      # as processes: tests/test_api.py
    truth = sorted(set(guest["id"].astype(str)) & set(host["id"].astype(str)))
    job = load_job(path)
    for name in ("guest", "host0"):
        assert pd.read_csv(job.output_dir(name) / "intersection.csv", dtype=str)["id"].tolist() == truth
    # A missing label column: exit 1, one line naming the problem.
    bad = write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"], label="target")
    assert vfl_main(["run", "--threads", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "label column 'target' not found" in err


def test_job_failure_names_the_party(tmp_path):
    guest, (host,) = vertical_split(200, 2, [2], seed=1)
    guest.to_csv(tmp_path / "g.csv", index=False)
    host.assign(h0_0="text").to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(JobFailed, match="party 'host0' failed: DataError: .*non-numeric"):
        run_local(load_job(write_job(tmp_path, tmp_path / "g.csv", [tmp_path / "h.csv"])))


@pytest.mark.slow
def test_default_credit_with_host_columns_split_in_two(tmp_path, shared_data):
    """FATE's default_credit, first 4,000 rows, host columns split between two hosts."""
    g = pd.read_csv(shared_data / "default_credit_hetero_guest.csv", dtype={"id": str}).head(4000)
    h = pd.read_csv(shared_data / "default_credit_hetero_host.csv", dtype={"id": str}).head(4000)
    h = h.rename(columns={c: f"host_{c}" for c in h.columns if c != "id"})
    g.to_csv(tmp_path / "g.csv", index=False)
    cols = [c for c in h.columns if c != "id"]
    paths = [tmp_path / "h0.csv", tmp_path / "h1.csv"]
    h[["id", *cols[:5]]].to_csv(paths[0], index=False)
    h[["id", *cols[5:]]].to_csv(paths[1], index=False)
    job = load_job(write_job(tmp_path, tmp_path / "g.csv", paths,
                             model={"epochs": 20, "batch_size": 512, "learning_rate": 0.05, "tolerance": 1e-4,
                                    "label_dp": "off"},
                             baselines=True))
    m = run_local(job)["guest"]
    j, X, y, test, n_guest = _joined_reference(job, tmp_path / "g.csv", paths)
    _, loss_ref = fit_reference(X[~test], y[~test], job.model, seed=job.model.seed, n_guest=n_guest)
    np.testing.assert_allclose(m["loss_history"], loss_ref, atol=1e-6)
    assert m["epochs_run"] < 20, "early stopping on the loss tolerance should end training"
    assert abs(m["test"]["auc"] - m["baseline_central_auc"]) < 0.01
    assert m["test"]["auc"] > m["baseline_guest_only_auc"] + 0.02


def test_what_crosses_the_wire_in_a_whole_job(tmp_path):
    """Hosts and arbiter never receive a plaintext float array; the guest receives none from hosts
    except through the secure sum; every encrypted payload uses the arbiter's key."""
    from crypto import EncryptedArray
    from vfl.protocol.messages import BigInts
    _, paths = write_tables(tmp_path, *vertical_split(400, 2, [2, 2], overlap=0.9, seed=3))
    job = load_job(write_job(tmp_path, tmp_path / "g.csv", paths, model={"epochs": 2, "batch_size": 128}))
    from vfl.protocol.channel import LocalNetwork
    net = LocalNetwork(["guest", "host0", "host1", "arbiter"], record=True)
    run_local(job, network=net)
    keys = {r.payload["n"] for r in net.transcript if r.step == "lr/public_key"}
    assert len(keys) == 1
    for r in net.transcript:
        p = r.payload
        if isinstance(p, EncryptedArray):
            assert p.public_key.to_dict()["n"] in keys, r.step
        if isinstance(p, np.ndarray):
            assert p.dtype.kind != "f", f"plaintext floats in {r.step} ({r.sender} -> {r.receiver})"
        if r.receiver == "arbiter":
            assert isinstance(p, (EncryptedArray, dict)), r.step
        if r.receiver.startswith("host") and isinstance(p, dict):
            if r.step.startswith("psi/buckets/"):      # the bucket count and key agreement: counts and nonces
                assert set(p) <= {"buckets", "nonce", "commits", "nonces"}, (r.step, p)
                assert all(isinstance(v, (int, str, list)) and not isinstance(v, bool) for v in p.values())
            else:
                assert set(p) <= {"n", "stop", "epoch", "saved_epoch", "protocol", "guest", "hosts", "format",
                                  "version", "keys", "model_id"}, (r.step, p)   # keys: the hosts' relayed secure-sum
                if "model_id" in p:                            # keys; model_id: the training's, 128 random bits
                    assert r.step == "lr/model_id" and len(p["model_id"]) == 32
        if isinstance(p, BigInts):      # masked values the arbiter decrypted: a party's sums, the guest's loss
            assert r.sender == "arbiter" and (r.step.endswith("masked_grad_plain")
                                              or r.step.endswith("/loss_plain") and r.receiver == "guest")


def test_fewer_training_rows_than_the_release_floor_are_refused_by_name(tmp_path):
    """Below min_rows_per_release every sum was held back and dropped: with label-DP the guest failed on
    'expected the arbiter's count of noised epochs, got 0'; without it the job 'finished' untrained."""
    import numpy as np
    rng = np.random.default_rng(1)
    ids = [f"id{i}" for i in range(36)]
    g = pd.DataFrame({"id": ids, "x1": rng.normal(size=36), "y": np.arange(36) % 2})
    h = pd.DataFrame({"id": ids, "z1": rng.normal(size=36)})
    for dp in ("auto", "off"):
        (tmp_path / dp).mkdir()
        job = load_job(write_job(tmp_path / dp, g, [h], label="y", model={"label_dp": dp, "epochs": 3}))
        with pytest.raises(JobFailed, match="training rows, fewer than \\[model\\] min_rows_per_release = 32"):
            run_local(job)


def test_vfl_run_and_predict_print_json_alone_on_stdout(tmp_path, capsys):
    """`vfl run job.toml | jq` failed on the paths printed after the JSON ("Extra data"): they go to stderr."""
    guest, hosts = vertical_split(300, 2, [2], seed=2)
    path = write_job(tmp_path, *write_tables(tmp_path, guest, hosts), model={"epochs": 1, "batch_size": 128})
    assert vfl_main(["run", "--threads", str(path)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["aligned_rows"] > 0 and "metrics: " in out.err
    assert vfl_main(["predict", "--threads", str(path)]) == 0
    out = capsys.readouterr()
    assert "rows" in json.dumps(json.loads(out.out)) and "scores: " in out.err
