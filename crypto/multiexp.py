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

:func:`grouped_multiexp` computes many such products over subsets of the
rows at once (per-group sums for backpropagation): see the section comment
above it.
"""
from __future__ import annotations

import functools
import operator
from typing import Sequence

import gmpy2
import numpy as np

from crypto import backends
from crypto.arrays import object_array
from crypto.fixed_width import from_rows, to_rows, width_for


def _as_matrix(exponents: np.ndarray) -> np.ndarray:
    E = np.asarray(exponents)
    if E.ndim == 1:
        E = E[:, None]
    if E.ndim != 2:
        raise ValueError(f"exponent matrix must be 1-D or 2-D, got shape {E.shape}")
    if E.dtype == object:
        return E
    if not np.issubdtype(E.dtype, np.integer):
        raise TypeError(f"exponents must be integers (int64 or object), got {E.dtype}")
    # Fixed-width exponents are read through np.abs, which wraps at the type's minimum (np.abs(-2**63)
    # is -2**63): refuse |e| >= 2**62 as grouped_multiexp does; larger exponents go as Python ints.
    if E.size and (int(E.max()) >= 1 << _MAX_EXPONENT_BITS or int(E.min()) <= -(1 << _MAX_EXPONENT_BITS)):
        raise ValueError(f"fixed-width exponents must satisfy |e| < 2**{_MAX_EXPONENT_BITS}; "
                         "pass larger ones as Python ints (dtype=object)")
    return E.astype(np.int64, copy=False)


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


def _multiexp_rows(bases: np.ndarray, exponents: np.ndarray, modulus) -> np.ndarray:
    """Shard function: :func:`multiexp` on uint8 rows of bases; the column products as uint8 rows."""
    return to_rows(multiexp(from_rows(bases), exponents, modulus), width_for(modulus))


def multiexp_parallel(bases: Sequence, exponents: np.ndarray, modulus) -> list:
    """:func:`multiexp` with rows split across the backend's workers; partial column products are multiplied."""
    E = _as_matrix(exponents)
    bases = list(bases)
    if not backends.use_parallel(len(bases)):
        return multiexp(bases, E, modulus)
    modulus = gmpy2.mpz(modulus)
    packed = to_rows(bases, width_for(modulus))
    ranges = backends.split_ranges(len(bases), backends.workers())
    parts = [from_rows(p) for p in backends.run(_multiexp_rows, [(packed[a:b], E[a:b], modulus)
                                                                 for a, b in ranges])]
    out = parts[0]
    for part in parts[1:]:
        out = [x * y % modulus for x, y in zip(out, part)]
    return out


def powmod_many(bases: Sequence, exponents: Sequence, modulus) -> list:
    """Elementwise ``bases[i] ** exponents[i] mod modulus`` (negative exponents invert)."""
    modulus = gmpy2.mpz(modulus)
    return [gmpy2.powmod(b, int(e), modulus) for b, e in zip(bases, exponents)]


def _powmod_rows(bases: np.ndarray, exponents: Sequence, modulus) -> np.ndarray:
    """Shard function: :func:`powmod_many` on uint8 rows of bases; results as uint8 rows."""
    return to_rows(powmod_many(from_rows(bases), exponents, modulus), width_for(modulus))


def powmod_many_parallel(bases: Sequence, exponents: Sequence, modulus) -> list:
    """:func:`powmod_many` split across the backend's workers for large inputs."""
    bases, exponents = list(bases), [int(e) for e in exponents]
    if not backends.use_parallel(len(bases)):
        return powmod_many(bases, exponents, modulus)
    modulus = gmpy2.mpz(modulus)
    packed = to_rows(bases, width_for(modulus))
    ranges = backends.split_ranges(len(bases), 2 * backends.workers())
    parts = backends.run(_powmod_rows, [(packed[a:b], exponents[a:b], modulus) for a, b in ranges])
    return [x for part in parts for x in from_rows(part)]


