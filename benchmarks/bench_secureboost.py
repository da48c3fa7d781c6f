"""SecureBoost on FATE's default_credit: test AUC against scikit-learn, seconds per tree, where time goes.

    python benchmarks/bench_secureboost.py                     # 1024-bit key, 10 trees, depth 4, 32 bins
    python benchmarks/bench_secureboost.py --bits 2048 --trees 2
    python benchmarks/bench_secureboost.py --dataset breast

Rows ``numpy.random.default_rng(0).random(30000) >= 0.2`` of the guest file's
order train, the rest test (issue 18). Runs, on the same rows:

* scikit-learn's ``HistGradientBoostingClassifier`` on the pooled columns with
  matching settings (``max_iter`` = trees, ``max_depth``, ``max_bins``,
  ``learning_rate``, ``min_samples_leaf`` = ``min_leaf_rows``, ``l2``, no early
  stopping);
* the plaintext twin (``vfl.models.trees.PlainSecureBoost``);
* the encrypted protocol: guest and host roles as **threads of this process**
  over the in-memory channel (every message encoded and decoded as on the
  wire), sharing this machine's cores and its local worker pool; then the
  scoring protocol on the test rows;
* with ``--processes`` instead: ``vfl run`` on a job file (guest, host and an
  idle arbiter as processes over TLS on loopback, each party its own worker
  pool), trained on the train rows (``test_fraction = 0``), then ``vfl predict``
  on the test rows; AUC from ``predict_metrics.json``.

Prints test AUCs, whether the encrypted trees equal the twin's, seconds per
tree (median and each), CPU seconds per tree (this process and its pool
workers, from /proc: what the machine's load barely changes), each role's time per phase
(its Stopwatch), bytes each way, and ``uptime``. ``--components`` first times
one level's kernels alone (zeros, encryption, the host's bin sums, its
re-randomisation, the guest's decryption): a level costs about their sum in
CPU, a tree ``max_depth`` levels. Reads ../shared/data.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.proctree import tree_cpu_seconds  # noqa: E402
from vfl.models.trees import PlainSecureBoost, SecureBoostGuest, SecureBoostHost, TreeParams  # noqa: E402
from vfl.models.trees.binning import encode, layout_of  # noqa: E402
from vfl.protocol.channel import LocalNetwork  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, s))


def load(data: Path, name: str) -> tuple:
    g = pd.read_csv(data / f"{name}_hetero_guest.csv")
    h = pd.read_csv(data / f"{name}_hetero_host.csv").set_index("id").loc[g["id"]].reset_index()
    gcols = [c for c in g.columns if c not in ("id", "y")]
    hcols = [c for c in h.columns if c != "id"]
    train = np.random.default_rng(0).random(len(g)) >= 0.2     # issue 18's split (30,000 rows for default_credit)
    return (g[gcols].to_numpy(float), h[hcols].to_numpy(float), g["y"].to_numpy(float), train, gcols, hcols)


def load_ecommerce(n_people: int, max_bin: int) -> tuple:
    """The synthetic e-commerce set (``vfl.io.synth.categorical_credit_population``, bank = guest,
    shop = host, inner join in the bank's order, issue 18's split rule on that order), each shop
    categorical binned by value as a job does it (:class:`vfl.models.trees.binning.CategoryCodes`:
    its ``max_bin - 1`` most frequent training values a code and bin each, the rest one more).
    Returns ``load``'s tuple plus the shop's category tables."""
    from vfl.io.synth import categorical_credit_population
    from vfl.models.trees.binning import CategoryCodes
    bank, shop = categorical_credit_population(n_people, seed=0)
    shop = shop.set_index("id").reindex(bank["id"]).dropna(how="all")
    bank = bank.set_index("id").loc[shop.index]
    train = np.random.default_rng(0).random(len(bank)) >= 0.2
    cats = [c for c in shop.columns if not pd.api.types.is_numeric_dtype(shop[c])]
    tables = [CategoryCodes.fit(c, shop.loc[train, c].astype(str).to_numpy(), max_bin) for c in cats]
    for t in tables:
        shop[t.column] = t.codes(shop[t.column].astype(str).to_numpy())
    gcols = [c for c in bank.columns if c != "default"]
    hcols = list(shop.columns)
    return (bank[gcols].to_numpy(float), shop[hcols].to_numpy(float), bank["default"].to_numpy(float), train,
            gcols, hcols, tables)


def run_protocol(params: TreeParams, Xg, Xh, y, Xg_test, Xh_test, gcols, hcols, categories=()):
    net = LocalNetwork(["guest", "host0"], timeout=3600)
    guest = SecureBoostGuest(params, hosts=["host0"], columns=gcols)
    host = SecureBoostHost(params, guest="guest", columns=hcols, categories=list(categories))
    errors = []

    def guarded(fn):
        try:
            fn()
        except BaseException as exc:       # noqa: BLE001 - report and stop the peer
            errors.append(exc)
            net.abort(repr(exc))

    th = threading.Thread(target=guarded, args=(lambda: host.fit(net.channel("host0"), Xh),))
    th.start()
    t0 = time.perf_counter()
    guarded(lambda: guest.fit(net.channel("guest"), Xg, y))
    th.join()
    fit = time.perf_counter() - t0
    if errors:
        raise errors[0]
    th = threading.Thread(target=guarded, args=(lambda: host.predict(net.channel("host0"), Xh_test),))
    th.start()
    t0 = time.perf_counter()
    score = guest.decision_function(net.channel("guest"), Xg_test)
    th.join()
    return guest, host, fit, time.perf_counter() - t0, score, dict(net.bytes_sent)


def components(params: TreeParams, n: int, host_columns: int, bins: int) -> None:
    """One level's kernels, each timed alone (wall and this process's CPU; pool work is in wall only)."""
    from crypto import EncryptedArray, generate_keypair
    from crypto.histogram import bin_sums
    pk, sk = generate_keypair(params.key_bits)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, bins, (n, host_columns))
    plains = rng.integers(-(1 << 40), 1 << 40, n).astype(object)
    out = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        out[name] = time.perf_counter() - t0
        return value

    sk.zeros(1000)                                        # tables and workers warm
    zeros = timed("zeros (guest, CRT)", lambda: sk.zeros(n))
    enc = timed("encrypt with them", lambda: pk.encrypt_raw(plains, zeros=zeros))
    sums = timed("bin_sums (host)", lambda: bin_sums(enc.reshape(n, 1), codes, [bins] * host_columns, pk.nsquare))
    arr = EncryptedArray(pk, sums, 0)
    arr.rerandomize()
    timed("rerandomize (host)", lambda: arr.rerandomize())
    timed("decrypt (guest)", lambda: sk.decrypt_raw(sums.ravel()))
    print(f"one level, {n} rows, host {host_columns} columns x {bins} bins, {params.key_bits}-bit key: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in out.items()) + f"; sum {sum(out.values()):.2f} s")


def run_processes(args, Xg, Xh, y, train, gcols, hcols) -> None:
    """``vfl run`` and ``vfl predict`` as processes over TLS, on CSVs of the train and test rows."""
    import json
    import tempfile

    from parties.cli import main as vfl_main
    folder = Path(tempfile.mkdtemp(prefix="bench_sbt_"))
    ids = np.arange(len(y))
    for part, rows in (("train", train), ("test", ~train)):
        pd.DataFrame(np.column_stack([ids[rows], y[rows], Xg[rows]]), columns=["id", "y", *gcols]).astype(
            {"id": int, "y": int}).to_csv(folder / f"guest_{part}.csv", index=False)
        pd.DataFrame(np.column_stack([ids[rows], Xh[rows]]), columns=["id", *hcols]).astype({"id": int}).to_csv(
            folder / f"host_{part}.csv", index=False)
    import vfl
    job = vfl.Job(vfl.Party("guest", folder / "guest_train.csv", label_column="y",
                            predict_data=folder / "guest_test.csv"),
                  [vfl.Party("host0", folder / "host_train.csv", predict_data=folder / "host_test.csv")],
                  workdir=folder / "out", seed=1, test_fraction=0.0,
                  model={"type": "secureboost", "key_bits": args.bits, "allow_short_keys": True,
                         "num_trees": args.trees, "max_depth": args.depth, "max_bin": args.bins,
                         "learning_rate": args.lr, "min_leaf_rows": args.min_leaf_rows, "subsample": args.subsample})
    path = job.to_toml(folder / "job.toml")
    from benchmarks.proctree import CpuSampler
    t0 = time.perf_counter()
    with CpuSampler() as sampler:      # every party process and its pool workers (PSI to reports)
        if vfl_main(["run", str(path)]) != 0:
            raise SystemExit("vfl run failed")
    wall, cpu = time.perf_counter() - t0, sampler.seconds
    if vfl_main(["predict", str(path)]) != 0:
        raise SystemExit("vfl predict failed")
    metrics = json.loads((folder / "out" / "metrics.json").read_text())
    scored = json.loads((folder / "out" / "predict_metrics.json").read_text())
    per = metrics["tree_seconds"]
    print(f"processes over TLS ({args.bits}-bit key): test AUC {scored['metrics']['auc']:.4f}; vfl run {wall:.1f} s "
          f"(training {metrics['stage_seconds']['train']:.1f} s); per tree median {statistics.median(per):.2f} s "
          f"(each: {', '.join(f'{s:.2f}' for s in per)})")
    print(f"CPU of vfl run (all processes, pool workers included, PSI to reports): {cpu:.1f} s, "
          f"{cpu / len(per):.2f} s per tree")
    print("guest phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in
                                           sorted(metrics["phase_seconds"].items(), key=lambda kv: -kv[1])))
    host = json.loads((folder / "out" / "host0" / "report.json").read_text())
    print("host phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in
                                          sorted(host["phase_seconds"].items(), key=lambda kv: -kv[1])))
    print(f"uptime:{os.popen('uptime').read().strip()}")


class _same_coins:
    """Replaces the guest's secret coins (a host's sparse categories in a node go left or right by
    them, ``vfl.models.trees.split.secret_coins``) with a seeded stream restarted for each run, so
    that the encrypted trees can be compared with the twin's; the product draws them from the OS."""

    def __init__(self, seed: int = 0) -> None:
        import vfl.models.trees.split as split
        self.seed = seed
        self.restart()
        split.secret_coins = self

    def restart(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, k: int) -> np.ndarray:
        return self.rng.random(k) < 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, default=1024)
    ap.add_argument("--trees", type=int, default=10)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--bins", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--min-leaf-rows", type=int, default=20)
    ap.add_argument("--subsample", type=float, default=1.0, help="rows drawn per tree (seeded; 1 = all)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--dataset", default="default_credit", choices=["default_credit", "breast", "ecommerce"],
                    help="ecommerce: the synthetic bank + shop set, shop categoricals binned by value")
    ap.add_argument("--people", type=int, default=20_000, help="ecommerce: population size")
    ap.add_argument("--skip-protocol", action="store_true", help="only scikit-learn and the twin")
    ap.add_argument("--components", action="store_true", help="first time one level's kernels alone")
    ap.add_argument("--processes", action="store_true", help="vfl run / vfl predict as processes over TLS")
    args = ap.parse_args()
    tables = []
    if args.dataset == "ecommerce":
        Xg, Xh, y, train, gcols, hcols, tables = load_ecommerce(args.people, args.bins)
    else:
        Xg, Xh, y, train, gcols, hcols = load(args.data, args.dataset)
    test = ~train
    params = TreeParams(num_trees=args.trees, max_depth=args.depth, max_bin=args.bins, learning_rate=args.lr,
                        min_leaf_rows=args.min_leaf_rows, subsample=args.subsample, seed=7, key_bits=args.bits,
                        allow_short_keys=True)
    print(f"{args.dataset}: {train.sum()} train / {test.sum()} test rows; guest {len(gcols)} columns, "
          f"host {len(hcols)}; {args.trees} trees, depth {args.depth}, {args.bins} bins, lr {args.lr}, "
          f"subsample {args.subsample}")

    from sklearn.ensemble import HistGradientBoostingClassifier
    X = np.hstack([Xg, Xh])
    t0 = time.perf_counter()
    sk = HistGradientBoostingClassifier(max_iter=args.trees, max_depth=args.depth, max_bins=args.bins,
                                        learning_rate=args.lr, min_samples_leaf=args.min_leaf_rows,
                                        l2_regularization=params.l2, early_stopping=False, random_state=0)
    sk.fit(X[train], y[train])
    sk_auc = auc(y[test], sk.decision_function(X[test]))
    print(f"scikit-learn HistGradientBoostingClassifier: test AUC {sk_auc:.4f} ({time.perf_counter() - t0:.2f} s)")
    if tables:           # the same codes as native categoricals (sklearn sorts categories by gradient per node)
        mask = np.zeros(X.shape[1], dtype=bool)
        mask[[len(gcols) + hcols.index(t.column) for t in tables]] = True
        skc = HistGradientBoostingClassifier(max_iter=args.trees, max_depth=args.depth, max_bins=args.bins,
                                             learning_rate=args.lr, min_samples_leaf=args.min_leaf_rows,
                                             l2_regularization=params.l2, early_stopping=False, random_state=0,
                                             categorical_features=mask).fit(X[train], y[train])
        print(f"scikit-learn, shop codes as native categoricals: test AUC "
              f"{auc(y[test], skc.decision_function(X[test])):.4f}")

    from vfl.models.trees.binning import fit_columns
    bg = fit_columns(gcols, Xg[train], args.bins)
    bh = fit_columns(hcols, Xh[train], args.bins, tuple(t.column for t in tables))     # categoricals by value
    coins = _same_coins()             # the twin and the encrypted run draw the same secret coins
    twin = PlainSecureBoost(params).fit([encode(bg, Xg[train]), encode(bh, Xh[train])],
                                        [layout_of(bg), layout_of(bh, tuple(t.column for t in tables))], y[train])
    twin_score = twin.decision_function([encode(bg, Xg[test]), encode(bh, Xh[test])])
    print(f"plaintext twin: test AUC {auc(y[test], twin_score):.4f}")
    if args.skip_protocol:
        return
    if args.components:
        components(params, int(train.sum()), len(hcols), args.bins + 1)
    if args.processes:
        run_processes(args, Xg, Xh, y, train, gcols, hcols)
        return
    cpu0 = tree_cpu_seconds()
    coins.restart()
    guest, host, fit, predict_s, score, sent = run_protocol(params, Xg[train], Xh[train], y[train], Xg[test],
                                                            Xh[test], gcols, hcols, tables)
    cpu = tree_cpu_seconds() - cpu0
    same = all([a.key() for a in ta.nodes] == [b.key() for b in tb.nodes]
               for ta, tb in zip(guest.trees_, twin.trees_)) and len(guest.trees_) == len(twin.trees_)
    print(f"encrypted ({args.bits}-bit key): test AUC {auc(y[test], score):.4f}; trees identical to the twin: "
          f"{same}; max |score - twin| on test {np.abs(score - twin_score).max():.2e}")
    per = guest.tree_seconds_
    print(f"fit {fit:.1f} s; per tree median {statistics.median(per):.2f} s "
          f"(each: {', '.join(f'{s:.2f}' for s in per)}); scoring {len(score)} rows {predict_s:.2f} s")
    print(f"CPU (both roles, this process and its pool workers, training and scoring): {cpu:.1f} s, "
          f"{cpu / args.trees:.2f} s per tree")
    print(f"bytes sent: guest {sent['guest'] / 2**20:.1f} MB, host {sent['host0'] / 2**20:.1f} MB")
    for name, role in (("guest", guest), ("host", host)):
        total = sum(role.timings_.seconds.values())
        print(f"{name} phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                sorted(role.timings_.seconds.items(), key=lambda kv: -kv[1]))
              + f"  (sum {total:.1f})")
    print(f"workers: {os.environ.get('VFL_WORKERS', 'all usable CPUs')}; uptime:{os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
