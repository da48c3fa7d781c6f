"""The encrypted split LR must compute exactly what its plaintext twin computes."""
from __future__ import annotations


import numpy as np
import pytest

from crypto import EncryptedArray, generate_keypair
from tests.conftest import run_parties
from vfl.protocol.channel import LocalNetwork
from vfl.job.config import ModelConfig
from vfl.models import SplitArbiter, SplitGuest, SplitHost
from vfl.models.reference import approx_gradient, fit_reference
from vfl.protocol.messages import BigInts


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


def _data(n=300, k_guest=3, k_hosts=(4,), seed=1):
    rng = np.random.default_rng(seed)
    k = k_guest + sum(k_hosts)
    X = rng.normal(size=(n, k))
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ rng.normal(size=k))))).astype(float)
    parts, start = [], k_guest
    for m in k_hosts:
        parts.append(X[:, start:start + m])
        start += m
    return X, y, X[:, :k_guest], parts


def _train(model, keypair, Xg, y, host_parts, seed=3, record=False):
    hosts = [f"h{i}" for i in range(len(host_parts))]
    net = LocalNetwork(["g", *hosts, "a"], timeout=60, record=record)
    roles = {"g": SplitGuest(model, hosts=hosts, arbiter="a", seed=seed),
             "a": SplitArbiter(model, guest="g", hosts=hosts)}
    for i, h in enumerate(hosts):
        roles[h] = SplitHost(model, guest="g", arbiter="a", seed=seed)
    calls = {"g": lambda: roles["g"].fit(net.channel("g"), Xg, y),
             "a": lambda: roles["a"].fit(net.channel("a"), keypair=keypair)}
    for h, Xh in zip(hosts, host_parts):
        calls[h] = (lambda h=h, Xh=Xh: roles[h].fit(net.channel(h), Xh))
    run_parties(net, calls)
    return roles, net


def _weights(roles, n_hosts):
    g = roles["g"]
    return np.concatenate([g.coef_, *[roles[f"h{i}"].coef_ for i in range(n_hosts)], [g.intercept_]])


def test_sgd_steps_follow_the_plaintext_gradient(keypair):
    X, y, Xg, hosts = _data()
    model = ModelConfig(epochs=2, batch_size=len(X), learning_rate=1.0, optimizer="sgd", key_bits=512,
                        allow_short_keys=True, tolerance=0.0)
    roles, _ = _train(model, keypair, Xg, y, hosts)
    # Two full-batch SGD steps with lr=1: w2 = -g(0) - g(-g(0)). The second gradient is taken at
    # non-zero host weights, so the encrypted h * [[U_H]] term is exercised.
    w1 = -approx_gradient(X, y, np.zeros(X.shape[1] + 1), 3, 0.0)
    w2 = w1 - approx_gradient(X, y, w1, 3, 0.0)
    np.testing.assert_allclose(_weights(roles, 1), w2, atol=1e-6)


def test_weights_and_losses_match_plaintext_reference_two_hosts(keypair):
    X, y, Xg, hosts = _data(n=260, k_guest=2, k_hosts=(3, 2), seed=5)
    model = ModelConfig(epochs=3, batch_size=100, learning_rate=0.05, optimizer="adam", l2=0.01,
                        tolerance=0.0, key_bits=512, allow_short_keys=True)
    roles, _ = _train(model, keypair, Xg, y, hosts, seed=11)
    w_ref, loss_ref = fit_reference(X, y, model, seed=11, n_guest=2)
    np.testing.assert_allclose(_weights(roles, 2), w_ref, atol=1e-6)
    np.testing.assert_allclose(roles["g"].loss_history_, loss_ref, atol=1e-6)    # the arbiter never sees it
    assert roles["a"].epochs_run_ == len(loss_ref)