# ---------------------------------------------------------------------------
# Grouped multi-exponentiation
#
# ``S_b[g, j] = prod_{(i, g) in pairs_b} bases[i] ** E_b[i, j]`` for several
# blocks b sharing the bases.  Pippenger per (g, j) would redo the work of a
# row for every group it is in; here each row's powers are computed once and
# reused by every group (and every block) that needs them:
#
# 1. Powering (fixed base, many exponents).  For one row, split the B-bit
#    exponents into W windows of widths w_t and tabulate
#    ``T_t[d] = base ** (d << s_t)`` (2**w_t entries, one multiplication each;
#    ``base ** (1 << s_{t+1})`` is one more).  An exponent then costs W - 1
#    multiplications (a zero digit multiplies by 1, which is nearly free).
#    Negative exponents: the exponent is read as a B-bit two's-complement
#    number whose top digit is signed, so the top table holds
#    ``T_top[d]`` for ``-2**(w-1) <= d < 2**(w-1)``: the negative half comes
#    from one inverse per row (batched, 3 multiplications) and costs as many
#    entries as the unsigned half it replaces.  A negative exponent costs the
#    same as a positive one.  W is chosen per row by counting:
#    ``sum_t 2**w_t + K * (W - 1)`` for the K non-zero exponents the row needs
#    (plain ``powmod`` if that is cheaper, for rows needing only a few).
#    Rows needing nothing (no membership, zero exponents) cost nothing.
#    The rows are processed in chunks, vectorised over the chunk.
# 2. Accumulation.  Each powered value is multiplied into ``S_b[g, j]`` for
#    every group g of the row.  Where rows belong to many groups of a block
#    (hidden units: a row is in about half of them), the groups are cut into
#    chunks of c and rows are first bucketed by their membership pattern in
#    the chunk (one multiplication per row and chunk instead of one per group
#    and row); group k of the chunk is then the product of the buckets whose
#    pattern contains k, for all k of the chunk in about 2**(c+1)
#    multiplications (product of the upper half gives the top group, folding
#    the upper half onto the lower one reduces c by one).  c, or no bucketing,
#    is chosen per block by counting; for 32 groups with half the rows each
#    this is about 2.7x fewer multiplications.
# 3. A block of few, large groups (a dense layer: one group of all rows) is
#    run by :func:`multiexp` per group instead when counting says that costs
#    less than what the block adds to the row tables (the bucket method
#    amortises its folds over the whole group, ~5 multiplications per term).
# ---------------------------------------------------------------------------

_ROW_CHUNK = 128          # rows whose tables are alive at once (typically ~250 mpz per row) ...
_TABLE_BUDGET = 1 << 17   # ... but at most this many table entries or powered values (32 MB at 2048 bits)
_MAX_WINDOW_BITS = 12
_MAX_PATTERN_BITS = 12
_MAX_EXPONENT_BITS = 62   # |E| < 2**62 (what encode_int64 produces)


def _powmod_cost(bits: int) -> float:
    """One ``gmpy2.powmod`` in units of a Python ``a * b % m`` (measured: ~20 at 26 bits, 2048-bit m)."""
    return 0.8 * bits + 2


