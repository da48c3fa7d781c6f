"""Hetero-LR epoch time and accuracy on FATE's default_credit data, side by side with plaintext.

    python benchmarks/bench_hetero_lr.py                 # epoch timings (2048-bit and 1024-bit full batch)
    python benchmarks/bench_hetero_lr.py --auc           # + full training and test AUC vs scikit-learn

All parties run as threads of this process over the in-memory channel and
share this machine's cores (and its one process pool), as they would share
this machine as separate processes. Reads ../shared/data (FATE's examples).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proctree import tree_cpu_seconds  # noqa: E402
from crypto import generate_keypair  # noqa: E402
import vfl  # noqa: E402
from vfl.protocol.channel import LocalNetwork  # noqa: E402
from vfl.job.config import ModelConfig, load_job  # noqa: E402
from vfl.models import SplitArbiter, SplitGuest, SplitHost  # noqa: E402
from vfl.models.reference import fit_reference  # noqa: E402
from vfl.preprocess.split import Standardizer, split_mask  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def load_credit():
    g = pd.read_csv(DATA / "default_credit_hetero_guest.csv", dtype={"id": str})
    h = pd.read_csv(DATA / "default_credit_hetero_host.csv", dtype={"id": str})
    j = g.merge(h, on="id", suffixes=("_g", "_h")).sort_values("id").reset_index(drop=True)
    y = j["y"].to_numpy(float)
    Xg = j[[c + "_g" if c + "_g" in j else c for c in g.columns if c not in ("id", "y")]].to_numpy(float)
    Xh = j[[c + "_h" if c + "_h" in j else c for c in h.columns if c != "id"]].to_numpy(float)
    return j["id"].to_numpy(str), Xg, Xh, y


def train_threads(model: ModelConfig, keypair, Xg, y, Xh_parts, seed=7):
    hosts = [f"host{i}" for i in range(len(Xh_parts))]
    net = LocalNetwork(["guest", *hosts, "arbiter"])
    guest = SplitGuest(model, hosts=hosts, arbiter="arbiter", seed=seed)
    host_roles = [SplitHost(model, guest="guest", arbiter="arbiter", seed=seed)
                  for i in range(len(hosts))]
    arb = SplitArbiter(model, guest="guest", hosts=hosts)
    jobs = [lambda: guest.fit(net.channel("guest"), Xg, y), lambda: arb.fit(net.channel("arbiter"), keypair)]
    jobs += [(lambda r=r, h=h, X=X: r.fit(net.channel(h), X)) for r, h, X in zip(host_roles, hosts, Xh_parts)]
    errors = []

    def run(fn):
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)
            net.abort(repr(exc))

    threads = [threading.Thread(target=run, args=(f,)) for f in jobs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0, guest, host_roles, net


RANDOMNESS = {"arbiter": "randomness from the arbiter (default)",
              "local": "each party its own randomness (before)"}


def epoch_benchmark(name, Xg, Xh, y, bits, batch_size, repeats, variants=tuple(RANDOMNESS)):
    """One epoch per variant of ``[model] randomness``, interleaved in every repeat (the machine is shared)."""
    n = len(y)
    models = {v: ModelConfig(epochs=1, batch_size=batch_size, key_bits=bits, learning_rate=0.05, tolerance=0.0,
                             allow_short_keys=bits < 2048, randomness=v) for v in variants}
    keypair = generate_keypair(bits)
    fed, cpu, stages, plain = {v: [] for v in variants}, {v: [] for v in variants}, {}, []
    for _ in range(repeats):
        for v, model in models.items():
            c0 = tree_cpu_seconds()
            secs, guest, hosts, net = train_threads(model, keypair, Xg, y, [Xh])
            cpu[v].append(tree_cpu_seconds() - c0)
            fed[v].append(secs)
            stages[v] = (guest.timings_.seconds, hosts[0].timings_.seconds, sum(net.bytes_sent.values()))
        t0 = time.perf_counter()
        fit_reference(np.hstack([Xg, Xh]), y, models[variants[0]], seed=7, n_guest=Xg.shape[1])
        plain.append(time.perf_counter() - t0)
    p = statistics.median(plain)
    print(f"\n{name}: {n} rows x {Xg.shape[1]}+{Xh.shape[1]} features, {bits}-bit keys, batch {batch_size}, "
          f"{repeats} repeat(s), load {os.getloadavg()[0]:.1f}")
    for v in variants:
        f, c = statistics.median(fed[v]), statistics.median(cpu[v])
        print(f"  [{RANDOMNESS[v]}]")
        print(f"    federated epoch   median {f:8.2f} s   (runs: {', '.join(f'{s:.2f}' for s in fed[v])})")
        print(f"    CPU per epoch     median {c:8.2f} core-s (all parties and pool workers; "
              f"{c / os.cpu_count():.2f} s if spread over the {os.cpu_count()} cores of an idle machine)")
        g, h, nbytes = stages[v]
        print("    guest phases (s): " + ", ".join(f"{k} {s:.2f}" for k, s in g.items()))
        print("    host phases  (s): " + ", ".join(f"{k} {s:.2f}" for k, s in h.items()))
        print(f"    bytes on the wire per epoch: {nbytes / 1e6:.1f} MB")
    if len(variants) > 1:
        a, b = (statistics.median(fed[v]) for v in variants[:2])
        ca, cb = (statistics.median(cpu[v]) for v in variants[:2])
        print(f"  {variants[1]} / {variants[0]}: wall {b / a:.2f}x, CPU {cb / ca:.2f}x")
    print(f"  plaintext epoch   median {p:8.4f} s   ratio federated/plaintext "
          f"{statistics.median(fed[variants[0]]) / p:,.0f}x")


def auc_benchmark(bits: int, epochs: int):
    with tempfile.TemporaryDirectory() as tmp:
        job_path = vfl.Job(vfl.Party("guest", DATA / "default_credit_hetero_guest.csv", label_column="y"),
                           [vfl.Party("host", DATA / "default_credit_hetero_host.csv")],
                           workdir=Path(tmp) / "out", seed=42, test_fraction=0.2, baselines=True,
                           # label-DP off, as FATE: the protocol's exactness against scikit-learn (the
                           # default, on, is measured on the plaintext twin below)
                           model={"epochs": epochs, "batch_size": 4096, "learning_rate": 0.05, "optimizer": "adam",
                                  "tolerance": 1e-5, "key_bits": bits, "allow_short_keys": bits < 2048,
                                  "label_dp": "off"}
                           ).to_toml(Path(tmp) / "job.toml")
        from vfl.job.threads import run_local
        t0 = time.perf_counter()
        m = run_local(load_job(job_path))["guest"]
        print(f"\ndefault_credit full training, {bits}-bit keys, {m['epochs_run']} epochs, "
              f"{time.perf_counter() - t0:.1f} s total; stages {m['stage_seconds']}")
        print(f"  aligned rows {m['aligned_rows']}, train {m['train']['rows']}, test {m['test']['rows']}")
        print(f"  test AUC federated          {m['test']['auc']:.4f}   KS {m['test']['ks']:.4f}")
        print(f"  test AUC central sklearn LR {m['baseline_central_auc']:.4f}   "
              f"(gap {m['test']['auc'] - m['baseline_central_auc']:+.4f})")
        print(f"  test AUC guest-only LR      {m['baseline_guest_only_auc']:.4f}")
        # The same training with Hardy et al.'s expansion around 0 (FATE's), in plaintext: the
        # encrypted protocol equals its plaintext twin to 1e-6, so this is what it would reach.
        from sklearn.metrics import roc_auc_score
        ids, Xg, Xh, y = load_credit()
        test = split_mask(ids, 42, 0.2)
        X = np.hstack([Standardizer.fit(B[~test]).transform(B) for B in (Xg, Xh)])
        job = load_job(job_path)
        for approx in ("taylor", "guest_expansion"):
            w, _ = fit_reference(X[~test], y[~test], replace(job.model, approximation=approx), seed=job.model.seed,
                                 n_guest=Xg.shape[1])
            auc = roc_auc_score(y[test], np.hstack([X[test], np.ones((test.sum(), 1))]) @ w)
            print(f"  plaintext twin, approximation={approx:<16} test AUC {auc:.4f}")
        # The job default: label-DP on (epsilon 8), its noise drawn three times in the plaintext twin.
        from vfl.evaluation.baselines import pooled_tables, twin_metrics
        dp = replace(job, model=replace(job.model, label_dp="on"))
        tables = pooled_tables(dp, ids.astype(object))
        aucs = [twin_metrics(dp, tables, test, protected=True, noise_seed=s)["auc"] for s in (1, 2, 3)]
        print(f"  plaintext twin, label-DP on (the default), epsilon {dp.model.dp_epsilon:g}: test AUC "
              f"median {statistics.median(aucs):.4f} of {', '.join(f'{a:.4f}' for a in aucs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--auc", action="store_true", help="also train fully and compare test AUC")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--skip-epochs", action="store_true")
    args = ap.parse_args()
    if not (DATA / "default_credit_hetero_guest.csv").is_file():
        sys.exit(f"needs {DATA}/default_credit_hetero_*.csv (FATE's example data)")
    ids, Xg, Xh, y = load_credit()
    test = split_mask(ids, 42, 0.2)
    if not args.skip_epochs:
        Xg_tr, Xh_tr = (Standardizer.fit(X[~test]).transform(X[~test]) for X in (Xg, Xh))
        epoch_benchmark("A. default_credit train split", Xg_tr, Xh_tr, y[~test], 2048, args.batch_size,
                        args.repeats)
        # B: FATE's comparison setting: all 30,000 rows, guest 10 columns + label, host 13, full batch.
        X = Standardizer.fit(np.hstack([Xg, Xh])).transform(np.hstack([Xg, Xh]))
        epoch_benchmark("B. FATE comparison (FATE 2.2 CoordinatedLR: 20.5 s/epoch)", X[:, :10], X[:, 10:], y,
                        1024, len(y), args.repeats)
    if args.auc:
        auc_benchmark(2048, args.epochs)


if __name__ == "__main__":
    main()
