"""Checks from the crypto review: trivial encryption randomness, non-unit decryption, packed-slot
bounds, addition headroom, the secure sum's range and the label-DP noise's low bits."""
from __future__ import annotations

import gmpy2
import numpy as np
import pytest

from crypto import EncryptedArray, generate_keypair, mask
from crypto.encoding import decode_signed
from crypto.packing import SLOT_BITS, pack, slots_per_ciphertext, unpack
from crypto.secure_sum import LIMIT, SumKey, host_limit, reveal_sum
from vfl.job.config import ModelConfig
from vfl.models.arbiter import RELEASE_FRAC_BITS, SplitArbiter, _dither
from vfl.models.randomness import receive_zeros
from vfl.models.timing import Stopwatch


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


# ---------------------------------------------------------------- C1: zeros of trivial randomness

def _trivial_zeros(pk, rows):
    n = int(pk.n)
    return {"identity": [1] * rows, "1 + k n": [1 + (7 + i) * n for i in range(rows)]}


def refused_everywhere(pk, x, d, cts) -> None:
    """Zeros ``cts`` of trivial randomness are refused for encryption, re-randomisation and raw encryption."""
    zeros = EncryptedArray(pk, np.array([gmpy2.mpz(c) for c in cts], dtype=object), 0)
    with pytest.raises(ValueError, match="trivial randomness"):
        EncryptedArray.encrypt(pk, x, zeros=zeros)
    with pytest.raises(ValueError, match="trivial randomness"):
        d.rerandomize(zeros)
    with pytest.raises(ValueError, match="trivial randomness"):
        pk.encrypt_raw(list(range(1, len(cts) + 1)), zeros=zeros.ciphertexts)


def test_zeros_of_trivial_randomness_are_refused_for_encryption_and_rerandomisation(keypair):
    """z = 1 (mod n) has randomness 1: Enc(u) = 1 + u n would be readable by anyone, and a
    re-randomisation with it a no-op. A zero given twice links two ciphertexts."""
    pk, sk = keypair
    x = np.array([0.25, -1.5, 3.0, 0.125])
    d = EncryptedArray.encrypt(pk, x)
    for name, cts in _trivial_zeros(pk, 4).items():
        refused_everywhere(pk, x, d, cts)
    z = sk.zeros(3)
    n2 = int(pk.n) ** 2
    same_r = int(z[1]) * (1 + int(pk.n)) % n2          # another value, the same randomness: z(1 + n) = Enc(1; r)
    for twice in (np.array([z[0], z[1], z[2], z[1]], dtype=object),
                  np.array([z[0], z[1], z[2], gmpy2.mpz(same_r)], dtype=object)):
        twice = EncryptedArray(pk, twice, 0)
        with pytest.raises(ValueError, match="repeats another's randomness"):
            EncryptedArray.encrypt(pk, x, zeros=twice)
        with pytest.raises(ValueError, match="repeats another's randomness"):
            d.rerandomize(twice)
    good = EncryptedArray(pk, sk.zeros(4), 0)          # the arbiter's honest zeros still work
    np.testing.assert_allclose(EncryptedArray.encrypt(pk, x, zeros=good).decrypt(sk), x, atol=1e-9)
    np.testing.assert_allclose(d.rerandomize(EncryptedArray(pk, sk.zeros(4), 0)).decrypt(sk), x, atol=1e-9)


class _OneMessage:
    def __init__(self, payload):
        self.payload = payload

    def recv(self, sender, step):
        return self.payload