def normalize_grouped_blocks(blocks, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Validate ``(E, rows, groups, n_groups)`` blocks for ``n`` bases; int64 copies, clear ``ValueError``s."""
    out = []
    for b, block in enumerate(blocks):
        try:
            E, rows, groups, n_groups = block
        except (TypeError, ValueError):
            raise ValueError(f"block {b}: expected (exponents, rows, groups, n_groups)") from None
        E = np.asarray(E)
        if E.ndim != 2 or E.shape[0] != n:
            raise ValueError(f"block {b}: exponent matrix must have shape ({n}, D), got {E.shape}")
        if E.dtype == object:
            try:
                E = E.astype(np.int64)
            except (OverflowError, TypeError, ValueError):
                raise ValueError(f"block {b}: exponents must be integers that fit in int64") from None
        elif not np.issubdtype(E.dtype, np.integer):
            raise TypeError(f"block {b}: exponents must be integers, got {E.dtype}")
        elif np.issubdtype(E.dtype, np.unsignedinteger) and E.size and int(E.max()) >= 1 << _MAX_EXPONENT_BITS:
            raise ValueError(f"block {b}: exponents must satisfy |e| < 2**{_MAX_EXPONENT_BITS}")
        E = E.astype(np.int64, copy=False)
        if E.size and int(np.max(np.abs(E.clip(-(1 << 62), 1 << 62)))) >= 1 << _MAX_EXPONENT_BITS:
            raise ValueError(f"block {b}: exponents must satisfy |e| < 2**{_MAX_EXPONENT_BITS}")
        if isinstance(n_groups, (bool, np.bool_)) or not isinstance(n_groups, (int, np.integer)) or n_groups < 0:
            raise ValueError(f"block {b}: n_groups must be a non-negative integer, got {n_groups!r}")
        n_groups = int(n_groups)
        idx = []
        for name, arr, limit in (("rows", rows, n), ("groups", groups, n_groups)):
            arr = np.asarray(arr)
            if arr.ndim != 1:
                raise ValueError(f"block {b}: {name} must be 1-D, got shape {arr.shape}")
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"block {b}: {name} must be integers, got {arr.dtype}")
            arr = arr.astype(np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= limit):
                raise ValueError(f"block {b}: {name} must lie in [0, {limit}), got values in "
                                 f"[{arr.min()}, {arr.max()}]")
            idx.append(arr)
        if idx[0].shape != idx[1].shape:
            raise ValueError(f"block {b}: rows and groups differ in length ({idx[0].size} vs {idx[1].size})")
        out.append((E, idx[0], idx[1], n_groups))
    return out


def _mulmod(xs: list, ys: list, modulus) -> list:
    return [x * y % modulus for x, y in zip(xs, ys)]


def _layout(bits: int, windows: int) -> list[int]:
    """Widths (low window first) splitting ``bits`` into ``windows`` near-equal windows."""
    step, extra = divmod(bits, windows)
    return [step] * (windows - extra) + [step + 1] * extra


def _table_cost(widths: list[int], signed: bool) -> int:
    return sum(1 << w for w in widths) - 2 + (3 if signed else 0)


def _plan_powering(K: np.ndarray, bits: int, signed: bool) -> tuple[np.ndarray, list, float]:
    """Per row with ``K > 0``: index into the returned options (a window layout or None = powmod), total cost."""
    options: list = [None]
    costs = [np.asarray(K, dtype=np.float64) * _powmod_cost(bits)]
    for W in range(max(1, -(-bits // _MAX_WINDOW_BITS)), bits + 1):
        widths = _layout(bits, W)
        options.append(widths)
        costs.append(_table_cost(widths, signed) + K * (W - 1.0))
    costs = np.stack(costs)
    choice = np.argmin(costs, axis=0)
    return choice, options, float(costs.min(axis=0).sum())


def _window_table(g: list, widths: list[int], signed: bool, modulus) -> list[list]:
    """Flat tables ``tab[t][u * m + r] = g[r] ** (digit(u) << s_t)`` for the chunk's m bases."""
    one = gmpy2.mpz(1)
    m = len(g)
    tables, cur = [], g
    for t, w in enumerate(widths):
        size = 1 << w
        if t == len(widths) - 1 and signed:
            half = size >> 1
            entries = [[one] * m]
            if half > 1:
                entries.append(cur)
            for _ in range(2, half):
                entries.append(_mulmod(entries[-1], cur, modulus))
            inv = batch_invert(cur, modulus)
            neg = [inv]  # neg[v - 1] = cur ** -v
            for _ in range(2, half + 1):
                neg.append(_mulmod(neg[-1], inv, modulus))
            entries.extend(reversed(neg))  # u = half .. size - 1 is the digit u - size
        else:
            entries = [[one] * m, cur]
            for _ in range(2, size):
                entries.append(_mulmod(entries[-1], cur, modulus))
            if t < len(widths) - 1:
                cur = _mulmod(entries[-1], cur, modulus)  # g ** (1 << (s_t + w))
        tables.append([x for e in entries for x in e])
    return tables


def _power_chunk(g: list, local_rows: np.ndarray, exps: np.ndarray, option, bits: int, signed: bool,
                 modulus) -> list:
    """``g[local_rows[k]] ** exps[k]`` for every k."""
    if option is None:
        return [gmpy2.powmod(g[r], e, modulus) for r, e in zip(local_rows.tolist(), exps.tolist())]
    widths = option
    tables = _window_table(g, widths, signed, modulus)
    m = len(g)
    u = exps & ((1 << bits) - 1)  # two's complement in `bits` bits (exps fit by construction)
    shifts = np.cumsum([0] + widths[:-1])
    top = len(widths) - 1
    tab = tables[top]
    acc = [tab[q] for q in (((u >> int(shifts[top])) * m) + local_rows).tolist()]
    for t in range(top - 1, -1, -1):
        tab = tables[t]
        q = (((u >> int(shifts[t])) & ((1 << widths[t]) - 1)) * m + local_rows).tolist()
        acc = [a * tab[k] % modulus for a, k in zip(acc, q)]
    return acc


def _bits_needed(vals: np.ndarray, signed: bool) -> int:
    if not signed:
        return max(1, int(vals.max()).bit_length())
    return max(int(vals.max()).bit_length(), int(-vals.min() - 1).bit_length()) + 1


def _plan_patterns(E_nnz: np.ndarray, rows: np.ndarray, groups: np.ndarray, D: int):
    """Chunk size c for membership-pattern bucketing (0: direct accumulation), the touched groups and
    the accumulation cost in multiplications."""
    direct = float(E_nnz[rows].sum())
    if rows.size == 0 or D == 0:
        return 0, None, direct
    touched, local = np.unique(groups, return_inverse=True)
    # duplicate pairs count twice: bucketing by a bit pattern cannot, so they use the direct path
    if np.unique(rows * len(touched) + local).size != rows.size:
        return 0, touched, direct
    best_c, best_cost = 0, direct * 0.95
    for c in range(2, min(_MAX_PATTERN_BITS, len(touched)) + 1):
        chunk = local // c
        n_chunks = -(-len(touched) // c)
        keys = np.unique(rows * n_chunks + chunk)
        sizes = [min(c, len(touched) - k * c) for k in range(n_chunks)]
        cost = float(E_nnz[keys // n_chunks].sum()) + D * sum(2 << s for s in sizes)
        if cost < best_cost:
            best_c, best_cost = c, cost
    return best_c, touched, (best_cost if best_c else direct)


def _fold_patterns(buckets: list, c: int, D: int, modulus) -> list[list]:
    """``G[k][j] = prod over patterns p with bit k of buckets[p * D + j]`` for k < c."""
    P = buckets
    out = [None] * c
    for k in range(c - 1, -1, -1):
        half = 1 << k
        total = P[half * D:(half + 1) * D]
        for p in range(half + 1, 2 * half):
            total = _mulmod(total, P[p * D:(p + 1) * D], modulus)
        out[k] = total
        if k:
            lower = P[:half * D]
            lower[D:] = _mulmod(P[D:half * D], P[(half + 1) * D:2 * half * D], modulus)
            P = lower
    return out


def _row_classes(blocks, needed: list, n: int) -> tuple[list, float]:
    """Powering plan for the rows: ``[(rows, bits, signed, option)]`` and its cost in multiplications."""
    K = sum((nd.sum(axis=1) for nd in needed), np.zeros(n, dtype=np.int64))
    has_neg = np.zeros(n, dtype=bool)
    for (E, *_), nd in zip(blocks, needed):
        has_neg |= ((E < 0) & nd).any(axis=1)
    classes, cost = [], 0.0
    for signed in (False, True):  # signed rows need one more bit and an inverse
        cls_rows = np.flatnonzero((K > 0) & (has_neg == signed))
        if cls_rows.size == 0:
            continue
        vals = np.concatenate([E[cls_rows][nd[cls_rows]] for (E, *_), nd in zip(blocks, needed)])
        bits = _bits_needed(vals, signed)
        choice, options, class_cost = _plan_powering(K[cls_rows], bits, signed)
        cost += class_cost
        for o in np.unique(choice):
            classes.append((cls_rows[choice == o], bits, signed, options[o]))
    return classes, cost


def _pippenger_cost(E: np.ndarray, rows: np.ndarray, groups: np.ndarray, n_groups: int, need: np.ndarray) -> float:
    """Multiplications of :func:`multiexp` run per group over the group's members (bucket method)."""
    D = E.shape[1]
    cnt = np.zeros((n_groups, D), dtype=np.float64)
    np.add.at(cnt, groups, need[rows])
    bits = max(1, int(np.abs(E[need]).max()).bit_length()) if need.any() else 1
    best = None
    for w in range(1, min(bits, 20) + 1):
        c = -(-bits // w) * (cnt + (2 << w))
        best = c if best is None else np.minimum(best, c)
    negative_rows = np.unique(rows[((E < 0) & need)[rows].any(axis=1)]).size
    return float(np.where(cnt > 0, best + bits, 0.0).sum()) + 3.0 * negative_rows


def _pippenger_block(bases: list, E: np.ndarray, rows: np.ndarray, groups: np.ndarray, modulus):
    """A block by :func:`multiexp` per group: best when groups are few and large (a dense layer)."""
    srt = np.argsort(groups, kind="stable")
    rows, groups = rows[srt], groups[srt]
    ids, starts = np.unique(groups, return_index=True)
    flat = []
    for a, b in zip(starts.tolist(), starts[1:].tolist() + [rows.size]):
        members = rows[a:b]
        flat.extend(multiexp([bases[i] for i in members.tolist()], E[members], modulus))
    return ids, flat


def _grouped_sparse(bases: Sequence, blocks, modulus) -> list[tuple[np.ndarray, list]]:
    """Core of :func:`grouped_multiexp` on validated blocks.

    Per block: (ids of the groups that have members, flat list of their
    ``len(ids) * D`` products, row-major).  Groups not listed are empty (1).
    """
    modulus = gmpy2.mpz(modulus)
    bases = [gmpy2.mpz(x) for x in bases]
    n = len(bases)

    # what each row needs from each block, and how each block accumulates
    needed, plans = [], []
    for E, rows, groups, n_groups in blocks:
        member = np.zeros(n, dtype=bool)
        member[rows] = True
        need = (E != 0) & member[:, None]
        needed.append(need)
        plans.append(_plan_patterns(need.sum(axis=1), rows, groups, E.shape[1]))

    # blocks of few, large groups (a dense layer) may be cheaper by Pippenger per group than by
    # the row tables: compare with what the block adds to the table plan
    table_set = list(range(len(blocks)))
    _, table_cost = _row_classes(blocks, needed, n)
    for k, (E, rows, groups, n_groups) in enumerate(blocks):
        if rows.size < 32 * max(1, np.unique(groups).size):
            continue
        rest = [i for i in table_set if i != k]
        _, rest_cost = _row_classes([blocks[i] for i in rest], [needed[i] for i in rest], n)
        saved = table_cost - rest_cost + plans[k][2]
        if _pippenger_cost(E, rows, groups, n_groups, needed[k]) < saved:
            table_set, table_cost = rest, rest_cost
    out: list = [None] * len(blocks)
    for k in set(range(len(blocks))) - set(table_set):
        E, rows, groups, _ = blocks[k]
        out[k] = _pippenger_block(bases, E, rows, groups, modulus)
    if table_set:
        for k, res in zip(table_set, _table_sparse(bases, [blocks[i] for i in table_set],
                                                   [needed[i] for i in table_set],
                                                   [plans[i] for i in table_set], modulus)):
            out[k] = res
    return out


def _alias_columns(blocks, needed: list) -> tuple[list, list[tuple[int, int, int, int]]]:
    """Identical exponent columns (in any blocks) are powered once.

    Blocks often repeat a coefficient column: a per-row clipping scale times 1 is the bias
    column of a hidden layer and the coefficient of every wide (per-category) block; clipped
    numeric columns feed both a hidden layer and a wide part.  Returns the needs to power
    (the first of equal columns needs every row any of them needs; the others nothing) and
    the aliases ``(block, column, first block, first column)``.
    """
    power = [nd.copy() for nd in needed]
    first: dict[bytes, tuple[int, int]] = {}
    aliases = []
    for b, (E, *_) in enumerate(blocks):
        for j in range(E.shape[1]):
            if not needed[b][:, j].any():
                continue
            b0, j0 = first.setdefault(np.ascontiguousarray(E[:, j]).tobytes(), (b, j))
            if (b0, j0) != (b, j):
                power[b0][:, j0] |= power[b][:, j]
                power[b][:, j] = False
                aliases.append((b, j, b0, j0))
    return power, aliases


def _table_sparse(bases: list, blocks, needed: list, plans: list, modulus) -> list[tuple[np.ndarray, list]]:
    """The row-table path of :func:`_grouped_sparse` (powering plan, accumulation, pattern folds)."""
    one = gmpy2.mpz(1)
    n = len(bases)
    power, aliases = _alias_columns(blocks, needed)
    classes, _ = _row_classes(blocks, power, n)
    K = sum((nd.sum(axis=1) for nd in power), np.zeros(n, dtype=np.int64))  # powered values per row

    order = np.concatenate([c[0] for c in classes]) if classes else np.zeros(0, dtype=np.int64)
    pos = np.full(n, -1, dtype=np.int64)
    pos[order] = np.arange(order.size)

    # accumulators; pairs sorted by their row's processing position
    accs, pair_data = [], []
    for (E, rows, groups, n_groups), need, (c, touched, _) in zip(blocks, needed, plans):
        D = E.shape[1]
        if c:
            local = np.searchsorted(touched, groups)
            n_chunks = -(-len(touched) // c)
            pat = np.zeros((n, n_chunks), dtype=np.int64)
            np.bitwise_or.at(pat, (rows, local // c), np.left_shift(1, local % c))
            accs.append([one] * (n_chunks << c) * D)  # bucket (chunk, pattern, j)
            pair_data.append(pat)
        else:
            p = pos[rows]
            keep = p >= 0  # rows with nothing to contribute
            srt = np.argsort(p[keep], kind="stable")
            accs.append([one] * (n_groups * D))
            pair_data.append((p[keep][srt], groups[keep][srt]))

    start = 0
    for cls_rows, bits, signed, option in classes:
        entries = sum(1 << w for w in option) if option is not None else 1
        step = max(1, min(_ROW_CHUNK, _TABLE_BUDGET // entries, _TABLE_BUDGET // int(K[cls_rows].max())))
        for a in range(0, cls_rows.size, step):
            chunk_rows = cls_rows[a:a + step]
            lo, hi = start + a, start + a + chunk_rows.size
            g = [bases[i] for i in chunk_rows.tolist()]
            # every exponent the chunk needs, once
            idx_maps, lr_parts, e_parts, offset = [], [], [], 0
            for (E, *_), need in zip(blocks, power):
                sub = need[chunk_rows]
                rr, jj = np.nonzero(sub)
                imap = np.full(sub.shape, -1, dtype=np.int64)
                imap[rr, jj] = offset + np.arange(rr.size)
                offset += rr.size
                idx_maps.append(imap)
                lr_parts.append(rr)
                e_parts.append(E[chunk_rows[rr], jj])
            if offset == 0:
                continue
            for b, j, b0, j0 in aliases:  # a column equal to an earlier one reads its powers
                idx_maps[b][:, j] = np.where(needed[b][chunk_rows, j], idx_maps[b0][:, j0], -1)
            values = _power_chunk(g, np.concatenate(lr_parts), np.concatenate(e_parts), option, bits, signed,
                                  modulus)
            for (E, rows, groups, n_groups), imap, (c, *_), acc, data in zip(
                    blocks, idx_maps, plans, accs, pair_data):
                D = E.shape[1]
                if D == 0:
                    continue
                if c:
                    pat = data[chunk_rows]  # (m, n_chunks)
                    rr, kk = np.nonzero(pat)
                    slots = ((kk << c) + pat[rr, kk]) * D
                    src = imap[rr]
                else:
                    p_sorted, pgrp = data
                    s0, s1 = np.searchsorted(p_sorted, [lo, hi])
                    if s0 == s1:
                        continue
                    slots = pgrp[s0:s1] * D
                    src = imap[p_sorted[s0:s1] - lo]
                keys = slots[:, None] + np.arange(D)
                mask = src >= 0
                for k, q in zip(keys[mask].tolist(), src[mask].tolist()):
                    acc[k] = acc[k] * values[q] % modulus
        start += cls_rows.size

    out = []
    for (E, rows, groups, n_groups), (c, touched, _), acc in zip(blocks, plans, accs):
        D = E.shape[1]
        if c:
            flat = []
            for k in range(-(-len(touched) // c)):
                size = min(c, len(touched) - k * c)
                base = (k << c) * D
                sub = acc[base:base + (D << size)]  # patterns of a short last chunk stay below 2**size
                for vec in _fold_patterns(sub, size, D, modulus):
                    flat.extend(vec)
            out.append((touched, flat))
        else:
            ids = np.unique(groups)
            flat = [x for gid in ids.tolist() for x in acc[gid * D:(gid + 1) * D]]
            out.append((ids, flat))
    return out


def _dense(sparse: tuple[np.ndarray, list], n_groups: int, D: int) -> np.ndarray:
    ids, flat = sparse
    out = np.empty((n_groups, D), dtype=object)
    out.fill(gmpy2.mpz(1))
    if len(ids) and D:
        out[np.asarray(ids, dtype=np.int64)] = object_array(flat, (len(ids), D))
    return out


def _strip_common_zeros(blocks) -> tuple[list, list[np.ndarray]]:
    """Divide every block column by the largest power of two dividing all its members' exponents.

    ``S ** (2**k)`` from exponents ``k`` bits shorter: integer-valued columns (a bias, one-hot
    or a count, encoded with fractional bits) and coefficients rounded to fewer bits than they
    are encoded with then cost what their significant bits cost; :func:`_restore_zeros` squares
    the products back (``k`` squarings per product, in C).
    """
    out, shifts = [], []
    for E, rows, groups, n_groups in blocks:
        if E.size == 0 or rows.size == 0:
            out.append((E, rows, groups, n_groups))
            shifts.append(np.zeros(E.shape[1], dtype=np.int64))
            continue
        low = np.bitwise_or.reduce(np.abs(E[np.unique(rows)]), axis=0)
        lowest = low & -low
        shift = np.zeros(E.shape[1], dtype=np.int64)
        nz = lowest > 0
        shift[nz] = np.round(np.log2(lowest[nz].astype(np.float64))).astype(np.int64)
        out.append((E >> shift if shift.any() else E, rows, groups, n_groups))
        shifts.append(shift)
    return out, shifts


def _restore_zeros(results: list[np.ndarray], shifts: list[np.ndarray], modulus) -> list[np.ndarray]:
    """Undo :func:`_strip_common_zeros`: raise column j of each block's products to ``2**shift[j]``."""
    for S, shift in zip(results, shifts):
        for j in np.flatnonzero(shift).tolist():
            col = S[:, j].tolist()
            S[:, j] = object_array(gmpy2.powmod_base_list(col, 1 << int(shift[j]), modulus))
    return results


def grouped_multiexp(bases: Sequence, blocks, modulus) -> list[np.ndarray]:
    """Per block ``(E, rows, groups, n_groups)``: ``S[g, j] = prod_{t: groups[t] = g} bases[rows[t]] ** E[rows[t], j]``.

    ``E`` is a signed integer matrix of shape (len(bases), D) (|e| < 2**62);
    ``rows`` and ``groups`` are equal-length index arrays (COO membership:
    row ``rows[t]`` belongs to group ``groups[t]`` of the block; a row may be
    in any number of groups; a pair listed twice counts twice).  Returns, per
    block, an object array of mpz of shape (n_groups, D); empty products are
    1.  All blocks share each row's power table, so adding a block costs its
    exponents and memberships, not another pass over the bases.  Runs in
    this process; see :func:`grouped_multiexp_parallel`.
    """
    bases = list(bases)
    blocks, shifts = _strip_common_zeros(normalize_grouped_blocks(blocks, len(bases)))
    sparse = _grouped_sparse(bases, blocks, modulus)
    return _restore_zeros([_dense(s, ng, E.shape[1]) for s, (E, _, _, ng) in zip(sparse, blocks)], shifts,
                          gmpy2.mpz(modulus))


def _grouped_rows(bases: np.ndarray, blocks, modulus) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shard function: :func:`_grouped_sparse` on uint8 rows of bases; each block's products as uint8 rows."""
    width = width_for(modulus)
    return [(ids, to_rows(flat, width)) for ids, flat in _grouped_sparse(from_rows(bases), blocks, modulus)]


def grouped_multiexp_parallel(bases: Sequence, blocks, modulus) -> list[np.ndarray]:
    """:func:`grouped_multiexp` with rows split across the backend's workers; partial products are multiplied.

    Each worker receives its slice of the bases, of every exponent matrix and
    the pairs of its rows, and returns only the groups its rows touch.
    """
    bases = list(bases)
    blocks, shifts = _strip_common_zeros(normalize_grouped_blocks(blocks, len(bases)))
    n = len(bases)
    if not backends.use_parallel(n):
        sparse = _grouped_sparse(bases, blocks, modulus)
        return _restore_zeros([_dense(s, ng, E.shape[1]) for s, (E, _, _, ng) in zip(sparse, blocks)], shifts,
                              gmpy2.mpz(modulus))
    modulus = gmpy2.mpz(modulus)
    packed = to_rows(bases, width_for(modulus))
    ranges = backends.split_ranges(n, backends.workers())
    args = []
    for a, b in ranges:
        sub = []
        for E, rows, groups, ng in blocks:
            sel = (rows >= a) & (rows < b)
            sub.append((E[a:b], rows[sel] - a, groups[sel], ng))
        args.append((packed[a:b], sub, modulus))
    parts = [[(ids, from_rows(flat)) for ids, flat in part] for part in backends.run(_grouped_rows, args)]
    out = []
    for k, (E, _, _, ng) in enumerate(blocks):
        D = E.shape[1]
        merged: dict[int, list] = {}
        for part in parts:
            ids, flat = part[k]
            for r, gid in enumerate(ids.tolist()):
                vec = flat[r * D:(r + 1) * D]
                prev = merged.get(gid)
                merged[gid] = vec if prev is None else _mulmod(prev, vec, modulus)
        ids = np.fromiter(merged.keys(), dtype=np.int64, count=len(merged))
        flat = [x for vec in merged.values() for x in vec]
        out.append(_dense((ids, flat), ng, D))
    return _restore_zeros(out, shifts, modulus)
