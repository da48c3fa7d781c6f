import struct

import gmpy2
import numpy as np
import pytest

from crypto import (DEFAULT_FRAC_BITS, EncryptedArray, PublicKey,
                    generate_keypair, mask, random_mask, unmask)

TOL = 1e-9


@pytest.fixture(scope="module")
def keys():
    return generate_keypair(1024)


@pytest.fixture(scope="module")
def other_keys():
    return generate_keypair(512)


def enc(pk, x, **kw):
    return EncryptedArray.encrypt(pk, np.asarray(x, dtype=float), **kw)


def test_encrypt_decrypt_shapes(keys):
    pk, sk = keys
    x = np.random.default_rng(0).normal(size=(3, 4)) * 1e3
    e = enc(pk, x)
    assert e.shape == (3, 4) and e.frac_bits == DEFAULT_FRAC_BITS and len(e) == 3
    assert np.allclose(e.decrypt(sk), x, atol=TOL)
    s = EncryptedArray.encrypt(pk, -2.5)
    assert s.shape == () and float(s.decrypt(sk)) == -2.5


@pytest.mark.parametrize("mode", ["djn", "standard"])
def test_both_modes(keys, mode):
    pk, sk = keys
    x = np.array([-1.25, 0.0, 3.5])
    assert np.allclose(enc(pk.with_mode(mode), x).decrypt(sk), x, atol=TOL)


def test_same_value_encrypts_differently(keys):
    pk, _ = keys
    a, b = enc(pk, [1.0, 1.0]), enc(pk, [1.0])
    assert a.ciphertexts[0] != a.ciphertexts[1] != b.ciphertexts[0]


def test_add_sub_neg(keys):
    pk, sk = keys
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=6), rng.normal(size=6)
    ex, ey = enc(pk, x), enc(pk, y)
    assert np.allclose((ex + ey).decrypt(sk), x + y, atol=TOL)
    assert np.allclose((ex - ey).decrypt(sk), x - y, atol=TOL)
    assert np.allclose((-ex).decrypt(sk), -x, atol=TOL)
    assert np.allclose((ex + y).decrypt(sk), x + y, atol=TOL)
    assert np.allclose((y + ex).decrypt(sk), x + y, atol=TOL)
    assert np.allclose((ex - 2.0).decrypt(sk), x - 2.0, atol=TOL)
    assert np.allclose((2.0 - ex).decrypt(sk), 2.0 - x, atol=TOL)
    # mixed scales: the lower one is rescaled
    ez = enc(pk, y, frac_bits=20)
    s = ex + ez
    assert s.frac_bits == DEFAULT_FRAC_BITS and np.allclose(s.decrypt(sk), x + y, atol=1e-6)
    # broadcasting a plaintext row over a matrix
    m = enc(pk, np.zeros((2, 3)))
    assert np.allclose((m + np.array([1.0, 2.0, 3.0])).decrypt(sk), [[1, 2, 3], [1, 2, 3]], atol=TOL)


def test_mul_and_sum(keys):
    pk, sk = keys
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    ex = enc(pk, x)
    prod = ex * w
    assert prod.frac_bits == DEFAULT_FRAC_BITS + 24
    assert np.allclose(prod.decrypt(sk), x * w, atol=1e-6)
    assert np.allclose((ex.mul(np.array([2, -3, 0, 1]))).decrypt(sk), x * [2, -3, 0, 1], atol=TOL)
    assert (ex.mul(3)).frac_bits == DEFAULT_FRAC_BITS
    assert np.allclose((-0.5 * ex).decrypt(sk), -0.5 * x, atol=1e-6)
    assert np.isclose(float(ex.sum().decrypt(sk)), x.sum(), atol=TOL)
    assert np.allclose(ex.sum(axis=0).decrypt(sk), x.sum(axis=0), atol=TOL)
    assert np.allclose(ex.sum(axis=1).decrypt(sk), x.sum(axis=1), atol=TOL)
    with pytest.raises(TypeError):
        ex * ex


