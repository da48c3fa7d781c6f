"""Paillier throughput: ours (DJN / standard, pooled / single process) vs plain phe,
and the gradient product ``X.T @ [[d]]`` vs a per-element powmod loop.

    python benchmarks/bench_paillier.py [--bits 2048] [--n 24000] [--k 23]

Medians over ``--repeats`` runs.  Baselines that would take minutes are timed on
a sample and extrapolated; the output says so.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import gmpy2
import numpy as np
import phe

from crypto import EncryptedArray, generate_keypair, pool
from crypto.encoding import encode_int64
from crypto.multiexp import multiexp
from crypto.paillier import _DJN_WINDOW_BITS, _crt_zeros, _decrypt_chunk, _djn_table, _encrypt_chunk


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_timed_multiexp(bases, E, modulus) -> float:
    """Worker CPU seconds for one pool share of the product (immune to other load)."""
    t0 = time.process_time()
    multiexp(bases, E, modulus)
    return time.process_time() - t0


def row(name: str, ours: str, base: str = "", ratio: str = "") -> None:
    print(f"{name:<46} {ours:>18} {base:>22} {ratio:>8}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--n", type=int, default=24000, help="rows of X / length of [[d]]")
    ap.add_argument("--k", type=int, default=23, help="columns of X")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--enc-count", type=int, default=4000, help="values per DJN encryption run")
    ap.add_argument("--sample", type=int, default=60, help="values per slow-baseline run")
    ap.add_argument("--loop-rows", type=int, default=400, help="rows timed for the powmod-loop baseline")
    args = ap.parse_args()
    workers = pool.num_workers()
    rng = np.random.default_rng(0)

    t0 = time.perf_counter()
    pk, sk = generate_keypair(args.bits)
    print(f"key: {args.bits} bits, generated in {time.perf_counter() - t0:.1f} s; workers: {workers}; "
          f"median of {args.repeats} runs; load average at start {os.getloadavg()[0]:.2f}")
    n, hs = int(pk.n), int(pk._djn_base())
    t0 = time.perf_counter()
    _djn_table(n, hs)
    print(f"DJN fixed-base table ({_DJN_WINDOW_BITS}-bit windows): built in {time.perf_counter() - t0:.2f} s "
          "per process")
    pool.warm_up()
    pk.encrypt_raw(np.zeros(4 * workers * 64, dtype=object))  # workers build their tables

    phe_pk = phe.PaillierPublicKey(n)
    phe_sk = phe.PaillierPrivateKey(phe_pk, int(sk.p), int(sk.q))
    plains = [int(v) for v in rng.integers(-2**40, 2**40, size=args.enc_count)]
    small = plains[:args.sample]
    std_count = max(pool.MIN_PARALLEL, 4 * args.sample)  # enough to go to the pool
    floats = [float(v) for v in rng.normal(size=args.sample)]

    print()
    row("operation", "ours", "baseline", "ratio")
    row("-" * 46, "-" * 18, "-" * 22, "-" * 8)
    t_phe_enc = timed(lambda: [phe_pk.encrypt(x) for x in floats], args.repeats) / len(floats)
    phe_rate = 1 / t_phe_enc
    results = {}
    for label, fn, count in [
        ("encrypt djn, pool", lambda: pk.encrypt_raw(plains), len(plains)),
        ("encrypt djn, 1 process", lambda: _encrypt_chunk(n, hs, "djn", plains[:1000]), 1000),
        ("encrypt standard (r^n via phe), pool", lambda: pk.encrypt_raw(plains[:std_count], mode="standard"),
         std_count),
        ("encrypt standard, 1 process", lambda: _encrypt_chunk(n, None, "standard", small), len(small)),
        # what the arbiter sends the others (randomness = "arbiter"): Enc(0) made with the factorisation
        ("Enc(0) with p, q (CRT), pool", lambda: sk.zeros(len(plains)), len(plains)),
        ("Enc(0) with p, q (CRT), 1 process", lambda: _crt_zeros(int(sk.p), int(sk.q), hs, "djn", 1000),
         1000),
    ]:
        rate = count / timed(fn, args.repeats)
        results[label] = rate
        row(f"{label} [values/s]", f"{rate:,.0f}", f"phe.encrypt {phe_rate:,.0f}", f"{rate / phe_rate:.1f}x")
    print(f"{'':<46} djn per core: {results['encrypt djn, 1 process']:,.0f} values/s (target >= 1,000); "
          f"CRT Enc(0) / public-key djn: "
          f"{results['Enc(0) with p, q (CRT), 1 process'] / results['encrypt djn, 1 process']:.2f}x")

    cts = pk.encrypt_raw(plains)
    phe_cts = [phe.EncryptedNumber(phe_pk, int(c), 0) for c in cts[:args.sample]]
    t_phe_dec = timed(lambda: [phe_sk.decrypt(c) for c in phe_cts], args.repeats) / len(phe_cts)
    t_phe_raw = timed(lambda: [phe_sk.raw_decrypt(int(c)) for c in cts[:args.sample]], args.repeats) / args.sample
    dec_pool = len(cts) / timed(lambda: sk.decrypt_raw(cts), args.repeats)
    dec_one = 500 / timed(lambda: _decrypt_chunk(int(sk.p), int(sk.q), list(cts[:500])), args.repeats)
    row("decrypt, pool [values/s]", f"{dec_pool:,.0f}", f"phe.decrypt {1 / t_phe_dec:,.0f}", f"{dec_pool * t_phe_dec:.1f}x")
    row("decrypt, 1 process [values/s]", f"{dec_one:,.0f}", f"phe.raw_decrypt {1 / t_phe_raw:,.0f}",
        f"{dec_one * t_phe_raw:.2f}x")

    # ---- X.T @ [[d]]
    N, k = args.n, args.k
    X = rng.normal(size=(N, k))
    d = np.tanh(rng.normal(size=N))
    t0 = time.perf_counter()
    enc_d = EncryptedArray.encrypt(pk, d)
    t_enc_d = time.perf_counter() - t0
    row(f"encrypt [[d]] ({N:,} values, pool) [s]", f"{t_enc_d:.2f}", "", "")
    E = encode_int64(X, 24)
    bits = int(np.abs(E).max()).bit_length()

    t_ours = timed(lambda: enc_d.rmatmul(X), args.repeats)
    got = enc_d.rmatmul(X).decrypt(sk)
    err = float(np.max(np.abs(got - X.T @ d)))
    bases = enc_d.ciphertexts.tolist()
    t_single = timed(lambda: multiexp(bases, E, pk.nsquare), 1)

    shares = [(bases[a:b], E[a:b], pk.nsquare) for a, b in pool.split_ranges(N, workers)]
    cpu_share = max(pool.run(_cpu_timed_multiexp, shares))
    t_16 = timed(lambda: enc_d.rmatmul(X, x_frac_bits=16), 1)
    rows = min(args.loop_rows, N)
    n2 = pk.nsquare

    def loop() -> None:
        for j in range(k):
            acc = gmpy2.mpz(1)
            for i in range(rows):
                acc = acc * gmpy2.powmod(bases[i], int(E[i, j]), n2) % n2

    t_loop = timed(loop, 1) * N / rows
    row(f"X.T @ [[d]] ({N:,} x {k}), pool [s]", f"{t_ours:.2f}", f"powmod loop* {t_loop:.1f}", f"{t_loop / t_ours:.1f}x")
    row(f"X.T @ [[d]] ({N:,} x {k}), 1 process [s]", f"{t_single:.2f}", f"powmod loop* {t_loop:.1f}",
        f"{t_loop / t_single:.1f}x")
    row("  pool share: busiest worker's CPU time [s]", f"{cpu_share:.2f}", "(= pool time if idle)", "")
    row("X.T @ [[d]] with x_frac_bits=16, pool [s]", f"{t_16:.2f}", "", "")
    print(f"\n* per-element gmpy2.powmod loop (1 process) timed on {rows} of {N:,} rows and extrapolated x{N / rows:.0f}.")
    print(f"  exponents: X ~ N(0,1) with 24 fractional bits -> up to {bits} bits + sign; target <= 10 s.")
    print(f"  max |decrypted - X.T @ d| = {err:.2e}")
    print(f"  load average at end {os.getloadavg()[0]:.2f} (pool figures need idle cores: on a busy machine "
          "they fall towards the 1-process ones)")


if __name__ == "__main__":
    main()