def test_early_stopping_agrees_with_reference(keypair):
    X, y, Xg, hosts = _data(n=200, seed=8)
    model = ModelConfig(epochs=30, batch_size=200, learning_rate=2.0, optimizer="sgd", tolerance=1e-3,
                        key_bits=512, allow_short_keys=True)
    roles, _ = _train(model, keypair, Xg, y, hosts)
    _, loss_ref = fit_reference(X, y, model, seed=3, n_guest=3)
    assert 1 < len(loss_ref) < 30, "the test needs a run that stops early"
    assert roles["a"].epochs_run_ == len(roles["g"].loss_history_) == len(loss_ref)
    assert roles["h0"].epochs_run_ == len(loss_ref)


def test_arbiter_sees_only_fresh_masks_and_hosts_see_only_ciphertext(keypair):
    X, y, Xg, hosts = _data(n=120)
    model = ModelConfig(epochs=1, batch_size=120, optimizer="sgd", key_bits=512, allow_short_keys=True)
    _, net1 = _train(model, keypair, Xg, y, hosts, record=True)
    _, net2 = _train(model, keypair, Xg, y, hosts, record=True)
    pk, sk = keypair
    seen = []
    for net in (net1, net2):
        for rec in net.transcript:
            if rec.receiver == "a" and rec.step.endswith("masked_grad"):
                seen.append(tuple(sk.decrypt_raw(rec.payload.with_key(pk).ciphertexts)))
    assert len(seen) == 4   # guest and host, twice, on identical inputs
    assert len(set(seen)) == 4, "the arbiter decrypted the same masked vector twice"
    for rec in net1.transcript:
        if rec.receiver == "h0":
            assert isinstance(rec.payload, (EncryptedArray, dict, BigInts)), rec.step
            if isinstance(rec.payload, dict):
                # saved_epoch: the epoch of the guest's checkpoint (a count, for resuming alike)
                assert set(rec.payload) <= {"n", "stop", "epoch", "saved_epoch", "format", "version"}, rec.payload
        if rec.receiver == "a":
            assert isinstance(rec.payload, (EncryptedArray, dict)), rec.step


def test_host_cannot_strip_the_residual_down_to_labels(keypair):
    """[[d]] = [[u_h]]^h (1 + g n): without re-randomisation a host that kept its own
    [[u_h]] could divide it out and read g = sigmoid(a) - y, i.e. the labels."""
    import gmpy2
    X, y, Xg, hosts = _data(n=64)
    model = ModelConfig(epochs=1, batch_size=64, optimizer="sgd", key_bits=512, allow_short_keys=True)
    _, net = _train(model, keypair, Xg, y, hosts, record=True)
    pk = keypair[0]
    sent = next(r.payload for r in net.transcript if r.step.endswith("enc_u"))
    got = next(r.payload for r in net.transcript if r.step.endswith("enc_d"))
    h_enc = 1 << 22        # epoch 0 starts at w = 0: a = 0, h = 0.25 at 24 fractional bits
    stripped = [int(d * gmpy2.invert(gmpy2.powmod(c, h_enc, pk.nsquare), pk.nsquare) % pk.nsquare)
                for c, d in zip(sent.ciphertexts, got.ciphertexts)]
    assert sum(v % int(pk.n) == 1 for v in stripped) == 0


def test_wrong_key_ciphertext_is_refused(keypair):
    other_pk, _ = generate_keypair(512)
    enc = EncryptedArray.encrypt(other_pk, np.ones(3))
    from vfl.models.common import expect_encrypted
    with pytest.raises(ValueError, match="key"):
        expect_encrypted(enc, keypair[0], (3,), "scores")
    with pytest.raises(ValueError, match="shape"):
        expect_encrypted(EncryptedArray.encrypt(keypair[0], np.ones(2)), keypair[0], (3,), "scores")


def test_ciphertext_at_unexpected_precision_is_refused(keypair):
    from vfl.models.common import D_FRAC_BITS, LOSS_FRAC_BITS, LOSS_PART_FRAC_BITS, U_FRAC_BITS, expect_encrypted
    assert (U_FRAC_BITS, D_FRAC_BITS, LOSS_PART_FRAC_BITS, LOSS_FRAC_BITS) == (40, 64, 88, 89)
    pk = keypair[0]
    enc = EncryptedArray.encrypt(pk, np.ones(3))            # 40 fractional bits
    assert expect_encrypted(enc, pk, (3,), "scores", U_FRAC_BITS).frac_bits == 40
    with pytest.raises(ValueError, match="residual: expected 64 fractional bits, got 40"):
        expect_encrypted(enc, pk, (3,), "residual", D_FRAC_BITS)


