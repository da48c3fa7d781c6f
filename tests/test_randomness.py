"""Encryption randomness from the key holder: CRT-made encryptions of zero, and the arbiter's supply."""
from __future__ import annotations

import gmpy2
import numpy as np
import pytest

from crypto import EncryptedArray, generate_keypair
from crypto import paillier
from crypto.encoding import DEFAULT_FRAC_BITS, encode_signed
from tests.test_hetero_lr import _data, _train, _weights
from vfl.protocol.channel import LocalNetwork
from vfl.job.config import ModelConfig
from vfl.models import SplitArbiter, SplitGuest, SplitHost
from vfl.models.reference import fit_reference
from tests.conftest import run_parties


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


@pytest.mark.parametrize("mode", ["djn", "standard"])
@pytest.mark.parametrize("count", [5, 700])          # 700: on the worker pool
def test_private_key_zeros_decrypt_to_zero_and_are_all_different(mode, count):
    pk, sk = generate_keypair(512, mode=mode)
    z = sk.zeros(count)
    assert z.shape == (count,)
    assert all(int(v) == 0 for v in sk.decrypt_raw(z))
    assert len({int(v) for v in z}) == count
    assert all(0 < v < pk.nsquare and gmpy2.gcd(v, pk.n) == 1 for v in z)


def test_crt_zeros_are_the_public_key_djn_values_for_the_same_exponents(keypair):
    """The key holder's CRT path computes hs ** a mod n^2, exactly what a public-key DJN
    encryption of 0 computes for the same exponent a: same distribution, no new assumption."""
    pk, sk = keypair
    hs = int(pk._djn_base())
    digits = paillier._random_digits(pk.n, 50)
    public = paillier._fixed_base_powers(paillier._djn_table(pk.n, hs), digits, pk.nsquare)
    table_p, table_q, q2_inv = paillier._crt_djn_tables(sk.p, sk.q, hs)
    p2, q2 = sk.p ** 2, sk.q ** 2
    rp = paillier._fixed_base_powers(table_p, digits, p2)
    rq = paillier._fixed_base_powers(table_q, digits, q2)
    crt = [b + q2 * ((a - b) * q2_inv % p2) for a, b in zip(rp, rq)]
    assert crt == public
    # and the digits are those of a bits/2-bit exponent: a = sum d_i 2^(10 i) < 2^(bits/2)
    a = [sum(int(d) << (10 * i) for i, d in enumerate(col)) for col in digits.T]
    assert max(a).bit_length() <= pk.bits // 2
    assert [gmpy2.powmod(hs, e, pk.nsquare) for e in a[:5]] == public[:5]


def test_encrypt_and_rerandomize_with_given_zeros(keypair):
    pk, sk = keypair
    x = np.linspace(-5, 5, 40)
    zeros = EncryptedArray(pk, sk.zeros(40), 0)
    enc = EncryptedArray.encrypt(pk, x, zeros=zeros)
    np.testing.assert_allclose(enc.decrypt(sk), x, atol=1e-9)
    # the ciphertext is (1 + m n) * zero: the zero given, not one made here
    m = [int(v) % int(pk.n) for v in encode_signed(x, DEFAULT_FRAC_BITS)]
    assert [int(c) for c in enc.ciphertexts] == [int((1 + mi * pk.n) * z % pk.nsquare)
                                                 for mi, z in zip(m, zeros.ciphertexts)]
    again = enc.rerandomize(EncryptedArray(pk, sk.zeros(40), 0))
    np.testing.assert_allclose(again.decrypt(sk), x, atol=1e-9)
    assert not set(map(int, again.ciphertexts)) & set(map(int, enc.ciphertexts))
    with pytest.raises(ValueError, match="40 ciphertexts to re-randomise but 39"):
        enc.rerandomize(EncryptedArray(pk, sk.zeros(39), 0))
    with pytest.raises(ValueError, match="39 values to encrypt but 40"):
        EncryptedArray.encrypt(pk, x[:39], zeros=zeros)
    other, _ = generate_keypair(512)
    with pytest.raises(ValueError, match="different key"):
        EncryptedArray.encrypt(other, x, zeros=zeros)


