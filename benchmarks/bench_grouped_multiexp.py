"""Grouped multi-exponentiation (homomorphic backprop through ReLU layers and embedding tables) vs baselines.

    python benchmarks/bench_grouped_multiexp.py [--key-bits 1024] [--n 1024] [--repeats 3]

Workload (one batch of n rows, shared ciphertexts [[d_i]], exponents = floats
encoded with 24 fractional bits, |x| < 8, so up to 27 bits, signed):

* A   hidden layer: D=35, 32 groups (units), each row active in each unit w.p. 1/2
* B1-B4 embedding tables: D=8, 300 / 500 / 700 / 1000 groups, each row in one
* C   dense layer: D=32, one group with all rows

Timed (medians over ``--repeats`` runs): ``grouped_multiexp`` in one process
and on the pool (plus the CPU seconds of the busiest worker share, which
other load on the machine does not inflate); the same kernel called once per
block (no sharing of the row tables); one ``powmod`` per (pair, column)
multiplied into the group; one ``powmod`` per (row, column) reused by every
group of the row; and the existing Pippenger ``multiexp`` run per group on
the dense exponent matrix masked by membership.  The baselines are timed on a
sample (of rows or groups) and extrapolated; the output says so.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import gmpy2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto import EncryptedArray, generate_keypair, pool  # noqa: E402
from crypto.encoding import encode_int64  # noqa: E402
from crypto.multiexp import (_grouped_sparse, grouped_multiexp, grouped_multiexp_parallel,  # noqa: E402
                             multiexp, normalize_grouped_blocks)

BLOCK_NAMES = ["A", "B1", "B2", "B3", "B4", "C"]


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_timed_grouped(bases, blocks, modulus) -> float:
    """Worker CPU seconds for one pool share of the kernel."""
    t0 = time.process_time()
    _grouped_sparse(bases, blocks, modulus)
    return time.process_time() - t0


def make_blocks(rng, n: int):
    def exps(D):
        return encode_int64(np.clip(rng.normal(scale=2.0, size=(n, D)), -7.99, 7.99), 24)

    all_rows = np.arange(n)
    rows_a, groups_a = np.nonzero(rng.random((n, 32)) < 0.5)
    blocks = [(exps(35), rows_a, groups_a, 32)]
    for n_groups in (300, 500, 700, 1000):
        blocks.append((exps(8), all_rows, rng.integers(0, n_groups, n), n_groups))
    blocks.append((exps(32), all_rows, np.zeros(n, dtype=np.int64), 1))
    return blocks


def restrict_rows(blocks, keep: np.ndarray):
    """The blocks with only the pairs of rows in ``keep`` (a boolean mask)."""
    return [(E, rows[keep[rows]], groups[keep[rows]], ng) for E, rows, groups, ng in blocks]


def naive_per_pair(bases, blocks, modulus):
    """One powmod per (pair, column), multiplied into the group's accumulator."""
    out = []
    for E, rows, groups, ng in blocks:
        D = E.shape[1]
        acc = [gmpy2.mpz(1)] * (ng * D)
        El = E.tolist()
        for r, g in zip(rows.tolist(), groups.tolist()):
            b, e = bases[r], El[r]
            for j in range(D):
                acc[g * D + j] = acc[g * D + j] * gmpy2.powmod(b, e[j], modulus) % modulus
        out.append(acc)
    return out


def naive_per_row(bases, blocks, modulus):
    """One powmod per (member row, column), reused by every group of the row."""
    out = []
    for E, rows, groups, ng in blocks:
        D = E.shape[1]
        acc = [gmpy2.mpz(1)] * (ng * D)
        powered = {}
        El = E.tolist()
        for r in np.unique(rows).tolist():
            powered[r] = [gmpy2.powmod(bases[r], e, modulus) for e in El[r]]
        for r, g in zip(rows.tolist(), groups.tolist()):
            p = powered[r]
            for j in range(D):
                acc[g * D + j] = acc[g * D + j] * p[j] % modulus
        out.append(acc)
    return out


def pippenger_per_group(bases, block, modulus, group_ids):
    """Existing ``multiexp`` on the dense exponent matrix masked by each group's membership."""
    E, rows, groups, _ = block
    out = []
    for g in group_ids:
        member = np.zeros(E.shape[0], dtype=bool)
        member[rows[groups == g]] = True
        out.append(multiexp(bases, np.where(member[:, None], E, 0), modulus))
    return out


