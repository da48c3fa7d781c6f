"""Peak memory of each party through a whole training job (PSI, training, scoring), as separate processes.

Issue #11 asks for one epoch on 1M aligned rows x 50 columns at 2048-bit keys
with each party under 4 GB. This runs a job of that shape (guest 25 columns
and the label, host 25 columns, every row shared) as three OS processes over
TLS, and samples every 0.25 s the resident memory of each party's whole
process tree (the party, its forkserver and its pool workers, summed), so
the peak counts every process a party runs. It prints per party: the peak
tree RSS, the peak of its largest single process, and the stage times.

    python benchmarks/bench_memory.py --rows 1000000              # the issue's size (long)
    python benchmarks/bench_memory.py --rows 100000 200000 --key-bits 1024 ...

Several ``--rows`` run one after the other and print side by side, so the
growth per row can be read off (and an extrapolation to 1M is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.proctree import tree_rss  # noqa: E402
from benchmarks.tls_job import ROLES, start, write_job  # noqa: E402
from vfl.job.config import load_job           # noqa: E402


def write_data(folder: Path, n_rows: int, n_cols: int, seed: int = 0) -> tuple[Path, Path]:
    """Guest (label + half the columns) and host (the other half), every row shared, as Parquet."""
    rng = np.random.default_rng(seed)
    half = n_cols // 2
    ids = np.char.add("u", np.arange(n_rows).astype(str))
    X = rng.normal(size=(n_rows, n_cols)).astype(np.float64)
    w = rng.normal(size=n_cols) / np.sqrt(n_cols)
    y = (rng.random(n_rows) < 1 / (1 + np.exp(-(X @ w * 2 - 0.5)))).astype(np.int8)
    g = pd.DataFrame({"id": ids, "y": y, **{f"g{j}": X[:, j] for j in range(half)}})
    h = pd.DataFrame({"id": ids[rng.permutation(n_rows)]})
    order = pd.Series(np.arange(n_rows), index=ids).loc[h["id"]].to_numpy()
    for j in range(half, n_cols):
        h[f"h{j}"] = X[order, j]
    gp, hp = folder / "guest.parquet", folder / "host.parquet"
    g.to_parquet(gp, index=False)
    h.to_parquet(hp, index=False)
    return gp, hp


def run_job(path: Path, interval: float = 0.25) -> dict:
    procs = {r: start(path, r) for r in ROLES}
    errs = {r: [] for r in ROLES}
    for r, p in procs.items():
        threading.Thread(target=lambda r=r, p=p: errs[r].extend(p.stderr), daemon=True).start()
    peak = {r: 0 for r in ROLES}
    largest = {r: 0 for r in ROLES}
    when = {r: "" for r in ROLES}          # the party's last log line when its peak was seen
    t0 = time.monotonic()
    while any(p.poll() is None for p in procs.values()):
        for r, p in procs.items():
            if p.poll() is None:
                total, big = tree_rss(p.pid)
                if total > peak[r]:
                    peak[r], when[r] = total, (errs[r][-1].strip()[9:90] if errs[r] else "start")
                largest[r] = max(largest[r], big)
        time.sleep(interval)
    wall = time.monotonic() - t0
    bad = {r: "".join(errs[r][-2:]).strip() for r, p in procs.items() if p.returncode != 0}
    if bad:
        raise RuntimeError(f"job failed: {bad}")
    metrics = json.loads((load_job(path).workdir / "metrics.json").read_text())
    return {"wall": wall, "peak": peak, "largest": largest, "when": when, "stages": metrics.get("stage_seconds", {}),
            "epoch_seconds": metrics.get("epoch_seconds", []), "test_auc": metrics["test"]["auc"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--cols", type=int, default=50)
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8192)
    args = ap.parse_args(argv)
    mb = 1 / 2**20
    results = []
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="vfl-mem-") as tmp:
            folder = Path(tmp)
            t = time.monotonic()
            g, h = write_data(folder, n, args.cols)
            print(f"{n:,} rows x {args.cols} columns written in {time.monotonic() - t:.1f} s; running the job "
                  f"({args.key_bits}-bit keys, {args.epochs} epoch(s), batch {args.batch_size}, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
            model = {"key_bits": args.key_bits, "allow_short_keys": args.key_bits < 2048, "epochs": args.epochs,
                     "batch_size": args.batch_size, "tolerance": 0.0}
            r = run_job(write_job(folder, "memory-bench", g, h, model,
                                  network={"connect_timeout": 120.0, "peer_timeout": 3600.0}))
            results.append((n, r))
            stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["stages"].items())
            print(f"  wall {r['wall']:.0f} s ({stages}); test AUC {r['test_auc']:.4f}; "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            for x in ROLES:
                print(f"  {x:<8} peak {r['peak'][x] / 2**20:.0f} MB after: {r['when'][x]}", flush=True)
    print(f"\npeak resident memory per party (whole process tree / largest single process), MB, "
          f"{args.cols} columns, {args.key_bits}-bit keys:")
    print(f"{'rows':>10} " + " ".join(f"{r:>22}" for r in ROLES))
    for n, r in results:
        print(f"{n:>10,} " + " ".join(f"{r['peak'][x] * mb:>10.0f} / {r['largest'][x] * mb:>9.0f}" for x in ROLES))
    if len(results) >= 2:
        (n0, r0), (n1, r1) = results[0], results[-1]
        print("\nlinear extrapolation to 1,000,000 rows (tree peak, MB):")
        for x in ROLES:
            slope = (r1["peak"][x] - r0["peak"][x]) / (n1 - n0)
            est = r1["peak"][x] + slope * (1_000_000 - n1)
            print(f"  {x:<8} {est * mb:>8.0f}   ({slope * 1e6 * mb:.0f} MB per million rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
