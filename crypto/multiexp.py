"""Multi-exponentiation ``prod_i c_i ** E[i, j] mod M`` for every column j.

This is ``X.T @ [[d]]`` under Paillier.  A per-element ``powmod`` costs about
``1.25 * bits`` modular multiplications per (i, j); the bucket method
(Pippenger) cuts that to about ``bits / w`` per (i, j) plus ``2 ** (w + 1)``
per column and window: each window of ``w`` exponent bits drops every base
into the bucket named by its digit (one multiplication), then the buckets are
folded with the running-sum trick (``prod_d B_d ** d`` in ``2 * 2**w``
multiplications).  ``w`` is chosen per column to minimise that count.

Extra savings that cost nothing when they do not apply: zero exponents are
skipped (sparse / one-hot features), and a column's common trailing zero bits
are stripped and restored with a few squarings at the end (integer features
encoded with ``frac_bits`` fractional bits become short exponents again).

Negative exponents: ``c ** -e = (c ** -1) ** e``.  Two strategies, the cheaper
one is picked per call by counting multiplications:

* invert: invert every base that has a negative exponent in any column with
  Montgomery's batch trick (3 multiplications per base plus one inversion),
  then run one unsigned multi-exponentiation per column.  Best for many
  columns, since the inversions are shared by all of them.
* split: per column run separate products over the positive and negative
  exponents and divide once.  Costs an extra bucket fold per window and
  column, but no per-base work: best for one or two columns (``dot``).

We do not use the "add an offset 2**(B-1)" trick: it makes every exponent
non-zero and one bit longer (sometimes one more window), which costs more than
either strategy above.
"""
from __future__ import annotations

import functools
import operator
from typing import Sequence

import gmpy2
import numpy as np

from crypto import pool


def _as_matrix(exponents: np.ndarray) -> np.ndarray:
    E = np.asarray(exponents)
    if E.ndim == 1:
        E = E[:, None]
    if E.ndim != 2:
        raise ValueError(f"exponent matrix must be 1-D or 2-D, got shape {E.shape}")
    if E.dtype != object and not np.issubdtype(E.dtype, np.integer):
        raise TypeError(f"exponents must be integers (int64 or object), got {E.dtype}")
    return E


def batch_invert(values: Sequence, modulus) -> list:
    """Inverses of all ``values`` mod ``modulus`` with one real inversion (Montgomery's trick)."""
    if not values:
        return []
    prefix, acc = [], None
    for v in values:
        acc = v if acc is None else acc * v % modulus
        prefix.append(acc)
    try:
        inv = gmpy2.invert(acc, modulus)
    except ZeroDivisionError:
        raise ValueError("a ciphertext is not invertible (it shares a factor with n)") from None
    out = [None] * len(values)
    for i in range(len(values) - 1, 0, -1):
        out[i] = inv * prefix[i - 1] % modulus
        inv = inv * values[i] % modulus
    out[0] = inv
    return out


