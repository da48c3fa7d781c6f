"""Fixed-point encoding of real numbers as integers modulo a Paillier modulus n.

Paillier encrypts integers in Z_n, so a real ``v`` is carried as the integer
``round(v * 2**frac_bits)``; negatives wrap to ``n - |m|``.  Decoding treats
plaintexts above ``n // 2`` as negative.  To keep one addition of two encoded
values from wrapping, encoding refuses anything with ``|m| >= n / 4``.

Precision: ``DEFAULT_FRAC_BITS = 40`` gives an absolute resolution of
2**-40 ~= 9.1e-13 for encrypted reals.  Plaintext multipliers (the feature
matrix in ``X.T @ [[d]]``) use ``DEFAULT_PLAIN_FRAC_BITS = 24`` (resolution
~6e-8): they become exponents of a multi-exponentiation whose cost grows
linearly with their bit length, so fewer bits are directly faster.
"""
from __future__ import annotations

import numpy as np

DEFAULT_FRAC_BITS = 40
DEFAULT_PLAIN_FRAC_BITS = 24

_INT64_SAFE = 2**62  # headroom so that abs() and small sums never overflow int64
_CAUSE = ("a setting far out of range (learning_rate, l2, clip_norm, dp_epsilon) or values of huge magnitude "
          "can cause this")      # the overflow errors' usual cause: the key is rarely what is wrong


def _as_float_array(values: np.ndarray | float, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain NaN or infinity; cannot encode")
    return arr


def encode_signed(values: np.ndarray | float, frac_bits: int, limit: int | None = None) -> np.ndarray:
    """Return ``round(values * 2**frac_bits)`` as an object array of Python ints.

    ``limit`` (exclusive) bounds ``|result|``; exceeding it raises ``ValueError``.
    """
    if frac_bits < 0:
        raise ValueError(f"frac_bits must be >= 0, got {frac_bits}")
    arr = _as_float_array(values)
    max_abs = float(np.max(np.abs(arr))) if arr.size else 0.0
    if limit is not None and max_abs * 2.0**frac_bits >= limit:
        raise ValueError(
            f"fixed-point overflow: |value| up to {max_abs:.6g} at frac_bits={frac_bits} "
            f"needs ~{int(max_abs).bit_length() + frac_bits} bits, limit is {limit.bit_length() - 1} bits; "
            f"use a larger key or fewer fractional bits; {_CAUSE}")
    scaled = np.asarray(np.rint(np.ldexp(arr, frac_bits)))  # ldexp is exact: a power-of-two scale
    if max_abs * 2.0**frac_bits < _INT64_SAFE:
        return np.asarray(scaled.astype(np.int64), dtype=object)
    out = np.empty(arr.shape, dtype=object)
    flat_in, flat_out = scaled.ravel(), out.reshape(-1)
    for i, x in enumerate(flat_in.tolist()):
        flat_out[i] = int(x)  # exact conversion of an integral float
    return out


def encode_int64(values: np.ndarray | float, frac_bits: int) -> np.ndarray:
    """Like :func:`encode_signed` but as an int64 array (fast exponents for multiexp)."""
    arr = _as_float_array(values)
    max_abs = float(np.max(np.abs(arr))) if arr.size else 0.0
    if max_abs * 2.0**frac_bits >= _INT64_SAFE:
        raise ValueError(
            f"plaintext multiplier overflow: |x| up to {max_abs:.6g} at frac_bits={frac_bits} "
            f"does not fit in 62 bits; {_CAUSE}")
    return np.asarray(np.rint(np.ldexp(arr, frac_bits))).astype(np.int64)


def encode(values: np.ndarray | float, frac_bits: int, n: int) -> np.ndarray:
    """Encode reals as integers in ``[0, n)`` (negatives as ``n - |m|``)."""
    signed = encode_signed(values, frac_bits, limit=int(n) // 4)
    return np.asarray(signed % int(n), dtype=object)


def to_signed(ints: np.ndarray, n: int) -> np.ndarray:
    """Map integers in ``[0, n)`` to ``(-n/2, n/2]`` (values above n//2 are negative)."""
    n = int(n)
    half = n // 2
    arr = np.asarray(ints, dtype=object)
    out = np.empty(arr.shape, dtype=object)
    flat_out = out.reshape(-1)
    for i, m in enumerate(arr.ravel().tolist()):
        m = int(m) % n
        flat_out[i] = m - n if m > half else m
    return out


def decode_signed(signed: np.ndarray, frac_bits: int) -> np.ndarray:
    """Signed integers -> float64, ``m / 2**frac_bits`` correctly rounded."""
    arr = np.asarray(signed, dtype=object)
    scale = 1 << frac_bits
    out = np.empty(arr.shape, dtype=np.float64)
    flat_out = out.reshape(-1)
    for i, m in enumerate(arr.ravel().tolist()):
        try:
            flat_out[i] = int(m) / scale  # int / int true division is correctly rounded
        except OverflowError:         # a peer's plaintext beyond any float: the protocols' checks expect this
            raise ValueError(f"decoded value {i} is out of range (about 2^{int(m).bit_length() - frac_bits}): "
                             "not a value any protocol step sends") from None
    return out


def decode(ints: np.ndarray, frac_bits: int, n: int) -> np.ndarray:
    """Decode integers mod n (as produced by decryption) back to float64."""
    return decode_signed(to_signed(ints, n), frac_bits)