def test_arbiter_supplies_every_encryption_and_rerandomisation_of_a_batch(keypair):
    """With randomness = "arbiter" (the default) the host's [[u_h]] and the guest's [[d]] carry
    exactly the arbiter's zeros, each used once, one per row, never the same for two parties."""
    pk, sk = keypair
    X, y, Xg, hosts = _data(n=150, k_hosts=(2, 2), seed=2)
    model = ModelConfig(epochs=2, batch_size=60, optimizer="adam", tolerance=0.0, key_bits=512,
                        allow_short_keys=True)
    assert model.randomness == "arbiter"
    roles, net = _train(model, keypair, Xg, y, hosts, record=True)
    zeros = {(r.receiver, r.step.rsplit("/", 1)[0]): r.payload for r in net.transcript
             if r.step.endswith("/enc_zeros")}
    # 2 epochs x 3 batches (60, 60, 30) x 3 parties (the guest and two hosts)
    assert len(zeros) == 18
    assert sorted(len(z) for z in zeros.values()) == [30] * 6 + [60] * 12
    every = [int(c) for z in zeros.values() for c in z.ciphertexts]
    assert len(set(every)) == len(every), "an encryption of zero was handed out twice"
    assert all(v == 0 for z in zeros.values() for v in sk.decrypt_raw(z.with_key(pk).ciphertexts))
    n, n2 = int(pk.n), int(pk.nsquare)
    for r in net.transcript:
        name = r.step.rsplit("/", 1)
        if name[1] == "enc_u":          # a host's (1 + u n) * Z: strip the known plaintext, find Z
            z = zeros[(r.sender, name[0])]
            plain = sk.decrypt_raw(r.payload.with_key(pk).ciphertexts)
            assert [int(c) * int(gmpy2.invert(1 + int(m) * n, n2)) % n2 for c, m in
                    zip(r.payload.ciphertexts, plain)] == [int(c) for c in z.ciphertexts]
        if name[1] == "enc_d" and r.receiver == "h0":   # the guest's [[d]] = result * Z
            assert r.payload.size == zeros[("g", name[0])].size
    # and training is the same as with every party making its own randomness, and as the twin
    local, _ = _train(ModelConfig(**{**model.__dict__, "randomness": "local"}), keypair, Xg, y, hosts)
    w_ref, _ = fit_reference(X, y, model, seed=3, n_guest=3)
    np.testing.assert_allclose(_weights(roles, 2), w_ref, atol=1e-6)
    np.testing.assert_allclose(_weights(local, 2), w_ref, atol=1e-6)
    assert not any(r.step.endswith("enc_zeros") for r in _train(
        ModelConfig(**{**model.__dict__, "randomness": "local", "epochs": 1}), keypair, Xg, y, hosts,
        record=True)[1].transcript)


class _ShortArbiter(SplitArbiter):
    """Hands out one encryption of zero too few."""

    def fit(self, channel, keypair=None, checkpoint=None):
        from vfl.models import randomness
        real = randomness.ZeroSupply.send

        def short(supply, ch, epoch, b):
            for party in supply.parties:
                zeros = supply.sk.zeros(supply.rows[b] - 1)
                ch.send(party, f"{supply.pre}/e{epoch}/b{b}/enc_zeros", EncryptedArray(supply.sk.public_key, zeros, 0))
        randomness.ZeroSupply.send = short
        try:
            return super().fit(channel, keypair, checkpoint)
        finally:
            randomness.ZeroSupply.send = real


def test_parties_refuse_a_wrong_number_of_zeros(keypair):
    X, y, Xg, hosts = _data(n=80)
    model = ModelConfig(epochs=1, batch_size=80, key_bits=512, allow_short_keys=True)
    net = LocalNetwork(["g", "h0", "a"], timeout=20)
    roles = {"g": SplitGuest(model, hosts=["h0"], arbiter="a", seed=1), "a": _ShortArbiter(model, guest="g", hosts=["h0"]),
             "h0": SplitHost(model, guest="g", arbiter="a", seed=1)}
    with pytest.raises(Exception, match="arbiter's encryptions of zero: expected shape \\(80,\\)"):
        run_parties(net, {"g": lambda: roles["g"].fit(net.channel("g"), Xg, y),
                          "a": lambda: roles["a"].fit(net.channel("a"), keypair=keypair),
                          "h0": lambda: roles["h0"].fit(net.channel("h0"), hosts[0])})


def test_the_arbiter_stops_when_the_parties_disagree_on_who_makes_the_randomness(keypair):
    X, y, Xg, hosts = _data(n=80)
    ours = ModelConfig(epochs=1, batch_size=80, key_bits=512, allow_short_keys=True)
    theirs = ModelConfig(**{**ours.__dict__, "randomness": "local"})
    net = LocalNetwork(["g", "h0", "a"], timeout=20)
    roles = {"g": SplitGuest(ours, hosts=["h0"], arbiter="a", seed=1), "a": SplitArbiter(theirs, guest="g", hosts=["h0"]),
             "h0": SplitHost(ours, guest="g", arbiter="a", seed=1)}
    with pytest.raises(ValueError, match="g's job file says \\[model\\] randomness = 'arbiter', the arbiter's says "
                                         "'local'"):
        run_parties(net, {"g": lambda: roles["g"].fit(net.channel("g"), Xg, y),
                          "a": lambda: roles["a"].fit(net.channel("a"), keypair=keypair),
                          "h0": lambda: roles["h0"].fit(net.channel("h0"), hosts[0])})
