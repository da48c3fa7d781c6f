"""Hosts whose weights stay encrypted under the arbiter's key (``host_weights = "encrypted"``, experimental).

The encrypted roles equal their plaintext twin; a host receives nothing but ciphertexts, public values and
control words, and the same of them whatever the labels; the job runs end to end and passes ``vfl audit``,
whose rule fails a host with encrypted weights that got a value decrypted; and what is not needed (label-DP,
early stopping) is refused (resume: tests/test_encrypted_hosts_resume.py; scoring new rows:
tests/test_encrypted_predict.py; online scoring: tests/test_serving_encrypted.py).
"""
from __future__ import annotations

import json
from dataclasses import replace

import gmpy2
import numpy as np
import pytest

import vfl.models.guest as guest_mod
from crypto import EncryptedArray, generate_keypair
from crypto.encoding import encode_signed
from tests.conftest import run_parties, write_job
from vfl.io.synth import write_categorical_credit_demo
from vfl.job.config import ConfigError, ModelConfig, load_job
from vfl.job.threads import run_local
from vfl.models import EmbeddingTower, SplitArbiter, SplitGuest, TowerInput
from vfl.models.encrypted_host import EncryptedWideHost
from vfl.models.model_file import ENCRYPTED_REFUSAL, ModelFileError, load_part
from vfl.models.reference import fit_encrypted_twin
from vfl.models.wide import WideTower
from vfl.protocol.audit import audit_job
from vfl.protocol.channel import LocalNetwork
from vfl.preprocess.split import batch_schedule
from vfl.protocol.messages import BigInts

MODEL = ModelConfig(type="embedding", host_weights="encrypted", epochs=3, batch_size=64, learning_rate=0.05,
                    key_bits=512, allow_short_keys=True, min_rows_per_release=8, embedding_dim=2, hidden_units=(3,))
CATS = ["merchant", "city", "device_model", "category"]


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


def _data(n: int = 240, seed: int = 1):
    rng = np.random.default_rng(seed)
    xg = TowerInput(rng.normal(size=(n, 3)), rng.integers(0, 5, (n, 1)))
    codes = np.column_stack([rng.integers(0, 7, n), rng.integers(0, 4, n), rng.integers(0, 10, n)])
    z = xg.numeric[:, 0] + (codes[:, 0] == 3) - (codes[:, 2] > 5)
    return xg, codes, (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)


def _train(keypair, xg, codes, y, model=MODEL):
    """The three roles in threads over a recording network: (roles, the network)."""
    tg = EmbeddingTower(3, [5], 2, (3,), intercept=True, wide=True)
    net = LocalNetwork(["g", "h", "a"], timeout=120, record=True)
    roles = {"g": SplitGuest(model, hosts=["h"], arbiter="a", seed=3, tower=tg, init_seed=1),
             "h": EncryptedWideHost(model, guest="g", arbiter="a", seed=3, tower=WideTower([7, 4, 10])),
             "a": SplitArbiter(model, guest="g", hosts=["h"])}
    run_parties(net, {"g": lambda: roles["g"].fit(net.channel("g"), xg, y),
                      "h": lambda: roles["h"].fit(net.channel("h"), codes),
                      "a": lambda: roles["a"].fit(net.channel("a"), keypair=keypair)})
    return roles, net


def test_encrypted_protocol_equals_its_plaintext_twin(keypair):
    xg, codes, y = _data()
    train, test = np.arange(180), np.arange(180, 240)
    roles, _ = _train(keypair, xg.take(train), codes[train], y[train])
    tg, th = roles["g"].tower, roles["h"].tower
    gp, (hw,) = fit_encrypted_twin(tg, xg.take(train), [th], [codes[train]], y[train], MODEL, 3, 1)
    w = roles["h"].weights_.decrypt(keypair[1])
    assert roles["h"].weights_.frac_bits == 40 and np.abs(hw).max() > 0.05       # it learned something
    np.testing.assert_allclose(w, hw, rtol=0, atol=1e-6)
    np.testing.assert_allclose(roles["g"].params_, gp, rtol=0, atol=1e-6)
    scores = tg.forward(roles["g"].params_, xg.take(test))[0] + th.forward(w, codes[test])
    twin = tg.forward(gp, xg.take(test))[0] + th.forward(hw, codes[test])
    np.testing.assert_allclose(scores, twin, rtol=0, atol=1e-6)
    assert roles["g"].loss_history_ == [] and roles["g"].epochs_run_ == MODEL.epochs    # no loss in this mode


