"""Packing several fixed-point values into one Paillier plaintext before decryption.

Decryption is the arbiter's cost per value (two half-size exponentiations),
while a plaintext has room for many values: a 1024-bit n holds 7 slots of 130
bits, a 2048-bit n 15. ``pack`` combines ciphertexts homomorphically by
Horner's rule, ``[[P]] = [[v_0]] * ([[v_1]] * (...)^(2^s))^(2^s)`` (``s``
squarings per value), and adds an offset of ``2^(s-1)`` per slot so every slot
holds a non-negative integer and no slot borrows from its neighbour:

    P = sum_t (v_t + 2^(s-1)) 2^(s t),   0 <= P < 2^(s k) < n

The mask of the arbiter round is then added to ``P`` as a whole (uniform mod
n: the arbiter still sees nothing), and the arbiter can add noise to each slot
without knowing the values (``slot_offsets``). Slots hold signed integers of
magnitude below ``2^(s-2)``: with 88 fractional bits (a residual at 64 times a
coefficient at 24) that is ``|value| < 2^40``. ``pack`` cannot see the
encrypted values, so ``unpack`` enforces the bound: it refuses any slot at or
above ``2^(s-2)`` in magnitude. A value up to ``3 * 2^(s-2)`` that wrapped its
slot (and carried into the next) decodes to a slot at or above the bound, so
it is refused rather than returned wrong.
"""
from __future__ import annotations

import gmpy2
import numpy as np

from crypto.arrays import object_array
from crypto.enc_array import EncryptedArray
from crypto.multiexp import powmod_many_parallel

SLOT_BITS = 130


def slots_per_ciphertext(n_bits: int, slot_bits: int = SLOT_BITS) -> int:
    """How many slots fit below n (one bit of headroom)."""
    k = (n_bits - 2) // slot_bits
    if k < 1:
        raise ValueError(f"a {n_bits}-bit modulus cannot hold a {slot_bits}-bit slot")
    return k


def packed_count(values: int, n_bits: int, slot_bits: int = SLOT_BITS) -> int:
    return -(-values // slots_per_ciphertext(n_bits, slot_bits))


def pack(enc: EncryptedArray, slot_bits: int = SLOT_BITS) -> EncryptedArray:
    """``[[P_j]]`` for consecutive groups of ``k`` values of a 1-D array (the last group padded with 0)."""
    if enc.ndim != 1:
        raise ValueError(f"pack needs a 1-D EncryptedArray, got shape {enc.shape}")
    pk = enc.public_key
    k = slots_per_ciphertext(pk.bits, slot_bits)
    n2 = pk.nsquare
    cts = enc.ciphertexts.tolist()
    m = -(-len(cts) // k)
    cts += [gmpy2.mpz(1)] * (m * k - len(cts))          # Enc(0) with randomness 1: padding slots
    # Horner over the slots, all packed ciphertexts at once: acc <- acc^(2^s) * c_t, t = k-1 .. 0.
    acc = cts[k - 1::k]
    for t in range(k - 2, -1, -1):
        acc = powmod_many_parallel(acc, [1 << slot_bits] * m, n2)
        acc = [a * c % n2 for a, c in zip(acc, cts[t::k])]
    out = object_array(acc)
    offset = sum(1 << (slot_bits * t + slot_bits - 1) for t in range(k))
    return EncryptedArray(pk, out, enc.frac_bits).add_raw(np.full(m, offset, dtype=object))


def slot_offsets(slot_values: np.ndarray, n_packed: int, n_bits: int, slot_bits: int = SLOT_BITS) -> np.ndarray:
    """Plaintext integers adding ``slot_values`` (signed ints, ``n_packed * k`` of them) to each slot."""
    k = slots_per_ciphertext(n_bits, slot_bits)
    vals = np.asarray(slot_values, dtype=object).reshape(n_packed, k)
    out = np.empty(n_packed, dtype=object)
    for j in range(n_packed):
        out[j] = sum(int(v) << (slot_bits * t) for t, v in enumerate(vals[j].tolist()))
    return out


def unpack(plain: np.ndarray, count: int, n: int, slot_bits: int = SLOT_BITS) -> np.ndarray:
    """Signed slot integers (the first ``count``) from packed plaintexts in ``[0, n)``.

    Raises ``ValueError`` if a slot is at or above the slot bound ``2^(s-2)`` in
    magnitude (a value too large for its slot, which may have wrapped into its
    neighbour) or the plaintext exceeds its ``k`` slots."""
    k = slots_per_ciphertext(int(n).bit_length(), slot_bits)
    mask, half, bound = (1 << slot_bits) - 1, 1 << (slot_bits - 1), 1 << (slot_bits - 2)
    out = []
    for j, p in enumerate(np.asarray(plain, dtype=object).tolist()):
        p = int(p)
        if p >= 1 << (slot_bits * k):
            raise ValueError("a packed value overflowed its slots")
        slots = [((p >> (slot_bits * t)) & mask) - half for t in range(k)]
        for t, v in enumerate(slots):
            if (j * k + t < count) and not -bound < v < bound:
                raise ValueError(f"packed value {j * k + t} is out of its slot's range: |slot| >= "
                                 f"2^{slot_bits - 2} (|value| >= 2^{slot_bits - 90} at 88 fractional bits); it "
                                 "overflowed its slot or came close, so it is refused rather than returned wrapped")
        out.extend(slots)
    return np.asarray(out[:count], dtype=object)
