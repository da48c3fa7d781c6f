"""Packing several values into one plaintext: exact round trip, per-slot noise, the mask still hides."""
import numpy as np
import pytest

from crypto import EncryptedArray, generate_keypair, mask
from crypto.encoding import decode_signed
from crypto.packing import pack, packed_count, slot_offsets, slots_per_ciphertext, unpack


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(1024)


def test_pack_then_decrypt_gives_every_value_back(keypair):
    pk, sk = keypair
    k = slots_per_ciphertext(pk.bits)
    assert k == 7
    values = np.random.default_rng(1).normal(0, 1e6, 3 * k + 2)        # a partly filled last ciphertext
    values[:3] = [-3.5e11, 4e11, 0.0]                                    # near the slot limits, and zero
    enc = EncryptedArray.encrypt(pk, values, frac_bits=88)
    packed = pack(enc)
    assert packed.shape == (packed_count(len(values), pk.bits),) == (4,)
    got = decode_signed(unpack(sk.decrypt_raw(packed.ciphertexts), len(values), pk.n), 88)
    np.testing.assert_allclose(got, values, rtol=0, atol=1e-12 * np.abs(values).max())


def test_masked_packed_values_with_slot_noise_unmask_to_value_plus_noise(keypair):
    pk, sk = keypair
    values = np.linspace(-5, 5, 10)
    packed = pack(EncryptedArray.encrypt(pk, values, frac_bits=88))
    masked, r = mask(packed)
    plain = sk.decrypt_raw(masked.ciphertexts)
    noise = np.arange(len(packed) * slots_per_ciphertext(pk.bits)) - 7.0          # signed, per slot
    plain = (plain + slot_offsets([int(x) << 88 for x in noise], len(packed), pk.bits)) % pk.n
    got = decode_signed(unpack((plain - r) % int(pk.n), len(values), pk.n), 88)
    np.testing.assert_allclose(got, values + noise[:len(values)], atol=1e-12)
    assert all(int(m) != int(p) for m, p in zip(sk.decrypt_raw(masked.ciphertexts), sk.decrypt_raw(packed.ciphertexts)))


def test_overflowing_slots_are_detected(keypair):
    pk, _ = keypair
    with pytest.raises(ValueError, match="overflowed"):
        unpack(np.array([int(pk.n) - 1], dtype=object), 1, pk.n)
    with pytest.raises(ValueError, match="cannot hold"):
        slots_per_ciphertext(100)