def test_rmatmul_pool_path(keys):
    pk, sk = keys
    rng = np.random.default_rng(3)
    N, k = 600, 5  # >= 256 rows: split across the worker pool
    X = rng.normal(size=(N, k)) * 3  # negative entries included
    X[:, 4] = rng.integers(0, 2, size=N)  # a binary column (short exponents after stripping)
    v = rng.normal(size=N)
    ev = enc(pk, v)
    got = ev.rmatmul(X)
    assert got.shape == (k,) and got.frac_bits == DEFAULT_FRAC_BITS + 24
    # error: N * max|x| * 2^-25 from rounding X, plus 2^-41 per v element
    assert np.allclose(got.decrypt(sk), X.T @ v, atol=N * 10 * 2.0**-25)
    assert np.allclose((X.T @ ev).decrypt(sk), X.T @ v, atol=N * 10 * 2.0**-25)
    assert np.isclose(float(ev.dot(X[:, 0]).decrypt(sk)), X[:, 0] @ v, atol=N * 10 * 2.0**-25)


def test_overflow_guards(keys, other_keys):
    pk, _ = keys
    small_pk, _ = other_keys
    with pytest.raises(ValueError, match="overflow"):
        EncryptedArray.encrypt(pk, 2.0**1000)
    e = enc(small_pk, np.ones(4))
    with pytest.raises(ValueError, match="rmatmul could overflow"):
        e.rmatmul(np.ones((4, 2)), x_frac_bits=40, value_bound=2.0**470)
    with pytest.raises(ValueError, match="mul could overflow"):
        e.mul(2.0**50, frac_bits=400)


def test_wire_round_trip_and_key_binding(keys, other_keys):
    pk, sk = keys
    x = np.arange(6, dtype=float).reshape(2, 3) - 2.5
    e = enc(pk, x)
    blob = e.to_bytes()
    nlen = (pk.bits + 7) // 8
    assert blob[:4] == b"VFLE" and len(blob) == 4 + 1 + 4 + nlen + 8 + 2 * 4 + 6 * 2 * nlen
    back = EncryptedArray.from_bytes(blob, public_key=pk)
    assert back.public_key is pk and back.shape == (2, 3) and back.frac_bits == e.frac_bits
    assert np.allclose(back.decrypt(sk), x, atol=TOL)
    assert EncryptedArray.from_bytes(enc(pk, 1.5).to_bytes()).shape == ()
    with pytest.raises(ValueError, match="different key"):
        EncryptedArray.from_bytes(blob, public_key=other_keys[0])
    with pytest.raises(ValueError, match="different key"):
        e.with_key(other_keys[0])
    assert e.with_key(PublicKey(int(pk.n))).public_key.n == pk.n


def test_wire_rejects_bad_input(keys):
    pk, _ = keys
    blob = enc(pk, [1.0, 2.0]).to_bytes()
    nlen = (pk.bits + 7) // 8
    body = 4 + 1 + 4 + nlen + 8 + 4
    width = 2 * nlen
    with pytest.raises(ValueError, match="bad magic"):
        EncryptedArray.from_bytes(b"XXXX" + blob[4:])
    with pytest.raises(ValueError, match="version"):
        EncryptedArray.from_bytes(blob[:4] + b"\x02" + blob[5:])
    with pytest.raises(ValueError, match="truncated: expected"):
        EncryptedArray.from_bytes(blob[:-1])
    with pytest.raises(ValueError, match="truncated"):
        EncryptedArray.from_bytes(blob[:7])
    with pytest.raises(ValueError, match="trailing data"):
        EncryptedArray.from_bytes(blob + b"\x00")
    shape_off = 4 + 1 + 4 + nlen + 8
    with pytest.raises(ValueError, match="truncated"):  # tampered shape
        EncryptedArray.from_bytes(blob[:shape_off] + struct.pack(">I", 3) + blob[shape_off + 4:])
    with pytest.raises(ValueError, match="ciphertext 1 out of range"):
        EncryptedArray.from_bytes(blob[:body + width] + b"\xff" * width)
    with pytest.raises(ValueError, match="ciphertext 0 out of range"):
        EncryptedArray.from_bytes(blob[:body] + b"\x00" * width + blob[body + width:])
    with pytest.raises(ValueError, match="different key"):  # tampered modulus
        tampered = bytearray(blob)
        tampered[9 + nlen - 1] ^= 0x02
        EncryptedArray.from_bytes(bytes(tampered), public_key=pk)
    with pytest.raises(ValueError, match="modulus length"):
        EncryptedArray.from_bytes(blob[:5] + struct.pack(">I", 0) + blob[9:])


