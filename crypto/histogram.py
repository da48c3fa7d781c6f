"""Encrypted histograms: per-bin products of ciphertexts, for every column of a binned table.

``S[o_f + b, c] = prod_{i: codes[i, f] == b} cts[i, c]  (mod n^2)``: under
Paillier, the sum of the plaintexts of the rows in bin ``b`` of column ``f``,
for each of the ``m`` ciphertexts a row carries. This is what a SecureBoost
host computes per tree level (``vfl/models/trees/host.py``): ``len(rows) *
columns * m`` multiplications and nothing else, no exponentiation.

Why not :meth:`crypto.EncryptedArray.grouped_rmatmul` with exponents 1: it
plans power tables per row, which a product with exponent 1 does not need
(measured at 1024 bits, 24,000 rows, 10 columns of 33 bins: 0.74 s against
0.40 s for the plain loop here). Large inputs are cut into row shards on the
compute backend; the shards' partial products are multiplied together.

Results are deterministic functions of the inputs: re-randomise them before
sending them to anyone who knows the inputs' randomness.
"""
from __future__ import annotations

import gmpy2
import numpy as np

from crypto import backends
from crypto.arrays import object_array
from crypto.fixed_width import from_rows, to_rows, width_for


def _check(codes: np.ndarray, n_bins: list[int], rows: int) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != rows or codes.shape[1] != len(n_bins):
        raise ValueError(f"codes must have shape ({rows}, {len(n_bins)}), got {codes.shape}")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {codes.dtype}")
    nb = np.asarray(n_bins, dtype=np.int64)
    if nb.size and nb.min() < 1:
        raise ValueError("every column needs at least one bin")
    if codes.size and (codes.min() < 0 or np.any(codes.max(axis=0) >= nb)):
        raise ValueError("a code lies outside its column's bins")
    offsets = np.concatenate([[0], np.cumsum(nb)]).astype(np.int64)
    return codes.astype(np.int64), offsets


def _bin_products(cts: list, m: int, codes: np.ndarray, offsets: np.ndarray, modulus) -> list:
    """Serial kernel: flat list of ``offsets[-1] * m`` products (row-major: bin, then ciphertext)."""
    modulus = gmpy2.mpz(modulus)
    one = gmpy2.mpz(1)
    total = int(offsets[-1])
    acc = [one] * (total * m)
    for f in range(codes.shape[1]):
        keys = ((codes[:, f] + offsets[f]) * m).tolist()
        for c in range(m):
            col = cts[c::m]
            for k, ct in zip(keys, col):
                acc[k + c] = acc[k + c] * ct % modulus
    return acc


def _bin_product_rows(rows: np.ndarray, m: int, codes: np.ndarray, offsets: np.ndarray, modulus) -> np.ndarray:
    """Shard function: :func:`_bin_products` on uint8 rows of ciphertexts, products as uint8 rows."""
    return to_rows(_bin_products(from_rows(rows), m, codes, offsets, modulus), width_for(modulus))


def bin_sums(cts: np.ndarray, codes: np.ndarray, n_bins: list[int], modulus) -> np.ndarray:
    """Per-bin products of ciphertexts for every column.

    Parameters
    ----------
    cts : object array (rows, m) of mpz ciphertexts (m per row).
    codes : int array (rows, columns), each row's bin in each column.
    n_bins : bins per column; column ``f`` occupies output rows
        ``sum(n_bins[:f]) .. + n_bins[f]``.
    modulus : n^2.

    Returns
    -------
    object array (sum(n_bins), m) of mpz; an empty bin holds 1 (Enc(0) with randomness 1).
    """
    cts = np.asarray(cts, dtype=object)
    if cts.ndim != 2:
        raise ValueError(f"ciphertexts must have shape (rows, m), got {cts.shape}")
    n, m = cts.shape
    codes, offsets = _check(codes, n_bins, n)
    total = int(offsets[-1])
    flat = cts.ravel().tolist()
    if not backends.use_parallel(n * max(1, codes.shape[1])):
        return object_array(_bin_products(flat, m, codes, offsets, modulus), (total, m))
    modulus = gmpy2.mpz(modulus)
    width = width_for(modulus)
    packed = to_rows(flat, width)
    ranges = backends.split_ranges(n, backends.workers())
    parts = backends.run(_bin_product_rows, [(packed[a * m:b * m], m, codes[a:b], offsets, modulus)
                                             for a, b in ranges])
    acc = from_rows(parts[0])
    for part in parts[1:]:
        acc = [x * y % modulus for x, y in zip(acc, from_rows(part))]
    return object_array(acc, (total, m))
