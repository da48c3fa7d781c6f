"""The split embedding model: accuracy against its plaintext twin and LR, and epoch time, side by side.

    python benchmarks/bench_embedding.py                       # e-commerce credit data, 60k rows, defaults, 1024-bit
    python benchmarks/bench_embedding.py --bits 2048 --epochs 1  # epoch time at 2048 bits
    python benchmarks/bench_embedding.py --protection off      # without held-back releases and label-DP
    python benchmarks/bench_embedding.py --data movielens      # FATE's movie_lens (reads ../shared/data)

Every party runs as a thread of this process over the in-memory channel,
sharing this machine's cores and its one process pool, as separate processes
on one machine would. The job is the acceptance shape of the embedding issue:
a guest with 5 numeric columns and the label, a host with 4 long-tailed
categorical columns and 2 numeric ones; ``embedding_dim = 8``, ``hidden_units = [32]``
and the model's defaults otherwise (DP-aware: batch 8192 at 48k training rows,
learning rate 0.03, up to 12 epochs with early stopping). Printed side by side:

* federated (encrypted) test AUC, with the default protection unless told otherwise;
* the plaintext twin on the pooled rows (same towers, init and batches, no
  encryption, no protection), and the twin with the same held-back releases
  and clipping but no noise, which isolates what the noise costs;
* scikit-learn LR on the pooled columns one-hot encoded; LR on the numeric
  columns only; the guest alone;
* epoch seconds (median), each party's time per phase, and the twin's epoch time.
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
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vfl.evaluation.baselines import _columns, _fit_score, _table, twin_metrics  # noqa: E402
import vfl  # noqa: E402
from vfl.job.config import load_job  # noqa: E402
from vfl.job.threads import run_local  # noqa: E402
from vfl.preprocess.split import split_mask  # noqa: E402
from vfl.io.synth import categorical_credit_population  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

MODEL = {"type": "embedding", "host_weights": "plain", "optimizer": "adam", "embedding_dim": 8, "hidden_units": [32],
         "seed": 7}


def write_data(folder: Path, which: str, rows: int) -> dict:
    if which == "credit":
        bank, shop = categorical_credit_population(rows, seed=0)
        bank.to_csv(folder / "guest.csv", index=False)
        shop.to_csv(folder / "host.csv", index=False)
        return {"label": "default", "guest_cats": [], "host_cats": ["merchant", "city", "device_model", "category"]}
    g = pd.read_csv(DATA / "movie_lens_hetero_guest.csv", dtype=str)
    h = pd.read_csv(DATA / "movie_lens_hetero_host.csv", dtype=str)
    if rows < len(g):
        keep = g.sample(n=rows, random_state=0)["id"]
        g, h = g[g["id"].isin(keep)], h[h["id"].isin(keep)]
    g.to_csv(folder / "guest.csv", index=False)
    h.to_csv(folder / "host.csv", index=False)
    return {"label": "label", "guest_cats": ["uid", "mid"], "host_cats": [c for c in h.columns if c != "id"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["credit", "movielens"], default="credit")
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--epochs", type=int, default=0, help="0: the model's default (16 at epsilon 8, with early stopping)")
    p.add_argument("--batch", type=int, default=0, help="0: the model's default (8192 at 48k training rows)")
    p.add_argument("--lr", type=float, default=0.0, help="0: the model's default (0.03)")
    p.add_argument("--bits", type=int, default=1024)
    p.add_argument("--protection", choices=["default", "off"], default="default")
    p.add_argument("--no-baselines", action="store_true")
    args = p.parse_args()
    if args.data == "movielens" and not (DATA / "movie_lens_hetero_guest.csv").is_file():
        sys.exit(f"{DATA} has no movie_lens data")
    tmp = Path(tempfile.mkdtemp(prefix="bench-emb-"))
    spec = write_data(tmp, args.data, args.rows)
    protection = {"min_rows_per_release": 1, "label_dp": "off"} if args.protection == "off" else {}
    job = vfl.Job(vfl.Party("guest", tmp / "guest.csv", label_column=spec["label"],
                            categorical_columns=spec["guest_cats"]),
                  [vfl.Party("host", tmp / "host.csv", categorical_columns=spec["host_cats"])],
                  name="bench-embedding", workdir=tmp / "out", seed=42, test_fraction=0.2,
                  model={**MODEL, "epochs": args.epochs, "batch_size": args.batch, "learning_rate": args.lr,
                         "key_bits": args.bits,
                         "allow_short_keys": args.bits < 2048, **protection})
    job = load_job(job.to_toml(tmp / "job.toml"))
    batch = args.batch or "auto (a sixth of the training rows, 512-8192)"
    print(f"data {args.data}: {args.rows} rows; up to {job.model.epochs} epochs, batch {batch}, "
          f"lr {job.model.learning_rate}, {args.bits}-bit keys, protection {args.protection}", flush=True)
    t0 = time.perf_counter()
    results = run_local(job)
    wall = time.perf_counter() - t0
    m, arb, host = results["guest"], results["arbiter"], results["host"]
    print(f"federated run: {wall:.0f} s in all (PSI, training, scoring)")
    print(f"epoch seconds: {m['epoch_seconds']}  median {statistics.median(m['epoch_seconds']):.1f}")
    print("guest phases (s, all epochs): " + ", ".join(f"{k} {v:.1f}" for k, v in m["phase_seconds"].items()))
    print("host phases (s, all epochs):  " + ", ".join(f"{k} {v:.1f}" for k, v in host["phase_seconds"].items()))
    dp = arb["label_dp"]
    if dp["on"]:
        z = dp["noise_multiplier"]
        print(f"label-DP: noise multipliers guest {z['guest']:.2f}, host {z['host']:.2f}, clip {dp['clip_norm']}, "
              f"epsilon spent {dp['epsilon_spent']:.3f} at delta {dp['delta']:g}; best possible attack AUC "
              f"{dp['best_attack_auc_bound']:.3f}")
    print(f"smallest number of rows behind a released sum: guest {m['smallest_release_rows']}, "
          f"host {host['smallest_release_rows']}")
    rows = [("federated (encrypted)", m["test"]["auc"])]
    if not args.no_baselines:
        common = pd.read_csv(job.output_dir("guest") / "intersection.csv", dtype=str,
                             keep_default_na=False)["id"].to_numpy(dtype=object)
        test = split_mask(common, job.seed, job.test_fraction)
        tables = [_table(job.guest, common), _table(job.hosts[0], common)]
        t1 = time.perf_counter()
        twin = twin_metrics(job, tables, test)
        twin_epoch = (time.perf_counter() - t1) / max(1, m["epochs_run"])
        rows.append(("plaintext twin (no protection)", twin["auc"]))
        if args.protection == "default":
            rows.append(("twin, held back + clipped, no noise", twin_metrics(job, tables, test, protected=True)["auc"]))
        y = tables[0].labels
        rows.append(("LR pooled, one-hot (scikit-learn)",
                     _fit_score(np.hstack([_columns(t, test) for t in tables]), y, test)["auc"]))
        numeric = [replace(t, categorical=t.categorical[:, :0], categorical_columns=[]) for t in tables]
        if sum(t.features.shape[1] for t in numeric):
            rows.append(("LR pooled, numeric columns only",
                         _fit_score(np.hstack([_columns(t, test) for t in numeric]), y, test)["auc"]))
        rows.append(("guest alone (LR)", _fit_score(_columns(tables[0], test), y, test)["auc"]))
        print(f"plaintext twin epoch: {twin_epoch:.2f} s")
    print(f"\n{'model':<40}{'test AUC':>10}")
    for name, auc in rows:
        print(f"{name:<40}{auc:>10.4f}")


if __name__ == "__main__":
    main()
