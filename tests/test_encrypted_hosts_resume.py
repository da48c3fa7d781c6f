"""``vfl run --resume`` with ``host_weights = "encrypted"``: a host checkpoints its weights as ciphertexts
under the arbiter's key, and the arbiter keeps that key for a resume (a new training makes a new one).

An interrupted training, resumed, ends where an uninterrupted one does (decrypted weights and scores, up to
the rescaling's rounding of one unit at 2^-40 per step); a resume without the arbiter's key file, or under
another key, is refused naming the cause.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crypto import generate_keypair
from tests.conftest import write_job
from vfl.io.synth import write_categorical_credit_demo
from vfl.job.config import load_job
from vfl.job.threads import JobFailed, run_local
from vfl.models.encrypted_host import EncryptedWideHost, weights_from_hex, weights_hex
from vfl.models.key_holder import KEY_FILE, saved_key

CATS = ["merchant", "city", "device_model", "category"]
# decrypted weights and scores: the rescaling rounds each weight by one unit at 2^-40 a step, whichever way
# its mask carries, so two runs differ by a few units (measured: 4e-12 on weights, interrupted or not)
TOLERANCE = 1e-9


def _job(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    bank, shop = write_categorical_credit_demo(folder / "data", n_people=1200, seed=4)
    return load_job(write_job(folder, bank, [shop], label="default",
                              model={"type": "embedding", "host_weights": "encrypted", "epochs": 3,
                                     "batch_size": 128, "embedding_dim": 2, "hidden_units": [4],
                                     "min_category_rows": 16},
                              host_keys={"host0": {"categorical_columns": CATS}}))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted training: the reference."""
    job = _job(tmp_path_factory.mktemp("encrypted_straight"))
    run_local(job)
    return job


def _stop(*_, **__):
    raise RuntimeError("stopped here by the test")


def _interrupt(job, monkeypatch, epoch: int = 1, batch: int = 1, stage: str = "training") -> None:
    """Run until the host dies: at ``batch`` of ``epoch`` (the epochs before it are checkpointed by every
    party), or with ``stage = "scoring"`` after training, when it sends its scores of the aligned rows."""
    original = EncryptedWideHost._batch

    def dying(self, channel, pk, w, codes, decay, step_size, pre, e, b):
        if (e, b) == (epoch, batch):
            _stop()
        return original(self, channel, pk, w, codes, decay, step_size, pre, e, b)
    with monkeypatch.context() as mp:
        if stage == "training":
            mp.setattr(EncryptedWideHost, "_batch", dying)
        else:
            mp.setattr("vfl.models.encrypted_host.host_send_encrypted_scores", _stop)
        with pytest.raises(JobFailed, match="stopped here by the test"):
            run_local(job)


def _key_fingerprint(job) -> str:
    return saved_key(job.output_dir("arbiter"), job.model.encryption)[0].fingerprint().hex()


def _host_checkpoint(job) -> dict:
    return json.loads((job.output_dir("host0") / "checkpoint.json").read_text())


def _decrypted_host_weights(job) -> np.ndarray:
    """The host's final weights, decrypted with the arbiter's key file (what only the arbiter could do)."""
    pk, sk = saved_key(job.output_dir("arbiter"), job.model.encryption)
    weights = json.loads((job.output_dir("host0") / "model.json").read_text())["weights"]
    return weights_from_hex(weights, pk, len(weights["ciphertexts"])).decrypt(sk)


def _guest_params(job) -> np.ndarray:
    params = json.loads((job.output_dir("guest") / "model.json").read_text())["params"]
    return np.concatenate([np.ravel(np.asarray(params[k], dtype=float)) for k in sorted(params)])


