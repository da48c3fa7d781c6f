import json
import os
import stat

import gmpy2
import numpy as np
import pytest

from crypto import PrivateKey, PublicKey, generate_keypair
from crypto.multiexp import batch_invert, multiexp, multiexp_parallel


@pytest.fixture(scope="module")
def keys():
    return generate_keypair(512)


def test_key_attributes(keys):
    pk, sk = keys
    assert pk.bits == 512 and pk.nsquare == pk.n * pk.n
    assert sk.p * sk.q == pk.n and sk.public_key == pk
    assert len(pk.fingerprint()) == 16
    assert PublicKey(int(pk.n)) == pk and hash(PublicKey(int(pk.n))) == hash(pk)
    assert "p=" not in repr(sk) and str(int(sk.p)) not in repr(sk)


@pytest.mark.parametrize("bits, count", [(256, 20), (512, 10), (1024, 4), (2048, 2)])
def test_generated_keys_are_admissible_for_djn(bits, count):
    """p = q = 3 mod 4, gcd(p - 1, q - 1) = 2, equal-size primes, n of exactly ``bits`` bits."""
    moduli = set()
    for _ in range(count):
        pk, sk = generate_keypair(bits)
        p, q = int(sk.p), int(sk.q)
        assert gmpy2.is_prime(p, 50) and gmpy2.is_prime(q, 50) and p != q
        assert p % 4 == 3 and q % 4 == 3
        assert gmpy2.gcd(p - 1, q - 1) == 2
        assert p.bit_length() == q.bit_length() == bits // 2
        assert pk.n == p * q and pk.bits == int(pk.n).bit_length() == bits
        moduli.add(int(pk.n))
    assert len(moduli) == count


def test_key_generation_refuses_odd_sizes():
    with pytest.raises(ValueError, match="even number of bits"):
        generate_keypair(513)