def _host_view(net, host="h") -> dict[str, list[tuple]]:
    """What the host received from each peer, in order, as it can read it: step, payload type, shape and scale
    of ciphertexts, a control payload whole."""
    out: dict[str, list[tuple]] = {}
    for r in net.transcript:
        if r.receiver != host:
            continue
        p = r.payload
        if isinstance(p, EncryptedArray):
            seen = (r.step, "ciphertexts", tuple(p.shape), p.frac_bits)
        elif isinstance(p, dict):
            seen = (r.step, "control", json.dumps(p, sort_keys=True))
        else:
            seen = (r.step, type(p).__name__)
        out.setdefault(r.sender, []).append(seen)
    return out


def test_a_host_gets_nothing_decrypted_and_the_same_whatever_the_labels(keypair):
    """A host's whole view: ciphertexts under the arbiter's key, the public key and control words; and two
    trainings on opposite labels give it the same view but for the ciphertexts' values (semantic security does
    the rest). A host that released its sums would get BigInts back from the arbiter and fail this."""
    xg, codes, y = _data()
    views = []
    for labels in (y, 1 - y):
        roles, net = _train(keypair, xg, codes, labels)
        for r in net.transcript:
            if r.receiver == "h":
                assert isinstance(r.payload, (EncryptedArray, dict)), (r.step, type(r.payload))
                assert not isinstance(r.payload, (BigInts, np.ndarray)), r.step
                if isinstance(r.payload, dict) and r.step.endswith("/decision"):
                    assert set(r.payload) == {"stop"}
            if r.sender == "h" and r.receiver == "a":      # only its masked rescaling, and its public sizes
                assert r.step.endswith("/rescale") or r.step.endswith("/values"), r.step
            assert not r.step.endswith("enc_loss_part") and not r.step.endswith("loss_plain")
        views.append(_host_view(net))
    assert views[0] == views[1] and set(views[0]) == {"g", "a"}
    assert all(v[1] in ("ciphertexts", "control") for seen in views[0].values() for v in seen)


def test_the_arbiter_refuses_a_rescaling_not_as_agreed(keypair):
    """A rescale message with the wrong scale is refused by name (the arbiter's check of the host's message)."""
    import vfl.models.encrypted_host as eh
    original = eh.mask_for_rescale

    def wrong_scale(enc, bits):
        masked, rho = original(enc, bits)
        return EncryptedArray(masked.public_key, masked.ciphertexts, 87), rho
    xg, codes, y = _data()
    eh.mask_for_rescale = wrong_scale
    try:
        with pytest.raises(Exception, match=r"rescale from h: .* at 87 fractional bits; expected .* at 88"):
            _train(keypair, xg, codes, y)
    finally:
        eh.mask_for_rescale = original


# ------------------------------------------------------------------ the job end to end

