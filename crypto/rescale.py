"""Lowering the fixed-point scale of ciphertexts through the key holder, who never sees a value.

Multiplying ``[[x]]`` by a plaintext fraction adds that fraction's bits to the
scale, so values that are updated homomorphically many times (weights that
stay encrypted for a whole training, ``docs/design/encrypted-wide.md``) must be
brought back to their scale now and then. The owner of ``[[x]]`` cannot; the
key holder could, but must not learn ``x``. So:

1. the owner packs the values several to a plaintext (``crypto.packing``) and
   adds to each slot a mask ``rho`` uniform in ``[0, 2^(b + kappa))``, where
   ``|x| < 2^b`` (:func:`mask_for_rescale`);
2. the key holder decrypts, shifts every slot right by ``s`` bits and returns
   each as a fresh ciphertext (:func:`rescale_masked`): a slot it sees is
   within statistical distance ``2^(1 - kappa)`` of uniform, whatever ``x``;
3. the owner subtracts its mask's share, ``floor((offset + rho) / 2^s)``
   (:func:`finish_rescale`), and holds ``[[floor(x / 2^s) + e]]``, ``e`` in
   ``{0, 1}``: one unit in the last place at the new scale.

Unlike the gradient round (``crypto.masks``), the mask is not uniform mod n but
statistically hiding: a shift of ``x + rho mod n`` would not be the shift of
``x`` plus something the owner can remove. The key holder never refuses on
what it decrypted: a refusal that depends on the plaintext would be an oracle
for the owner, who chooses what it sends (a host that slipped in another
party's ciphertext would learn its sign from whether the round failed). Bits
above the slots are ignored; every reply is fresh ciphertexts, whatever came.
Refusals depend on public things only (counts, scale, key).
"""
from __future__ import annotations

import secrets

import numpy as np

from crypto.arrays import object_array
from crypto.enc_array import EncryptedArray
from crypto.packing import pack, slot_offsets, slots_per_ciphertext

KAPPA = 80      # statistical hiding, in bits: the key holder's view is 2^-79 from uniform


def slot_bits_for(value_bits: int, kappa: int = KAPPA) -> int:
    """Slot width for values below ``2^value_bits`` in magnitude: the value, its sign offset and the
    mask fit without a carry into the next slot."""
    return value_bits + kappa + 3


def mask_for_rescale(enc: EncryptedArray, value_bits: int, kappa: int = KAPPA
                     ) -> tuple[EncryptedArray, np.ndarray]:
    """``([[P + R]], rho)``: ``enc`` (1-D, raw values below ``2^value_bits`` in magnitude) packed, each
    slot masked by its ``rho`` uniform in ``[0, 2^(value_bits + kappa))``, re-randomised."""
    s = slot_bits_for(value_bits, kappa)
    packed = pack(enc, slot_bits=s)
    k = slots_per_ciphertext(enc.public_key.bits, s)
    rho = object_array([secrets.randbits(value_bits + kappa) for _ in range(len(packed) * k)])
    return packed.add_raw(slot_offsets(rho, len(packed), enc.public_key.bits, s)).rerandomize(), rho


def rescale_masked(private_key, masked: EncryptedArray, count: int, value_bits: int, shift: int,
                   kappa: int = KAPPA, out_of_range: list | None = None) -> EncryptedArray:
    """The key holder's step: decrypt the packed, masked slots, shift each right by ``shift`` bits and
    return the first ``count`` freshly encrypted (``frac_bits`` lowered by ``shift``).

    Raises ``ValueError`` only for public reasons (``count`` beyond the packed slots, ``shift`` out of
    range). A plaintext above its slots (not masked as agreed, or another ciphertext slipped in) is
    reduced to them, not refused: a refusal would tell the sender something about a plaintext it
    cannot read. ``out_of_range`` (a list, if given) gets the index of each such packed value, for the
    key holder's own log."""
    pk = masked.public_key
    s = slot_bits_for(value_bits, kappa)
    k = slots_per_ciphertext(pk.bits, s)
    if not 0 < count <= len(masked) * k:
        raise ValueError(f"{count} values cannot come from {len(masked)} packed ciphertexts of {k} slots")
    if not 0 < shift < value_bits:
        raise ValueError(f"shift must be in (0, {value_bits}), got {shift}")
    plain = private_key.decrypt_raw(masked.ciphertexts)
    top, full = 1 << (s * k), (1 << s) - 1
    shifted = []
    for j, p in enumerate(plain.tolist()):
        p = int(p)
        if p >= top and out_of_range is not None:
            out_of_range.append(j)
        shifted.extend(((p >> (s * t)) & full) >> shift for t in range(k))
    out = pk.encrypt_raw(shifted[:count], zeros=private_key.zeros(count))
    return EncryptedArray(pk, out, masked.frac_bits - shift)


def finish_rescale(rescaled: EncryptedArray, rho: np.ndarray, value_bits: int, shift: int,
                   kappa: int = KAPPA) -> EncryptedArray:
    """The owner's step: remove each slot's offset and mask, shifted, from the key holder's reply."""
    s = slot_bits_for(value_bits, kappa)
    offset = 1 << (s - 1)          # pack's sign offset per slot
    own = object_array([-((offset + int(r)) >> shift) for r in rho.tolist()[:len(rescaled)]])
    return rescaled.add_raw(own)