@pytest.mark.parametrize("mode", ["djn", "standard"])
def test_raw_round_trip_both_modes(keys, mode):
    pk, sk = keys
    n = int(pk.n)
    plain = np.array([0, 1, -1, 2**100, n - 1, n // 2], dtype=object)
    ct = pk.encrypt_raw(plain, mode=mode)
    assert ct.shape == plain.shape and all(0 < c < pk.nsquare for c in ct)
    assert [int(m) for m in sk.decrypt_raw(ct)] == [int(m) % n for m in plain]
    assert [int(m) for m in sk.decrypt_raw(pk.with_mode(mode).encrypt_raw(plain))] == [int(m) % n for m in plain]


def test_encryption_is_randomised(keys):
    pk, _ = keys
    a, b = pk.encrypt_raw([5, 5]), pk.encrypt_raw([5])
    assert a[0] != a[1] and a[0] != b[0]


def test_pool_path_matches(keys):
    pk, sk = keys
    plain = np.arange(-300, 300, dtype=object)  # >= 256 elements: goes to the worker pool
    assert [int(m) for m in sk.decrypt_raw(pk.encrypt_raw(plain))] == [int(m) % int(pk.n) for m in plain]


def test_decrypt_rejects_out_of_range(keys):
    _, sk = keys
    with pytest.raises(ValueError, match="out of range"):
        sk.decrypt_raw([0])


def test_public_key_save_load(keys, tmp_path):
    pk, _ = keys
    path = tmp_path / "pub.json"
    pk.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "vfl-paillier-public" and data["version"] == 1 and int(data["n"], 16) == pk.n
    assert PublicKey.load(path) == pk
    assert PublicKey.from_dict(pk.to_dict()) == pk
    with pytest.raises(ValueError, match="version"):
        PublicKey.from_dict({**pk.to_dict(), "version": 2})
    with pytest.raises(ValueError, match="format"):
        PublicKey.from_dict({**pk.to_dict(), "format": "other"})
    with pytest.raises(ValueError, match="hex"):
        PublicKey.from_dict({**pk.to_dict(), "n": "0x12"})


def test_private_key_save_load(keys, tmp_path):
    pk, sk = keys
    path = tmp_path / "priv.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    sk.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = PrivateKey.load(path)
    assert loaded.public_key == pk
    assert int(loaded.decrypt_raw(pk.encrypt_raw([42]))[0]) == 42
    with pytest.raises(ValueError, match="format"):
        PublicKey.load(path)
    with pytest.raises(ValueError):
        PrivateKey(sk.p, sk.q, PublicKey(int(pk.n) + 2))


def _naive(bases, E, mod):
    out = []
    for j in range(E.shape[1]):
        acc = gmpy2.mpz(1)
        for i in range(E.shape[0]):
            acc = acc * gmpy2.powmod(bases[i], int(E[i, j]), mod) % mod
        out.append(acc)
    return out


@pytest.mark.parametrize("N,k,scale", [(60, 4, 2**30), (12, 1, 5), (30, 3, 1), (1, 1, 7)])
def test_multiexp_matches_powmod(keys, N, k, scale):
    pk, _ = keys
    rng = np.random.default_rng(N)
    bases = list(pk.encrypt_raw(np.arange(N, dtype=object)))
    E = rng.integers(-scale, scale + 1, size=(N, k))
    E[rng.random((N, k)) < 0.2] = 0
    for variant in (E, np.abs(E), E * 2**24, E.astype(object) * 2**70):  # signs, trailing zeros, > int64
        assert multiexp(bases, variant, pk.nsquare) == _naive(bases, variant, pk.nsquare)
    assert multiexp(bases, np.zeros((N, 2), dtype=np.int64), pk.nsquare) == [1, 1]


@pytest.mark.parametrize("fn", [multiexp, multiexp_parallel])
def test_multiexp_refuses_fixed_width_exponents_it_would_get_wrong(keys, fn):
    """np.abs(-2**63) is -2**63: an int64 exponent of -2**63 used to give a wrong product silently.
    Fixed-width exponents must satisfy |e| < 2**62 (as in grouped_multiexp); Python ints are exact."""
    pk, _ = keys
    bases = list(pk.encrypt_raw([5, 7]))
    for bad in (np.iinfo(np.int64).min, -(2**62), 2**62, np.iinfo(np.int64).max):
        with pytest.raises(ValueError, match=r"\|e\| < 2\*\*62"):
            fn(bases, np.array([[bad], [3]], dtype=np.int64), pk.nsquare)
    with pytest.raises(ValueError, match=r"\|e\| < 2\*\*62"):
        fn(bases, np.array([2**63, 3], dtype=np.uint64), pk.nsquare)
    for ok in (np.array([[-(2**63)], [3]], dtype=object),                       # as Python ints: exact
               np.array([[np.iinfo(np.int32).min], [3]], dtype=np.int32),       # narrower types: widened first
               np.array([[np.iinfo(np.int8).min, 1], [-3, np.iinfo(np.int8).min]], dtype=np.int8),
               np.array([[-(2**62) + 1], [2**62 - 1]], dtype=np.int64)):        # the largest accepted
        assert fn(bases, ok, pk.nsquare) == _naive(bases, ok, pk.nsquare)


def test_multiexp_parallel_and_batch_invert(keys):
    pk, _ = keys
    bases = list(pk.encrypt_raw(np.arange(300, dtype=object)))
    E = np.random.default_rng(1).integers(-2**20, 2**20, size=(300, 3))
    assert multiexp_parallel(bases, E, pk.nsquare) == multiexp(bases, E, pk.nsquare)
    inv = batch_invert(bases[:5], pk.nsquare)
    assert all(a * b % pk.nsquare == 1 for a, b in zip(bases, inv))


def test_precomputed_obfuscators_encrypt_correctly_and_are_used_once():
    """Encryption randomness computed ahead in the background decrypts right, is never reused,
    and a request larger than the reserve is completed with fresh values."""
    import time as _time
    pk, sk = generate_keypair(512)
    pk.precompute(300)
    try:
        reserve = pk._reserve
        _time.sleep(0.2)
        assert reserve.computed == 0                 # it fills only while the party is idle
        with pk.idle():
            deadline = _time.monotonic() + 30
            while reserve.computed < 300 and _time.monotonic() < deadline:
                _time.sleep(0.01)
        assert reserve.computed == 300
        plains = list(range(-250, 250))                      # 500 > the 300 held
        c = pk.encrypt_raw(plains)
        assert reserve.used == 300
        n = int(pk.n)
        assert [int(v) for v in sk.decrypt_raw(c)] == [m % n for m in plains]
        zeros = pk.encrypt_raw([0] * 400)
        # every ciphertext of zero is its obfuscator: all distinct, none equal to an earlier one
        assert len({int(z) for z in zeros}) == 400
        assert not {int(z) for z in zeros} & {int(v) for v in c}
    finally:
        pk.stop_precompute()
    assert pk._reserve is None and not reserve._thread.is_alive()
    assert [int(v) for v in sk.decrypt_raw(pk.encrypt_raw([5, -5]))] == [5, n - 5]