def test_a_party_refuses_the_arbiters_trivial_zeros_on_receipt(keypair):
    pk, sk = keypair
    model = ModelConfig(key_bits=512, allow_short_keys=True)
    assert model.randomness == "arbiter"
    for cts in _trivial_zeros(pk, 5).values():
        sent = EncryptedArray(pk, np.array([gmpy2.mpz(c) for c in cts], dtype=object), 0)
        with pytest.raises(ValueError, match="the arbiter's encryptions of zero: .*trivial randomness"):
            receive_zeros(_OneMessage(sent), model, "a", pk, "lr", 0, 0, 5, Stopwatch())
    ok = receive_zeros(_OneMessage(EncryptedArray(pk, sk.zeros(5), 0)), model, "a", pk, "lr", 0, 0, 5, Stopwatch())
    assert ok.shape == (5,)


# ---------------------------------------------------------------- C2: decrypting a non-unit

def test_decrypt_raw_refuses_non_units_which_would_reveal_the_factorisation(keypair):
    pk, sk = keypair
    n = int(pk.n)
    good = pk.encrypt_raw([5, 6])
    for bad in (n, int(sk.p), 3 * int(sk.q), n * (n - 1)):
        cts = np.array([good[0], gmpy2.mpz(bad), good[1]], dtype=object)
        with pytest.raises(ValueError, match="ciphertext 1 is not a unit modulo n"):
            sk.decrypt_raw(cts)
    assert [int(v) for v in sk.decrypt_raw(good)] == [5, 6]


# ---------------------------------------------------------------- C3: packed slots past their bound

@pytest.mark.parametrize("big", [3e12, 1.5e12, -3e12])
def test_unpack_refuses_a_value_past_the_slot_bound_instead_of_wrapping(keypair, big):
    """The slot bound is |value| < 2^40 at 88 fractional bits. 3e12 (> 2^41) wraps its slot and used
    to come back as -1.398e12; 1.5e12 (between 2^40 and 2^41) does not wrap yet but is past the bound."""
    pk, sk = keypair
    vals = np.array([big, -1.0, 2.0])
    enc = EncryptedArray(pk, pk.encrypt_raw([int(round(v * 2**88)) for v in vals]), 88)
    masked, r = mask(pack(enc))
    packed = (sk.decrypt_raw(masked.ciphertexts) - r) % int(pk.n)
    with pytest.raises(ValueError, match="packed value 0 is out of its slot's range"):
        unpack(packed, 3, pk.n)
    # a middle slot too
    vals = np.array([1.0, big, 2.0])
    enc = EncryptedArray(pk, pk.encrypt_raw([int(round(v * 2**88)) for v in vals]), 88)
    with pytest.raises(ValueError, match="packed value 1 is out of its slot's range"):
        unpack(sk.decrypt_raw(pack(enc).ciphertexts), 3, pk.n)
    # just inside the bound: exact
    vals = np.array([1.0, 0.99 * 2.0**40, -0.99 * 2.0**40])
    enc = EncryptedArray.encrypt(pk, vals, frac_bits=88)
    got = decode_signed(unpack(sk.decrypt_raw(pack(enc).ciphertexts), 3, pk.n), 88)
    np.testing.assert_array_equal(got, vals)


# ---------------------------------------------------------------- C4: rescaling in an addition

def test_adding_at_different_scales_refuses_a_rescale_that_could_wrap(keypair):
    """a (2^30, inside the default value bound 2^32) at 0 fractional bits plus b at bits - 20 bits:
    raising a to b's scale needs 2^(30 + bits - 20) > n, which used to wrap silently."""
    pk, sk = keypair
    a = EncryptedArray.encrypt(pk, np.array([2.0**30]), frac_bits=0)
    b = EncryptedArray.encrypt(pk, np.array([1.0]), frac_bits=pk.bits - 20)
    with pytest.raises(ValueError, match="(rescaling for add|adding at different scales) could overflow"):
        a + b
    with pytest.raises(ValueError, match="(rescaling for add|adding at different scales) could overflow"):
        b + a
    # a smaller declared bound lets a small value through, exactly
    small = EncryptedArray.encrypt(pk, np.array([3.0]), frac_bits=0)
    assert (small.add(b, value_bound=4.0)).decrypt(sk).tolist() == [4.0]
    # the usual scales are untouched
    c = EncryptedArray.encrypt(pk, np.array([1.5]), frac_bits=40) + EncryptedArray.encrypt(pk, np.array([2.5]),
                                                                                            frac_bits=88)
    assert c.frac_bits == 88 and c.decrypt(sk).tolist() == [4.0]