def test_received_messages_carry_the_checked_precisions(keypair):
    """What the roles send is what the receivers check (a change on one side must not go unnoticed)."""
    from vfl.models.common import D_FRAC_BITS, LOSS_FRAC_BITS, LOSS_PART_FRAC_BITS, U_FRAC_BITS
    X, y, Xg, hosts = _data(n=64)
    model = ModelConfig(epochs=1, batch_size=64, optimizer="sgd", key_bits=512, allow_short_keys=True)
    _, net = _train(model, keypair, Xg, y, hosts, record=True)
    want = {"enc_u": U_FRAC_BITS, "enc_d": D_FRAC_BITS, "enc_loss_part": LOSS_PART_FRAC_BITS,
            "enc_loss": LOSS_FRAC_BITS}
    seen = {r.step.rsplit("/", 1)[1]: r.payload.frac_bits for r in net.transcript
            if r.step.rsplit("/", 1)[1] in want}
    assert seen == want


@pytest.mark.parametrize("key_bits, allow, message", [
    (1024, True, "public key has a 512-bit modulus but the job says key_bits = 1024"),
    (512, False, "public key has a 512-bit modulus, below 2048, and the job does not set allow_short_keys"),
])
def test_guest_and_hosts_refuse_a_public_key_the_job_did_not_agree_to(keypair, key_bits, allow, message):
    X, y, Xg, hosts = _data(n=64)
    model = ModelConfig(epochs=1, batch_size=64, optimizer="sgd", key_bits=key_bits, allow_short_keys=allow)
    with pytest.raises(ValueError, match=message):
        _train(model, keypair, Xg, y, hosts)
    from vfl.models.common import check_public_key      # the check guest and hosts both apply
    with pytest.raises(ValueError, match=message):
        check_public_key(keypair[0], model)


def test_standard_paillier_obfuscation_trains_the_same_model(keypair):
    X, y, Xg, hosts = _data(n=150, seed=4)
    model = ModelConfig(epochs=2, batch_size=75, optimizer="adam", tolerance=0.0, key_bits=512, allow_short_keys=True,
                        encryption="standard")
    roles, _ = _train(model, keypair, Xg, y, hosts)
    w_ref, _ = fit_reference(X, y, model, seed=3, n_guest=3)
    np.testing.assert_allclose(_weights(roles, 1), w_ref, atol=1e-6)


def test_taylor_option_follows_hardys_residual(keypair):
    """approximation = "taylor": d = 0.25 (u_g + u_h) - 0.5 y' with y' in {-1, 1}, as in FATE."""
    X, y, Xg, hosts = _data(n=200, seed=12)
    model = ModelConfig(epochs=2, batch_size=200, learning_rate=1.0, optimizer="sgd", key_bits=512,
                        allow_short_keys=True, tolerance=0.0, approximation="taylor")
    roles, _ = _train(model, keypair, Xg, y, hosts)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    w = np.zeros(Xa.shape[1])
    for _ in range(2):
        w = w - Xa.T @ (0.25 * (Xa @ w) - 0.5 * (2 * y - 1)) / len(X)
    np.testing.assert_allclose(_weights(roles, 1), w, atol=1e-6)


def test_small_batches_against_many_columns_are_warned_about(caplog):
    from vfl.models.common import warn_if_small_batches
    with caplog.at_level("WARNING", logger="vfl.lr"):
        warn_if_small_batches(1000, 4096, 23, "bank")
        assert not caplog.records
        warn_if_small_batches(1000, 100, 23, "shop")
    assert "shop: batches of 100 rows against 23 columns" in caplog.text


