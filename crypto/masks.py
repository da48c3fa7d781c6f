"""Additive masks for the round trip through the key holder (arbiter).

A party holding ``[[g]]`` that needs ``g`` decrypted by the arbiter sends
``[[g + r]]`` with ``r`` uniform in ``[0, n)``.  Since ``g + r mod n`` is then
uniform and independent of ``g``, the arbiter's decryption reveals nothing
(perfect hiding).  The arbiter returns the raw integers and the owner removes
``r`` modulo n before decoding.  Masked ciphertexts are also re-randomised so
the arbiter cannot link them to ciphertexts it saw earlier.
"""
from __future__ import annotations

import secrets
from typing import Sequence

import numpy as np

from crypto.arrays import object_array
from crypto.encoding import decode


def random_mask(n: int, shape: tuple | int) -> np.ndarray:
    """Uniform integers in ``[0, n)`` (from ``secrets``), as an object array of ``shape``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    out = object_array([secrets.randbelow(int(n)) for _ in range(count)])
    return out.reshape(shape)


def mask(enc, rerandomize: bool = True) -> tuple:
    """Return ``(enc + r, r)`` for a fresh uniform mask ``r`` (raw integers mod n)."""
    r = random_mask(enc.public_key.n, enc.shape)
    masked = enc.add_raw(r)
    return (masked.rerandomize() if rerandomize else masked), r


def unmask(raw_plain_ints: np.ndarray | Sequence[int], mask: np.ndarray, frac_bits: int, n: int) -> np.ndarray:
    """``(m - r) mod n``, then signed fixed-point decoding to float64."""
    m = np.asarray(raw_plain_ints, dtype=object)
    r = np.asarray(mask, dtype=object)
    if m.shape != r.shape:
        raise ValueError(f"masked values have shape {m.shape}, mask has shape {r.shape}")
    return decode((m - r) % int(n), frac_bits, n)