# ---------------------------------------------------------------- C5: the secure sum's range

def test_secure_sum_refuses_values_whose_sum_over_the_hosts_could_wrap():
    """Three hosts at 0.9 * 2^30 each sum past int64 at 32 fractional bits: reveal_sum used to wrap."""
    keys = [SumKey() for _ in range(3)]
    pubs = [k.public_bytes() for k in keys]
    with pytest.raises(ValueError, match="below .* sum over 3 hosts"):
        keys[0].masked_share(np.array([0.9 * LIMIT, 1.0]), 0, pubs, b"ctx")
    assert host_limit(1) == host_limit(2) == LIMIT and host_limit(4) == 2.0**29


@pytest.mark.parametrize("hosts", [2, 3, 5, 7])
def test_secure_sum_at_the_edge_of_the_bound_never_wraps(hosts):
    """Each host at the largest value the check accepts (same sign): the revealed sum is right."""
    keys = [SumKey() for _ in range(hosts)]
    pubs = [k.public_bytes() for k in keys]
    for sign in (1.0, -1.0):
        v = np.nextafter(host_limit(hosts), 0.0)
        while True:       # the float check, then the exact one after rounding: walk down to the first accepted
            try:
                shares = [k.masked_share(np.array([sign * v]), i, pubs, b"edge") for i, k in enumerate(keys)]
                break
            except ValueError:
                v = np.nextafter(v, 0.0)
        assert v > 0.999999 * host_limit(hosts)
        assert reveal_sum(shares)[0] == pytest.approx(sign * hosts * v, rel=1e-12)


# ---------------------------------------------------------------- C6: low bits of the label-DP noise

def _noise_ints(arb, party, n_packed, n_bits=2048):
    n = (1 << (n_bits - 1)) + 12345            # any n of that size will do for the slot arithmetic
    k = slots_per_ciphertext(n_bits)
    offs = arb._noise(party, n_packed, n_bits)
    centre = sum(1 << (SLOT_BITS * t + SLOT_BITS - 1) for t in range(k))
    return [int(v) for v in unpack((np.array(offs, dtype=object) + centre) % n, n_packed * k, n)]


def test_label_dp_noise_has_no_exact_low_bits():
    """A float64 Gaussian at 88 fractional bits has >= ~25 zero low bits, so every released sum used to
    reach the party exactly modulo 2^25. With the dither the low 40 bits of released - signal vary."""
    arb = SplitArbiter(ModelConfig(label_dp="on"), guest="guest", hosts=["host0"])
    noise = _noise_ints(arb, "host0", 20)                          # 300 values
    low = [v % (1 << 40) for v in noise]
    assert len(set(low)) == len(low)                               # distinct low 40 bits (collision ~ 2^-24)
    assert 100 < sum(v & 1 for v in noise) < 200                   # the lowest bit is a fair coin
    assert min((v & -v).bit_length() - 1 for v in noise if v) < 10
    # the dither is tiny in value: at most 2^-41 away from the float draw
    assert max(abs(v) for v in noise) < 2**RELEASE_FRAC_BITS * 20 * arb.noise_sd_["host0"]
    # and only fills the draw's own float grid cell: half a float ulp at most, none for a draw of
    # exactly 0 (so the tests that draw zero noise still compare the protocol with its twin exactly)
    x = np.array([0.0, 1.0, -1.5, 4000.0])
    for _ in range(50):
        d = _dither(x)
        assert d[0] == 0 and all(abs(int(v)) <= np.spacing(abs(t)) * 2.0**(RELEASE_FRAC_BITS - 1)
                                 for v, t in zip(d, x))


