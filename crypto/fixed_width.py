"""Big integers as a fixed-width ``uint8`` matrix, for shipping shards to workers.

Why: a list (or object array) of gmpy2 integers is pickled element by
element (one reduce call and one small bytes object each), and Ray's
zero-copy object store only helps numpy buffers.  One ``(count, width)``
``uint8`` array of big-endian values is a single buffer for both the local
pool's pickle and Ray, and it costs less to build and read back than the
pickle of the list (measured in ``benchmarks/bench_ray.py``).
"""
from __future__ import annotations

from typing import Sequence

import gmpy2
import numpy as np


def width_for(modulus: int) -> int:
    """Bytes per value for integers in ``[0, modulus)``."""
    return max(1, ((int(modulus) - 1).bit_length() + 7) // 8)


def to_rows(values: Sequence, width: int) -> np.ndarray:
    """Non-negative integers (each below ``256 ** width``) as a ``(len(values), width)`` uint8 array."""
    mpz = gmpy2.mpz
    try:
        raw = b"".join([mpz(v).to_bytes(width, "big") for v in values])
    except OverflowError:
        raise ValueError(f"a value does not fit in {width} bytes (or is negative)") from None
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(values), width)


def from_rows(rows: np.ndarray) -> list:
    """The integers (gmpy2 ``mpz``) of a :func:`to_rows` array, in order."""
    rows = np.asarray(rows)
    if rows.dtype != np.uint8 or rows.ndim != 2:
        raise TypeError(f"expected a 2-D uint8 array, got {rows.dtype} of shape {rows.shape}")
    width = rows.shape[1]
    raw = rows.tobytes()
    from_bytes = gmpy2.mpz.from_bytes
    return [from_bytes(raw[i:i + width], "big") for i in range(0, len(raw), width)]