@pytest.mark.parametrize("factor", ["p", "q", "n"])
def test_wire_rejects_ciphertexts_sharing_a_factor_with_n(keys, factor):
    """In range [1, n^2) but not a unit mod n: no Paillier encryption gives it, so refuse it."""
    pk, sk = keys
    e = enc(pk, [1.0, 2.0, 3.0])
    f = {"p": sk.p, "q": sk.q, "n": pk.n}[factor]
    cts = e.ciphertexts.copy()
    cts[2] = gmpy2.mpz(f) * (cts[2] % (pk.n // f if factor != "n" else pk.n))
    assert 0 < cts[2] < pk.nsquare
    with pytest.raises(ValueError, match="ciphertext 2 is not a unit modulo n"):
        EncryptedArray.from_bytes(EncryptedArray(pk, cts, e.frac_bits).to_bytes(), public_key=pk)
    assert EncryptedArray.from_bytes(e.to_bytes(), public_key=pk).shape == (3,)


def test_slicing_and_raw_access(keys):
    pk, sk = keys
    x = np.arange(5, dtype=float)
    e = enc(pk, x)
    assert np.allclose(e[1:3].decrypt(sk), x[1:3])
    assert e[2].shape == () and float(e[2].decrypt(sk)) == 2.0
    assert e.raw_ciphertexts is e.ciphertexts
    raw = sk.decrypt_raw(e.raw_ciphertexts)
    assert [int(m) for m in raw] == [int(v) << DEFAULT_FRAC_BITS for v in x]
    assert np.allclose(e.add_raw([1 << DEFAULT_FRAC_BITS] * 5).decrypt(sk), x + 1)


def test_public_key_only_party(keys):
    pk, sk = keys
    public_only = PublicKey.from_dict(pk.to_dict())  # what a host has
    x = np.array([0.5, -1.5, 2.0])
    e = EncryptedArray.encrypt(public_only, x)
    r = ((e + 1.0) * 2.0 - e).sum()
    r = EncryptedArray.from_bytes(r.rerandomize().to_bytes(), public_key=public_only)
    assert not hasattr(public_only, "decrypt_raw")
    assert np.isclose(float(r.decrypt(sk)), float(((x + 1) * 2 - x).sum()), atol=1e-6)


def test_masks(keys):
    pk, sk = keys
    n = int(pk.n)
    g = enc(pk, np.array([0.25, -3.0, 7.5]))
    masked1, r1 = mask(g)
    masked2, r2 = mask(g)
    seen1, seen2 = sk.decrypt_raw(masked1.ciphertexts), sk.decrypt_raw(masked2.ciphertexts)  # arbiter's view
    assert all(a != b for a, b in zip(seen1, seen2))
    assert np.allclose(unmask(seen1, r1, g.frac_bits, n), [0.25, -3.0, 7.5], atol=TOL)
    assert np.allclose(unmask(seen2, r2, g.frac_bits, n), [0.25, -3.0, 7.5], atol=TOL)
    r = random_mask(n, (2, 3))
    assert r.shape == (2, 3) and all(0 <= int(v) < n for v in r.ravel())


def test_pool_from_concurrent_threads(keys):
    """Roles run in threads of one process and share the worker pool."""
    from concurrent.futures import ThreadPoolExecutor

    pk, sk = keys
    xs = [np.random.default_rng(i).normal(size=300) for i in range(3)]
    with ThreadPoolExecutor(3) as threads:
        encs = list(threads.map(lambda x: EncryptedArray.encrypt(pk, x), xs))
        outs = list(threads.map(lambda e: e.decrypt(sk), encs))
    for x, out in zip(xs, outs):
        assert np.allclose(out, x, atol=TOL)


def test_object_array_keeps_the_integers_themselves_and_the_shape():
    import gmpy2
    from crypto.arrays import object_array
    vals = [gmpy2.mpz(3) ** 700, gmpy2.mpz(5), 7, gmpy2.mpz(2) ** 4000, 11, 13]
    arr = object_array(vals, (2, 3))
    assert arr.dtype == object and arr.shape == (2, 3)
    assert all(a is v for a, v in zip(arr.ravel().tolist(), vals))      # references, not conversions
    assert object_array(iter(vals)).shape == (6,) and object_array([]).shape == (0,)
