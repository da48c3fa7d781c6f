"""End-to-end PSI wall time: guest + one host as threads over the in-memory channel.

    python benchmarks/bench_psi.py [--sizes 100000 1000000] [--overlap 0.5] [-v]

Both parties share this machine (and one worker pool), as in ``vfl run``, so
the wall time is bounded below by the 4n X25519 multiplications spread over
all cores: the table shows that floor next to the measured time, from the
single-core rate measured first.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto import pool  # noqa: E402
from crypto.psi import POOL_THRESHOLD, PsiKey, hash_ids  # noqa: E402
from vfl.channel import LocalNetwork  # noqa: E402
from vfl.psi import psi_guest, psi_host  # noqa: E402


def single_core_rate(points: int = POOL_THRESHOLD - 1) -> float:
    """X25519 scalar multiplications per second on one core (in-process: below the pool threshold)."""
    pts = hash_ids(np.array([str(i) for i in range(points)]))
    key = PsiKey()
    key.blind(pts[:1000])                               # warm up
    t = time.perf_counter()
    key.blind(pts)
    return points / (time.perf_counter() - t)


def make_sets(n: int, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """n IDs each, ``overlap * n`` in common, numeric text with leading zeros."""
    shift = n - int(round(overlap * n))
    guest = np.array([f"{i:012d}" for i in range(n)])
    host = np.array([f"{i:012d}" for i in range(shift, shift + n)])
    return guest, host[np.random.default_rng(0).permutation(n)]


def run_once(n: int, overlap: float) -> dict:
    guest_ids, host_ids = make_sets(n, overlap)
    net = LocalNetwork(["guest", "host"], timeout=3600)
    out: dict[str, object] = {}

    def play(name, fn):
        try:
            out[name] = fn(net.channel(name))
        except BaseException as exc:  # noqa: BLE001
            out[name] = exc
            net.abort(f"{name} failed: {exc}")

    threads = [threading.Thread(target=play, args=("guest", lambda ch: psi_guest(ch, guest_ids, ["host"]))),
               threading.Thread(target=play, args=("host", lambda ch: psi_host(ch, host_ids, "guest")))]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    for name in ("guest", "host"):
        if isinstance(out[name], BaseException):
            raise out[name]
    expected = int(round(overlap * n))
    assert len(out["guest"]) == len(out["host"]) == expected, "wrong intersection size"
    assert (out["guest"] == out["host"]).all()
    return {"n": n, "wall": wall, "common": expected,
            "mb_guest": net.bytes_sent["guest"] / 1e6, "mb_host": net.bytes_sent["host"] / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("-v", "--verbose", action="store_true", help="show the roles' progress log")
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    rate = single_core_rate()
    workers = pool.num_workers()
    t = time.perf_counter()
    pool.warm_up()
    print(f"X25519 on one core: {rate:,.0f} scalar mults/s; pool: {workers} worker(s), "
          f"started in {time.perf_counter() - t:.1f} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores (other work slows this down)")
    print(f"{'guest x host':>21} {'common':>9} {'wall s':>8} {'floor s':>8} {'mults/s':>9} "
          f"{'MB g->h':>8} {'MB h->g':>8}")
    for n in args.sizes:
        r = run_once(n, args.overlap)
        mults = 4 * n
        floor = mults / (rate * workers)
        print(f"{n:>10,} x {n:<10,}{r['common']:>9,} {r['wall']:>8.1f} {floor:>8.1f} "
              f"{mults / r['wall']:>9,.0f} {r['mb_guest']:>8.1f} {r['mb_host']:>8.1f}  "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    pool.shutdown()


if __name__ == "__main__":
    main()