def test_label_dp_for_lr_hosts_is_opt_in_and_noises_only_the_hosts_releases(keypair):
    """label_dp = "on" gives LR hosts the embedding model's Gaussian noise; the default stays exact."""
    from vfl.models.reference import fit_twin
    from vfl.models.towers import LinearTower, TowerInput
    X, y, Xg, hosts = _data(n=200, seed=9)
    exact = ModelConfig(epochs=1, batch_size=100, optimizer="sgd", learning_rate=0.5, key_bits=512, tolerance=0.0,
                        allow_short_keys=True)
    assert not exact.label_dp_on
    noisy = ModelConfig(**{**exact.__dict__, "label_dp": "on", "dp_epsilon": 1.0})
    runs = [_train(noisy, keypair, Xg, y, hosts)[0] for _ in range(2)]
    # The host's weights carry fresh noise each run; a noise-free twin with the same clipping differs too.
    twin, _ = fit_twin([LinearTower(3, intercept=True), LinearTower(4)], [TowerInput(Xg), TowerInput(hosts[0])], y, noisy, seed=3,
                       init_seeds=[0, 0])
    assert np.abs(runs[0]["h0"].coef_ - runs[1]["h0"].coef_).max() > 1e-3
    assert np.abs(runs[0]["h0"].coef_ - twin[1]).max() > 1e-3
    # Without label-DP the same job is exact: equal to its twin.
    roles, _ = _train(exact, keypair, Xg, y, hosts)
    twin, _ = fit_twin([LinearTower(3, intercept=True), LinearTower(4)], [TowerInput(Xg), TowerInput(hosts[0])], y, exact, seed=3,
                       init_seeds=[0, 0])
    np.testing.assert_allclose(roles["h0"].coef_, twin[1], atol=1e-6)
    np.testing.assert_allclose(roles["g"].params_, twin[0], atol=1e-6)


class _Declaring:
    """A host's channel that declares ``values`` parameters to the arbiter, whatever the host has."""

    def __init__(self, channel, values: int) -> None:
        self.channel, self.values = channel, values

    def send(self, peer, step, payload):
        if step.endswith("/values"):
            payload = {**payload, "values": self.values}
        self.channel.send(peer, step, payload)

    def __getattr__(self, name):
        return getattr(self.channel, name)


def test_the_arbiter_decrypts_no_more_packed_ciphertexts_than_the_declared_count_needs(keypair):
    """Section 2, per-batch table: the arbiter never decrypts more packed ciphertexts for a party in one
    batch than its declared parameter count needs. A host that declares 1 value and sends the packed
    ciphertexts of 4 is refused, and gets nothing decrypted back."""
    from crypto.packing import packed_count
    from vfl.models.arbiter import RELEASE_FRAC_BITS
    X, y, Xg, hosts = _data(n=64)          # the host has 4 columns: 2 packed ciphertexts at 512 bits
    model = ModelConfig(epochs=1, batch_size=64, optimizer="sgd", key_bits=512, allow_short_keys=True)
    net = LocalNetwork(["g", "h0", "a"], timeout=60, record=True)
    roles = {"g": SplitGuest(model, hosts=["h0"], arbiter="a", seed=3),
             "h0": SplitHost(model, guest="g", arbiter="a", seed=3),
             "a": SplitArbiter(model, guest="g", hosts=["h0"])}
    with pytest.raises(ValueError, match=r"h0: lr/e0/b0/masked_grad has 2 packed values at \d+ fractional bits; "
                                         r"expected at most 1 at \d+"):
        run_parties(net, {"g": lambda: roles["g"].fit(net.channel("g"), Xg, y),
                          "h0": lambda: roles["h0"].fit(_Declaring(net.channel("h0"), 1), hosts[0]),
                          "a": lambda: roles["a"].fit(net.channel("a"), keypair=keypair)})
    (sent,) = [r.payload for r in net.transcript if r.sender == "h0" and r.step.endswith("masked_grad")]
    assert len(sent) == 2 > packed_count(1, 512) and sent.frac_bits == RELEASE_FRAC_BITS   # only the count is off
    assert not [r.step for r in net.transcript if r.receiver == "h0" and r.step.endswith("masked_grad_plain")]
