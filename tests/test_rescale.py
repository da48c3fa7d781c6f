"""Rescaling through the key holder: exact to one unit, the key holder's view hides the values, bad input refused."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from crypto import EncryptedArray, generate_keypair
from crypto.rescale import finish_rescale, mask_for_rescale, rescale_masked, slot_bits_for
from crypto.packing import slots_per_ciphertext

VALUE_BITS, SHIFT = 100, 48


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(1024)


def _round_trip(pk, sk, ints, value_bits=VALUE_BITS, shift=SHIFT):
    enc = EncryptedArray(pk, pk.encrypt_raw(ints), 88)
    masked, rho = mask_for_rescale(enc, value_bits)
    back = rescale_masked(sk, masked, len(ints), value_bits, shift)
    out = finish_rescale(back, rho, value_bits, shift)
    n = int(pk.n)
    raw = [int(v) for v in sk.decrypt_raw(out.ciphertexts).tolist()]
    return [v - n if v > n // 2 else v for v in raw], out, masked


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-(1 << VALUE_BITS) + 1, (1 << VALUE_BITS) - 1), min_size=1, max_size=9))
def test_rescaled_values_are_the_shifted_values_to_one_unit(keypair, ints):
    pk, sk = keypair
    got, out, _ = _round_trip(pk, sk, ints)
    assert out.frac_bits == 88 - SHIFT
    for x, g in zip(ints, got):
        assert g - (x >> SHIFT) in (0, 1), (x, g)       # floor(x / 2^s) + e, e in {0, 1}


def test_fixed_point_weights_keep_their_value(keypair):
    pk, sk = keypair
    w = np.array([-3.25, 0.0, 1e-6, 7.5, -1e-9])
    enc = EncryptedArray.encrypt(pk, w, frac_bits=88)
    masked, rho = mask_for_rescale(enc, VALUE_BITS)
    out = finish_rescale(rescale_masked(sk, masked, len(w), VALUE_BITS, SHIFT), rho, VALUE_BITS, SHIFT)
    np.testing.assert_allclose(out.decrypt(sk), w, rtol=0, atol=2.0 ** -(88 - SHIFT))


def test_the_key_holder_sees_masked_slots_not_values(keypair):
    """Every slot the key holder decrypts is the value plus a mask of 2^(b + kappa) range: two runs on the same
    zeros differ by far more than any value, and slots are far above the values' magnitude."""
    pk, sk = keypair
    zeros = [0] * 7
    s = slot_bits_for(VALUE_BITS)
    k = slots_per_ciphertext(pk.bits, s)
    seen = []
    for _ in range(2):
        enc = EncryptedArray(pk, pk.encrypt_raw(zeros), 88)
        masked, _ = mask_for_rescale(enc, VALUE_BITS)
        p = int(sk.decrypt_raw(masked.ciphertexts)[0])
        seen.append([(p >> (s * t)) & ((1 << s) - 1) for t in range(k)])
    offset = 1 << (s - 1)
    for a, b in zip(*seen):
        assert abs((a - offset) - (b - offset)) > 1 << (VALUE_BITS + 40)     # mask, not value, dominates
        assert 0 <= a - offset < (1 << (VALUE_BITS + 80)) + (1 << VALUE_BITS)


def test_the_key_holder_refuses_on_public_grounds_only(keypair):
    """A refusal that depended on the plaintext would be an oracle: a host that slipped in another party's
    [[d_i]] unmasked would learn its sign from whether the round failed (negative values wrap above the
    slots). So any plaintext gets fresh ciphertexts back, out-of-range ones noted for the key holder alone."""
    pk, sk = keypair
    s = slot_bits_for(VALUE_BITS)
    k = slots_per_ciphertext(pk.bits, s)
    replies = []
    for value in (-5, 5, 1 << (s * k)):          # unmasked: negative (wraps), small, above the slots
        noted: list = []
        back = rescale_masked(sk, EncryptedArray(pk, pk.encrypt_raw([value]), 88), 1, VALUE_BITS, SHIFT,
                              out_of_range=noted)
        replies.append((back.shape, back.frac_bits, type(back).__name__))
        assert noted == ([0] if value < 0 or value >= 1 << (s * k) else [])
    assert len(set(replies)) == 1            # the same kind of reply, whatever was sent
    ok = EncryptedArray(pk, pk.encrypt_raw([5]), 88)
    with pytest.raises(ValueError, match="cannot come from"):
        rescale_masked(sk, ok, k + 1, VALUE_BITS, SHIFT)
    with pytest.raises(ValueError, match="shift must be"):
        rescale_masked(sk, ok, 1, VALUE_BITS, VALUE_BITS)