@pytest.mark.parametrize("stage, saved_epoch", [("training", 1), ("scoring", 3)])
def test_an_interrupted_training_resumes_to_the_uninterrupted_model(stage, saved_epoch, straight, tmp_path,
                                                                    monkeypatch):
    """Stopped in epoch 2 (resumed at epoch 1's checkpoint) or after training (resumed to scoring with the
    final ciphertexts): the arbiter reuses its key, and the model is the uninterrupted one."""
    job = _job(tmp_path)
    _interrupt(job, monkeypatch, stage=stage)
    saved = _host_checkpoint(job)
    key = _key_fingerprint(job)
    assert saved["epoch"] == saved_epoch and saved["weights"] is None    # ciphertexts only, under the run's key
    assert saved["encrypted_weights"]["key_fingerprint"] == key
    assert len(saved["encrypted_weights"]["ciphertexts"]) == len(_decrypted_host_weights(straight))
    assert not (job.output_dir("guest") / "model.json").exists()

    results = run_local(job, resume=True)
    assert _key_fingerprint(job) == key                 # the arbiter kept its key for the resume
    assert results["host0"]["epochs_run"] == results["guest"]["epochs_run"] == 3
    got, want = _decrypted_host_weights(job), _decrypted_host_weights(straight)
    assert np.abs(want).max() > 0.05                    # the host's part learned something
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(_guest_params(job), _guest_params(straight), rtol=0, atol=TOLERANCE)
    scores = [pd.read_csv(j.output_dir("guest") / "predictions.csv") for j in (job, straight)]
    assert list(scores[0]["id"]) == list(scores[1]["id"])
    np.testing.assert_allclose(scores[0]["score"], scores[1]["score"], rtol=0, atol=TOLERANCE)
    metrics = [json.loads((j.workdir / "metrics.json").read_text()) for j in (job, straight)]
    assert metrics[0]["test"]["auc"] == pytest.approx(metrics[1]["test"]["auc"], abs=TOLERANCE)


def test_a_resume_without_the_arbiters_key_file_is_refused_and_a_fresh_run_makes_a_new_key(tmp_path, monkeypatch):
    job = _job(tmp_path)
    _interrupt(job, monkeypatch)
    key = _key_fingerprint(job)
    (job.output_dir("arbiter") / KEY_FILE).unlink()
    with pytest.raises(JobFailed, match=r"arbiter.*private key is not there.*can not resume; start afresh "
                                        r"without --resume"):
        run_local(job, resume=True)
    _interrupt(job, monkeypatch)                        # interrupted again: a key file and a checkpoint to resume
    key = _key_fingerprint(job)
    run_local(job)                                      # the remedy named: a new training, which makes a new key
    assert _key_fingerprint(job) != key
    part = json.loads((job.output_dir("host0") / "model.json").read_text())
    assert part["weights"]["key_fingerprint"] == _key_fingerprint(job)


@pytest.mark.audit_fails      # the host's ledger records its refusal of the arbiter's key, which the audit reports
def test_a_host_refuses_to_resume_under_another_key(tmp_path, monkeypatch):
    job = _job(tmp_path)
    _interrupt(job, monkeypatch)
    key = _key_fingerprint(job)
    other = generate_keypair(job.model.key_bits)[1]
    other.save(job.output_dir("arbiter") / KEY_FILE)     # the arbiter's key file replaced
    with pytest.raises(JobFailed, match=r"host0.*public_key from arbiter: its public key \(fingerprint "
                                        rf"{other.public_key.fingerprint().hex()}\) is not the key this host's "
                                        rf"checkpointed weights are encrypted under \(fingerprint {key}"):
        run_local(job, resume=True)


def test_checkpointed_ciphertexts_are_checked_before_use():
    """What a host reads back from its checkpoint: ciphertexts under this key, as many as its weights, at the
    weights' scale, in range and units mod n; anything else is refused by name."""
    pk, sk = generate_keypair(512)
    from crypto import EncryptedArray
    w = EncryptedArray.encrypt(pk, np.array([0.5, -1.25, 0.0]), frac_bits=40)
    saved = weights_hex(w)
    np.testing.assert_allclose(weights_from_hex(saved, pk, 3).decrypt(sk), [0.5, -1.25, 0.0], atol=1e-12)
    other = generate_keypair(512)[0]
    bad = {
        "under the key with fingerprint": (saved, other, 3),
        "2 weight ciphertexts, expected 3": ({**saved, "ciphertexts": saved["ciphertexts"][:2]}, pk, 3),
        "at 41 fractional bits": ({**saved, "frac_bits": 41}, pk, 3),
        "outside \\[1, n\\^2\\)": ({**saved, "ciphertexts": ["0", *saved["ciphertexts"][1:]]}, pk, 3),
        "not a unit modulo n": ({**saved, "ciphertexts": [format(int(pk.n), "x"), *saved["ciphertexts"][1:]]}, pk, 3),
        "not lowercase hex": ({**saved, "ciphertexts": ["0x12", *saved["ciphertexts"][1:]]}, pk, 3),
    }
    for match, (d, key, n) in bad.items():
        with pytest.raises(ValueError, match=match):
            weights_from_hex(d, key, n)