def _choose_window(count: int, bits: int) -> int:
    """Window width minimising ``windows * (count + 2 ** (w + 1))`` multiplications."""
    best_w, best_cost = 1, None
    for w in range(1, min(bits, 20) + 1):
        cost = -(-bits // w) * (count + (2 << w))
        if best_cost is None or cost < best_cost:
            best_w, best_cost = w, cost
    return best_w


def _fold_buckets(buckets: list, modulus):
    """``prod_d buckets[d] ** d`` via running sums (2 multiplications per bucket)."""
    running = total = None
    for d in range(len(buckets) - 1, 0, -1):
        b = buckets[d]
        if b is not None:
            running = b if running is None else running * b % modulus
        if running is not None:
            total = running if total is None else total * running % modulus
    return total


def _column_product(bases: Sequence, col: np.ndarray, modulus):
    """``prod_i bases[i] ** col[i]`` for non-negative ``col``; None means 1."""
    nz = np.flatnonzero(col)
    if nz.size == 0:
        return None
    vals = col[nz]
    low = functools.reduce(operator.or_, vals.tolist())
    shift = (low & -low).bit_length() - 1  # common trailing zero bits
    if shift:
        vals = vals >> shift
    bits = int(vals.max()).bit_length()
    w = _choose_window(len(nz), bits)
    digit_mask = (1 << w) - 1
    selected = [bases[i] for i in nz.tolist()]
    acc = None
    for window in range(-(-bits // w) - 1, -1, -1):
        if acc is not None:
            acc = gmpy2.powmod(acc, 1 << w, modulus)
        buckets = [None] * (digit_mask + 1)
        digits = ((vals >> (window * w)) & digit_mask).tolist()
        for base, d in zip(selected, digits):
            if d:
                cur = buckets[d]
                buckets[d] = base if cur is None else cur * base % modulus
        total = _fold_buckets(buckets, modulus)
        if total is not None:
            acc = total if acc is None else acc * total % modulus
    if shift:
        acc = gmpy2.powmod(acc, 1 << shift, modulus)
    return acc


def _split_overhead(col: np.ndarray) -> int:
    """Extra multiplications the 'split' strategy spends on one column."""
    nz = np.count_nonzero(col)
    if nz == 0:
        return 0
    bits = int(col.max()).bit_length()
    w = _choose_window(nz, bits)
    return -(-bits // w) * (2 << w) + 6  # one more bucket fold per window, one inversion


def multiexp(bases: Sequence, exponents: np.ndarray, modulus) -> list:
    """For each column j of ``exponents`` (N x k, signed ints), ``prod_i bases[i] ** E[i, j] mod modulus``.

    Runs in this process; see :func:`multiexp_parallel` for the pooled version.
    A 1-D exponent vector is treated as one column.  Returns k mpz values.
    """
    E = _as_matrix(exponents)
    if len(bases) != E.shape[0]:
        raise ValueError(f"{len(bases)} bases but {E.shape[0]} exponent rows")
    modulus = gmpy2.mpz(modulus)
    one = gmpy2.mpz(1)
    neg = np.asarray(E < 0, dtype=bool)
    absE = np.abs(E)
    if not neg.any():
        return [_column_product(bases, absE[:, j], modulus) or one for j in range(E.shape[1])]

    neg_rows = np.flatnonzero(neg.any(axis=1))
    neg_cols = np.flatnonzero(neg.any(axis=0))
    cost_invert = 3 * len(neg_rows)
    cost_split = sum(_split_overhead(np.where(neg[:, j], absE[:, j], 0)) for j in neg_cols)
    out = []
    if cost_invert <= cost_split:
        inverses = dict(zip(neg_rows.tolist(), batch_invert([bases[i] for i in neg_rows], modulus)))
        for j in range(E.shape[1]):
            col_bases = list(bases)
            for i in np.flatnonzero(neg[:, j]).tolist():
                col_bases[i] = inverses[i]
            out.append(_column_product(col_bases, absE[:, j], modulus) or one)
    else:
        zero = absE.dtype.type(0) if absE.dtype != object else 0
        for j in range(E.shape[1]):
            pos = _column_product(bases, np.where(neg[:, j], zero, absE[:, j]), modulus)
            negp = _column_product(bases, np.where(neg[:, j], absE[:, j], zero), modulus)
            if negp is not None:
                (inv_neg,) = batch_invert([negp], modulus)
                pos = inv_neg if pos is None else pos * inv_neg % modulus
            out.append(pos or one)
    return out


def multiexp_parallel(bases: Sequence, exponents: np.ndarray, modulus) -> list:
    """:func:`multiexp` with rows split across the worker pool; partial column products are multiplied."""
    E = _as_matrix(exponents)
    bases = list(bases)
    if not pool.use_pool(len(bases)):
        return multiexp(bases, E, modulus)
    modulus = gmpy2.mpz(modulus)
    ranges = pool.split_ranges(len(bases), pool.num_workers())
    parts = pool.run(multiexp, [(bases[a:b], E[a:b], modulus) for a, b in ranges])
    out = parts[0]
    for part in parts[1:]:
        out = [x * y % modulus for x, y in zip(out, part)]
    return out


def powmod_many(bases: Sequence, exponents: Sequence, modulus) -> list:
    """Elementwise ``bases[i] ** exponents[i] mod modulus`` (negative exponents invert)."""
    modulus = gmpy2.mpz(modulus)
    return [gmpy2.powmod(b, int(e), modulus) for b, e in zip(bases, exponents)]


def powmod_many_parallel(bases: Sequence, exponents: Sequence, modulus) -> list:
    """:func:`powmod_many` split across the worker pool for large inputs."""
    bases, exponents = list(bases), [int(e) for e in exponents]
    if not pool.use_pool(len(bases)):
        return powmod_many(bases, exponents, modulus)
    ranges = pool.split_ranges(len(bases), 2 * pool.num_workers())
    parts = pool.run(powmod_many, [(bases[a:b], exponents[a:b], modulus) for a, b in ranges])
    return [x for part in parts for x in part]