def test_label_dp_noise_dither_also_covers_large_draws():
    """For |noise| >= 2^13 the float grid is coarser than 2^48 units: the dither widens to match."""
    arb = SplitArbiter(ModelConfig(label_dp="on"), guest="guest", hosts=["host0"])
    draws = {}

    class Large:
        def normal(self, mean, sd, count):
            draws["x"] = np.full(count, 3.0e6)                   # spacing 2^(22 + 35) = 2^57 units
            return draws["x"]
    arb._rng = Large()
    noise = _noise_ints(arb, "host0", 20)
    exact = int(3.0e6) << RELEASE_FRAC_BITS
    diffs = [v - exact for v in noise]
    assert all(abs(d) <= 2**56 for d in diffs)
    assert len({d % (1 << 56) for d in diffs}) == len(diffs)
    assert 100 < sum(d & 1 for d in diffs) < 200
    # bits 48..56 vary too: a 2^48-wide dither alone would leave them at the grid point's (0 or all ones)
    assert len({(d >> 48) & 0xFF for d in diffs}) > 64


def test_djn_ciphertexts_and_their_rerandomisations_have_a_uniform_jacobi_symbol():
    """h = -x^2 has Jacobi symbol +1 mod n, so every DJN obfuscator hs^a did too, and anyone could read
    (c mod n / n) off a ciphertext: a re-randomisation kept the symbol of what it hid, and a deviating
    party that injected a ciphertext of symbol -1 read from a re-randomised sum whether it went in.
    Obfuscators (the encrypting party's and the key holder's zeros) now carry a fresh sign."""
    pk, sk = generate_keypair(512)
    n = gmpy2.mpz(pk.n)

    def symbols(cts) -> list[int]:
        return [int(gmpy2.jacobi(gmpy2.mpz(c) % n, n)) for c in np.asarray(cts, dtype=object).ravel()]

    fresh = symbols(pk.encrypt_raw(np.zeros(200, dtype=object)))
    crt = symbols(sk.zeros(200))
    assert 50 < fresh.count(-1) < 150 and 50 < crt.count(-1) < 150
    w = 2
    while gmpy2.jacobi(w, n) != -1:
        w += 1
    injected = EncryptedArray(pk, np.array([gmpy2.mpz(w) * (1 + 5 * n) % (n * n)] * 200, dtype=object), 0)
    assert set(symbols(injected.ciphertexts)) == {-1}
    for out in (injected.rerandomize(), injected.rerandomize(EncryptedArray(pk, sk.zeros(200), 0))):
        got = symbols(out.ciphertexts)
        assert 50 < got.count(-1) < 150                   # no longer tells what went in
        assert [int(v) for v in sk.decrypt_raw(out.ciphertexts)] == [int(v) for v in sk.decrypt_raw(injected.ciphertexts)]


def test_adding_at_different_scales_refuses_a_sum_that_could_wrap_and_huge_plaintexts_decode_as_errors():
    """Raising one operand's scale checked that operand alone: two values within value_bound summed
    past n/2 and decrypted as a wrong, negative number. And a plaintext beyond any float (a deviating
    peer's) raised OverflowError where the protocols' checks expect a ValueError."""
    import math
    pk, _ = generate_keypair(512)
    n = int(pk.n)
    hi, lo = 480, 470
    bound = math.floor(float((n // 2 - 1) >> hi) * 0.999)          # one operand fits at 2^hi, two do not
    a = EncryptedArray.encrypt(pk, np.array([0.49 * bound]), frac_bits=hi)
    b = EncryptedArray.encrypt(pk, np.array([0.99 * bound]), frac_bits=lo)
    with pytest.raises(ValueError, match="adding at different scales could overflow"):
        a.add(b, value_bound=bound)
    with pytest.raises(ValueError, match="out of range"):
        decode_signed(np.array([1 << 1100], dtype=object), 24)