def row(name: str, seconds: float, note: str = "", ref: float | None = None) -> None:
    ratio = f"{seconds / ref:7.1f}x" if ref else ""
    print(f"{name:<58} {seconds:9.3f} s {ratio:>9}  {note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--key-bits", type=int, default=1024, help="Paillier key size (modulus n^2 has twice that)")
    ap.add_argument("--n", type=int, default=1024, help="rows in the batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample-rows", type=int, default=32, help="rows timed for the powmod baselines")
    ap.add_argument("--sample-groups", type=int, default=24, help="groups per block timed for Pippenger")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.n

    t0 = time.perf_counter()
    pk, _ = generate_keypair(args.key_bits)
    n2 = pk.nsquare
    pool.warm_up()
    bases = EncryptedArray.encrypt(pk, rng.normal(size=n)).ciphertexts.tolist()
    blocks = normalize_grouped_blocks(make_blocks(rng, n), n)
    print(f"setup {time.perf_counter() - t0:.1f} s; {args.key_bits}-bit key ({2 * args.key_bits}-bit modulus), "
          f"n={n}, workers={pool.num_workers()}, repeats={args.repeats}")
    for name, (E, rows, groups, ng) in zip(BLOCK_NAMES, blocks):
        bits = int(np.abs(E).max()).bit_length()
        print(f"  block {name:<3} D={E.shape[1]:<3} groups={ng:<5} pairs={rows.size:<6} "
              f"max |e| bits={bits}  (e<0: {np.mean(E < 0):.0%})")
    pairs_x_cols = sum(rows.size * E.shape[1] for E, rows, _, _ in blocks)
    rows_x_cols = sum(n * E.shape[1] for E, _, _, _ in blocks)
    print(f"  {pairs_x_cols} (pair, column) terms, {rows_x_cols} (row, column) exponents\n")

    # ours
    single = grouped_multiexp(bases, blocks, n2)
    pooled = grouped_multiexp_parallel(bases, blocks, n2)
    assert all((a == b).all() for a, b in zip(single, pooled)), "pool result differs"
    t_single = timed(lambda: grouped_multiexp(bases, blocks, n2), args.repeats)
    t_pool = timed(lambda: grouped_multiexp_parallel(bases, blocks, n2), args.repeats)
    shares = []
    for a, b in pool.split_ranges(n, pool.num_workers()):
        sub = [(E[a:b], rows[(rows >= a) & (rows < b)] - a, groups[(rows >= a) & (rows < b)], ng)
               for E, rows, groups, ng in blocks]
        shares.append((bases[a:b], sub, n2))
    cpu_share = statistics.median(max(pool.run(_cpu_timed_grouped, shares)) for _ in range(args.repeats))
    t_blockwise = timed(lambda: [grouped_multiexp(bases, [blk], n2) for blk in blocks], args.repeats)

    # correctness spot check against the naive reference on a sample of rows
    keep = np.zeros(n, dtype=bool)
    keep[rng.choice(n, size=min(args.sample_rows, n), replace=False)] = True
    sample = restrict_rows(blocks, keep)
    ref = naive_per_pair(bases, sample, n2)
    assert all(list(S.ravel()) == r for S, r in zip(grouped_multiexp(bases, sample, n2), ref)), "mismatch"

    # baselines on samples
    scale_rows = n / keep.sum()
    t_pair = timed(lambda: naive_per_pair(bases, sample, n2), args.repeats) * scale_rows
    t_row = timed(lambda: naive_per_row(bases, sample, n2), args.repeats) * scale_rows
    pip_blocks = []
    for name, blk in zip(BLOCK_NAMES, blocks):
        ng = blk[3]
        ids = np.sort(rng.choice(ng, size=min(args.sample_groups, ng), replace=False))
        t = timed(lambda: pippenger_per_group(bases, blk, n2, ids), args.repeats) * ng / len(ids)
        pip_blocks.append((name, t, len(ids), ng))
    t_pip = sum(t for _, t, _, _ in pip_blocks)

    print(f"{'method':<58} {'time':>11} {'vs pool':>9}")
    row("grouped_multiexp_parallel (pool)", t_pool, "", t_pool)
    row(f"  busiest worker share, CPU seconds ({pool.num_workers()} shares)", cpu_share)
    row("grouped_multiexp (one process)", t_single, "", t_pool)
    row("grouped_multiexp one block at a time (one process)", t_blockwise, "", t_pool)
    row("naive: powmod per (row, column), reused across groups", t_row,
        f"[{keep.sum()} rows timed, x{scale_rows:.0f}]", t_pool)
    row("naive: powmod per (pair, column)", t_pair, f"[{keep.sum()} rows timed, x{scale_rows:.0f}]", t_pool)
    row("multiexp (Pippenger) per group on masked dense E", t_pip, "[sampled groups, see below]", t_pool)
    for name, t, k, ng in pip_blocks:
        row(f"  block {name}", t, f"[{k} of {ng} groups timed]" if k < ng else "")


if __name__ == "__main__":
    main()