def _job(tmp_path, model_extra=None, host_extra=None):
    bank, shop = write_categorical_credit_demo(tmp_path / "data", n_people=1200, seed=4)
    path = write_job(tmp_path, bank, [shop], label="default",
                     model={"type": "embedding", "host_weights": "encrypted", "epochs": 2, "batch_size": 256,
                            "embedding_dim": 3, "hidden_units": [6], "min_category_rows": 16, **(model_extra or {})},
                     host_keys={"host0": {"categorical_columns": CATS, **(host_extra or {})}})
    return load_job(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("encrypted_job")
    job = _job(tmp)
    net = LocalNetwork(["guest", "host0", "arbiter"], record=True)
    return job, run_local(job, network=net), net


def test_the_job_runs_end_to_end_and_passes_the_audit(trained):
    job, results, net = trained
    assert not job.model.label_dp_on and not job.model.early_stopping_on
    metrics = json.loads((job.workdir / "metrics.json").read_text())
    assert metrics["host_weights"] == "encrypted" and metrics["loss_history"] is None
    assert metrics["epochs_run"] == 2 and metrics["validation"] is None and metrics["label_dp"]["on"] is False
    assert 0.5 < metrics["test"]["auc"] <= 1.0
    assert results["host0"]["host_weights"] == "encrypted" and results["host0"]["weights"] > 4
    page = (job.workdir / "report.html").read_text()     # not "label-DP: off", which would read as unprotected
    assert "not needed: the hosts saw only ciphertexts" in page and 'label-DP</td><td class="t" data-key="value">off' not in page
    host_page = (job.output_dir("host0") / "report.html").read_text()     # the host's own report, likewise
    assert "not needed: this host" in host_page and ">off<" not in host_page
    assert f"{results['host0']['weights']:,} weights" in host_page and "kept as ciphertexts" in host_page
    # no training loss exists: the report's Training section says so, and shows the refit's choice of epoch
    assert "no training loss is computed" in page
    per_epoch = (metrics["guest_refit"] or {}).get("epoch_log_loss")
    assert ("refit&#x27;s validation log-loss" in page) == bool(per_epoch)
    # a validation slice for the guest's refit alone (no early stopping): the host leaves it out of training too
    refit = metrics["guest_refit"]
    assert refit["kept"] or not refit["no_validation_rows"]
    assert "plain_log_loss" in refit if refit["kept"] else "not kept: the trained sum was better" in page
    assert results["host0"]["validation_rows"] == metrics["aligned_rows"] - metrics["train"]["rows"] - \
        metrics["test"]["rows"] > 0
    part = json.loads((job.output_dir("host0") / "model.json").read_text())
    assert part["format"] == "vfl-encrypted-wide-part" and part["weights"]["frac_bits"] == 40
    assert len(part["weights"]["ciphertexts"]) == results["host0"]["weights"]
    assert len(part["weights"]["key_fingerprint"]) == 32
    assert len(part["encoding"]["vocabularies"]) == 4 + 6 + len(part["numeric_columns"])   # all 6 pairs crossed
    steps = {r.step for r in net.transcript}
    assert {"predict/enc_u", "predict/masked_sum", "predict/masked_sum_plain"} <= steps
    assert not any(s.endswith("/loss_plain") or s.endswith("enc_loss_part") for s in steps)
    for r in net.transcript:
        if r.receiver == "host0":
            assert isinstance(r.payload, (EncryptedArray, dict, np.ndarray)), r.step
            if isinstance(r.payload, np.ndarray):       # PSI's blinded points and positions only
                assert r.step.startswith("psi/"), r.step
    ok, text = audit_job(job)
    assert ok, text
    assert "label-DP: not needed, the hosts' weights stayed encrypted" in text and "label-DP: off" not in text


def test_a_plain_reading_is_refused_and_serving_needs_the_arbiter(trained):
    job, _, _ = trained
    with pytest.raises(ModelFileError) as exc:      # read as a plain part: the job file must say "encrypted"
        load_part(job.output_dir("host0") / "model.json", "host0")
    assert str(exc.value).endswith(ENCRYPTED_REFUSAL)
    from vfl.serving.roles import check_servable, serves_arbiter
    check_servable(job)                             # served, with the arbiter online (tests/test_serving_encrypted.py)
    assert serves_arbiter(job)


def test_a_host_with_encrypted_weights_that_received_a_release_fails_the_audit(tmp_path):
    """The audit rule: the same ledgers of a plain job (whose host gets its sums decrypted) fail when the job
    says its hosts' weights are encrypted."""
    job = _job(tmp_path, {"host_weights": "plain", "label_dp": "off", "early_stopping": "off",
                          "guest_refit": "off", "epochs": 1})
    run_local(job)
    assert audit_job(job)[0]
    as_encrypted = replace(job, model=replace(job.model, host_weights="encrypted"))
    ok, text = audit_job(as_encrypted)
    assert not ok and "must never get a decrypted value" in text and "plaintext aggregate" in text


@pytest.mark.parametrize("extra, match", [
    ({"type": "logistic"}, "host_weights"),
    ({"label_dp": "on"}, "not needed, no host ever gets a value decrypted"),
    ({"early_stopping": "on"}, "fixed"),
    ({"host_weights": "yes"}, "must be 'auto', 'plain' or 'encrypted'"),
    ({"host_weights": "plain", "host_l2": 5.0}, "host_l2 applies to host_weights"),
    ({"host_weights": "plain", "host_min_rows": 8}, "host_min_rows applies to host_weights"),
    ({"host_min_rows": 0}, "host_min_rows must be >= 1"),
])
def test_settings_it_cannot_honour_are_refused(tmp_path, extra, match):
    bank, shop = write_categorical_credit_demo(tmp_path / "data", n_people=300, seed=4)
    model = {"type": "embedding", "host_weights": "encrypted", **extra}
    with pytest.raises(ConfigError, match=match):
        load_job(write_job(tmp_path, bank, [shop], label="default", model=model,
                           host_keys={"host0": {"categorical_columns": CATS}}))


def test_defaults_follow_the_mode_and_plain_is_unchanged():
    enc = ModelConfig(type="embedding", host_weights="encrypted")
    assert (enc.label_dp_on, enc.early_stopping_on, enc.epochs) == (False, False, 16)
    auto = ModelConfig(type="embedding")                        # the default: encrypted hosts
    assert auto.encrypted_hosts and (auto.label_dp_on, auto.early_stopping_on, auto.epochs) == (False, False, 16)
    plain = ModelConfig(type="embedding", host_weights="plain")
    assert (plain.label_dp_on, plain.early_stopping_on, plain.epochs) == (True, True, 16)
    # the fingerprints of plain jobs stay what they were before host_weights existed
    from vfl.job.config import model_settings
    assert "host_weights" not in model_settings(plain) and "host_weights" not in model_settings(ModelConfig())
    assert model_settings(auto)["host_weights"] == "auto"
    with pytest.raises(ConfigError, match="host_weights"):
        from vfl.job.config import _check_model
        _check_model(ModelConfig(type="logistic", host_weights="encrypted"))


def test_the_wide_tables_of_a_host():
    """Every categorical column, every pair of them (or the host's crosses) and each numeric column in 10
    quantile bins from the training rows; values with fewer than min_rows training rows share row 0."""
    from vfl.io.tables import PartyTable
    from vfl.models.wide import fit_encoding
    rng = np.random.default_rng(0)
    n = 400
    cats = np.column_stack([rng.choice(["a", "b", "c", "rare"], n, p=[0.4, 0.3, 0.29, 0.01]),
                            rng.choice(["x", "y"], n), rng.choice(["p", "q", "r"], n)]).astype(object)
    t = PartyTable(np.array([str(i) for i in range(n)], dtype=object), rng.normal(size=(n, 2)), ["u", "v"],
                   categorical=cats, categorical_columns=["c1", "c2", "c3"])
    train = np.arange(n) < 300
    enc = fit_encoding(t, train, (), min_rows=10)
    names = [v.column for v in enc.vocabs]
    assert names == ["c1", "c2", "c3", "c1 x c2", "c1 x c3", "c2 x c3", "u#bin", "v#bin"]
    assert "rare" not in enc.vocabs[0].values and enc.vocabs[0].values == ["a", "b", "c"]
    assert enc.vocabs[-1].size == 11 and len(enc.edges[0]) == 9          # 10 bins, each with >= 10 rows
    codes = enc.codes(t)
    assert codes.shape == (n, 8) and codes[cats[:, 0] == "rare", 0].tolist() == [0] * int((cats[:, 0] == "rare").sum())
    tower = WideTower([v.size for v in enc.vocabs])
    assert tower.column_counts(codes[train]).sum() == 300 * 8
    given = fit_encoding(t, train, [("c1", "c3")], min_rows=10)
    assert [v.column for v in given.vocabs][3:] == ["c1 x c3", "u#bin", "v#bin"]


def test_two_encrypted_hosts_equal_the_twin(keypair):
    """Each host's weights rescaled on their own; the guest adds both hosts' [[u_h]]."""
    xg, codes, y = _data(200, seed=5)
    parts = [codes[:, :2], codes[:, 2:]]
    towers = [WideTower([7, 4]), WideTower([10])]
    model = replace(MODEL, epochs=2)
    tg = EmbeddingTower(3, [5], 2, (3,), intercept=True, wide=True)
    net = LocalNetwork(["g", "h0", "h1", "a"], timeout=120)
    hosts = {f"h{i}": EncryptedWideHost(model, guest="g", arbiter="a", seed=3, tower=t) for i, t in enumerate(towers)}
    guest = SplitGuest(model, hosts=list(hosts), arbiter="a", seed=3, tower=tg, init_seed=1)
    arbiter = SplitArbiter(model, guest="g", hosts=list(hosts))
    calls = {"g": lambda: guest.fit(net.channel("g"), xg, y), "a": lambda: arbiter.fit(net.channel("a"), keypair=keypair)}
    for i, name in enumerate(hosts):
        calls[name] = (lambda n, c: lambda: hosts[n].fit(net.channel(n), c))(name, parts[i])
    run_parties(net, calls)
    gp, hw = fit_encrypted_twin(tg, xg, towers, parts, y, model, 3, 1)
    for h, w in zip(hosts.values(), hw):
        np.testing.assert_allclose(h.weights_.decrypt(keypair[1]), w, rtol=0, atol=1e-6)
    np.testing.assert_allclose(guest.params_, gp, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ randomness of what a host and the guest get
@pytest.fixture(scope="module")
def randomness_run():
    """A training whose transcript the tests below inspect with the private key (and the guest's h values)."""
    kp = generate_keypair(512)
    hs = []
    orig = guest_mod.expansion_terms

    def spy(a, y, approximation="guest_expansion"):
        g, h, loss = orig(a, y, approximation)
        hs.append(np.asarray(h))
        return g, h, loss
    guest_mod.expansion_terms = spy
    try:
        xg, codes, y = _data()
        roles, net = _train(kp, xg, codes, y)
    finally:
        guest_mod.expansion_terms = orig
    return kp, net, codes, hs


def _msgs(net, suffix, sender, receiver):
    return [r for r in net.transcript if r.step.endswith(suffix) and r.sender == sender and r.receiver == receiver]


def test_enc_d_is_not_the_hosts_enc_u_times_a_trivial_ciphertext(randomness_run):
    """[[d]] = [[u]]^H (1 + g n) unless the guest re-randomises: then d * u^-H = 1 mod n and the host reads g."""
    (pk, _), net, _, hs = randomness_run
    n, n2 = gmpy2.mpz(pk.n), gmpy2.mpz(pk.nsquare)
    us, ds = _msgs(net, "/enc_u", "h", "g"), _msgs(net, "/enc_d", "g", "h")
    assert len(us) == len(ds) == len(hs) > 0
    for u, d, h in zip(us, ds, hs):
        H = encode_signed(h.astype(float), 24)
        for cu, cd, e in zip(u.payload.ciphertexts.tolist(), d.payload.ciphertexts.tolist(), H.tolist()):
            q = gmpy2.mpz(cd) * gmpy2.powmod(gmpy2.mpz(cu), -int(e), n2) % n2
            assert q % n not in (1, n - 1), d.step


def test_rows_with_the_same_entries_get_unlinkable_enc_u(randomness_run):
    (pk, _), net, codes, _ = randomness_run
    us = _msgs(net, "/enc_u", "h", "g")
    schedule = [rows for e in range(MODEL.epochs) for rows in batch_schedule(len(codes), MODEL.batch_size, 3, e)]
    dup = 0
    for u, rows in zip(us, schedule):
        seen = {}
        for c, key in zip(u.payload.ciphertexts.tolist(), map(tuple, codes[rows])):
            if key in seen:
                dup += 1
                assert c != seen[key], u.step
            seen[key] = c
    assert dup > 0          # the data has rows sharing all entries within a batch


def test_rescale_replies_have_fresh_nontrivial_randomness(randomness_run):
    (pk, _), net, _, _ = randomness_run
    n = gmpy2.mpz(pk.n)
    seen = set()
    for r in _msgs(net, "/rescale_enc", "a", "h"):
        for c in r.payload.ciphertexts.tolist():
            z = gmpy2.mpz(c) % n
            assert z not in (1, n - 1) and z not in seen, r.step
            seen.add(z)
