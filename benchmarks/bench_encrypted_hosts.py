"""``host_weights = "encrypted"`` end to end: the 60k set's job through the thread runner, test AUC and epoch time.

    python benchmarks/bench_encrypted_hosts.py                 # 60k rows, 1024-bit keys, 16 epochs
    python benchmarks/bench_encrypted_hosts.py --bits 2048 --epochs 1
    python benchmarks/bench_encrypted_hosts.py --data demo --bits 2048   # the demo's data (its job's crosses)
    python benchmarks/bench_encrypted_hosts.py --data movielens          # FATE's movie_lens (reads ../shared/data)
    python benchmarks/bench_encrypted_hosts.py --data movielens --twin   # its plaintext twin, in minutes

The README's benchmark job (``benchmarks/bench_frontier.py``'s ``job_for``: a guest with 5 numeric columns
and the label, a host with 4 long-tailed categorical columns and 2 numeric ones), with the host's weights
encrypted under the arbiter's key: its tower is every categorical column, all 6 pairwise crosses and its
numeric columns in 10 quantile bins, values with at least ``--min-rows`` training rows (16, as
``benchmarks/bench_encrypted_wide.py`` measured the arithmetic). Every party is a thread of this process.
``--twin`` runs the job's plaintext twin instead (``vfl.models.reference.encrypted_job_twin``: the same
splits, tables, batches and refit, no encryption), which matched the product to 0.0005 AUC on all three sets.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_frontier import job_for  # noqa: E402
from vfl.job.config import JobConfig  # noqa: E402
from vfl.job.threads import run_local  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["credit", "demo", "movielens"], default="credit")
    p.add_argument("--rows", type=int, default=None, help="people generated (credit 60,000; demo 10,000)")
    p.add_argument("--bits", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--min-rows", type=int, default=16, help="[model] host_min_rows")
    p.add_argument("--host-l2", type=float, default=3.0)
    p.add_argument("--twin", action="store_true", help="the plaintext twin instead of the parties")
    args = p.parse_args()
    rows = args.rows or (10_000 if args.data == "demo" else 60_000)
    job, common, test = job_for(Path(tempfile.mkdtemp(prefix="bench-ehosts-")), args.data, rows)
    job = replace(job, model=replace(job.model, host_weights="encrypted", label_dp="auto", early_stopping="auto",
                                     epochs=args.epochs, host_min_rows=args.min_rows, host_l2=args.host_l2,
                                     key_bits=args.bits))
    t0 = time.perf_counter()
    if args.twin:
        twin(job, common, test, t0)
        return
    results = run_local(job)
    total = time.perf_counter() - t0
    g, h = results["guest"], results["host"]
    secs = [s for s in g["epoch_seconds"] if s is not None]
    print(f"{len(common)} aligned rows, {args.bits}-bit keys, {g['epochs_run']} epochs, host weights {h['weights']}")
    print(f"test AUC {g['test']['auc']:.4f}   train AUC {g['train']['auc']:.4f}")
    print(f"seconds per epoch: median {statistics.median(secs):.1f} (min {min(secs):.1f}, max {max(secs):.1f}); "
          f"whole job {total:.0f} s")
    refit = g["guest_refit"] or {}
    print(f"guest refit: kept {refit.get('kept')}, C {refit.get('C')}, on the tower of epoch "
          f"{refit.get('epoch', g['epochs_run'] if refit.get('kept') else None)}; validation log-loss "
          f"{refit.get('plain_log_loss')} -> {refit.get('refit_log_loss')}")
    print(f"guest stages {g['stage_seconds']}")
    print(f"host phases { {k: round(v, 1) for k, v in h['phase_seconds'].items()} }")


def twin(job: JobConfig, common: np.ndarray, test: np.ndarray, t0: float) -> None:
    """The job's plaintext twin: its test AUC and the epoch the guest's refit kept."""
    from vfl.evaluation.baselines import pooled_tables
    from vfl.evaluation.metrics import binary_metrics
    from vfl.models.reference import encrypted_job_twin
    tables = pooled_tables(job, common, test)
    r = encrypted_job_twin(job, tables, test)
    y = tables[0].labels
    refit, auc = r["refit"], binary_metrics(y[test], 1 / (1 + np.exp(-r["z"][test])))["auc"]
    kept = f"kept, C {refit.C:g}, on the tower of epoch {r['epoch']}" if refit is not None else "not kept"
    print(f"{len(common)} aligned rows, plaintext twin, {job.model.epochs} epochs: test AUC {auc:.4f}; "
          f"guest refit {kept}; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
