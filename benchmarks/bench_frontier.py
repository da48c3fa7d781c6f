"""The privacy-utility frontier of the embedding model: test AUC, worst-case bound, measured attacks.

    python benchmarks/bench_frontier.py                      # 60k e-commerce-shaped set (README's benchmark)
    python benchmarks/bench_frontier.py --data demo          # the demo's data (10k people, coarse columns, crosses)
    python benchmarks/bench_frontier.py --data movielens     # FATE's movie_lens (reads ../shared/data)
    python benchmarks/bench_frontier.py --pairs              # the 60k set, the shop crossing every pair of its columns

For label-DP epsilon 1, 2, 4, 8, 16 and infinity (label-DP off, the other
protections on), with the job's defaults otherwise, it prints side by side:

* the test AUC of the model's plaintext twin on the pooled rows with the job's
  protection and the arbiter's noise (median over ``--seeds`` noise draws; the
  twin is the encrypted protocol's arithmetic without encryption, and a test
  checks they agree to 1e-6 without noise), one-hot LR (scikit-learn, pooled,
  no protection) and the guest alone;
* the worst-case bound: the ROC AUC of the best possible test of one label from
  everything a host sees (``Phi(sqrt(rho))``);
* the two attacks of ``tests/test_embedding.py`` on one epoch of a host's real
  view (encrypted protocol, 512-bit keys, 800 rows, batch 32) at that epsilon
  with the default protection: ROC AUC of the labels they infer.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crypto import generate_keypair  # noqa: E402
from vfl.evaluation.attacks import measured_attacks  # noqa: E402
from vfl.evaluation.baselines import _columns, _fit_score, pooled_tables, twin_metrics  # noqa: E402
from vfl.evaluation.frontier import EPSILONS, frontier  # noqa: E402
from vfl.io.synth import categorical_credit_population  # noqa: E402
from vfl.job.config import ModelConfig, parse_job  # noqa: E402
from vfl.preprocess.split import Standardizer, split_mask  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SHOP = ["merchant", "city", "device_model", "category"]
COARSE = ["region", "device_brand", "merchant_type"]
CROSSES = [["device_brand", "region"], ["category", "device_brand"], ["merchant_type", "device_brand"],
           ["merchant_type", "category"]]


def job_for(folder: Path, which: str, rows: int, pairs: bool = False):
    """Write the data and return (job, common IDs, test mask)."""
    host: dict = {"name": "host", "address": "127.0.0.1:29402", "data": str(folder / "host.csv")}
    guest: dict = {"name": "guest", "address": "127.0.0.1:29401", "data": str(folder / "guest.csv")}
    model: dict = {"type": "embedding", "host_weights": "plain", "key_bits": 1024, "allow_short_keys": True}
    if which in ("credit", "demo"):
        demo = which == "demo"
        bank, shop = categorical_credit_population(rows, seed=0, bank_share=0.8 if demo else 1.0,
                                                   shop_share=0.7 if demo else 1.0, coarse=demo)
        guest["label_column"] = "default"
        host["categorical_columns"] = SHOP + (COARSE if demo else [])
        if demo:
            host["crosses"] = CROSSES
            model.update(embedding_dim=4, hidden_units=[16], epochs=12)
        elif pairs:
            host["crosses"] = [[a, b] for i, a in enumerate(SHOP) for b in SHOP[i + 1:]]
    else:
        bank = pd.read_csv(DATA / "movie_lens_hetero_guest.csv", dtype=str)
        shop = pd.read_csv(DATA / "movie_lens_hetero_host.csv", dtype=str)
        guest.update(label_column="label", categorical_columns=["uid", "mid"])
        host["categorical_columns"] = [c for c in shop.columns if c != "id"]
    bank.to_csv(folder / "guest.csv", index=False)
    shop.to_csv(folder / "host.csv", index=False)
    raw = {"job": {"workdir": str(folder / "out"), "seed": 42, "test_fraction": 0.2},
           "arbiter": {"address": "127.0.0.1:29400"}, "guest": guest, "hosts": [host], "model": model}
    job = parse_job(raw, folder / "job.toml")
    common = np.array(sorted(set(bank["id"]) & set(shop["id"])), dtype=object)
    return job, common, split_mask(common, job.seed, job.test_fraction)


def columns_with_vocabulary(t, test: np.ndarray, min_rows: int) -> np.ndarray:
    """One-hot columns as the model's vocabulary has them: values with fewer than ``min_rows``
    training rows share one column (the model's unknown row; its sums could never be released)."""
    from sklearn.preprocessing import OneHotEncoder
    num = Standardizer.fit(t.features[~test]).transform(t.features)
    if not len(t.categorical_columns):
        return num
    enc = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=min_rows).fit(t.categorical[~test])
    return np.hstack([num, enc.transform(t.categorical).toarray()])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["credit", "demo", "movielens"], default="credit")
    p.add_argument("--rows", type=int, default=None, help="people generated (credit 60,000; demo 10,000)")
    p.add_argument("--seeds", type=int, default=3, help="noise draws per epsilon (median reported)")
    p.add_argument("--no-attacks", action="store_true")
    p.add_argument("--pairs", action="store_true", help="60k set: the shop crosses every pair of its columns")
    args = p.parse_args()
    if args.data == "movielens" and not (DATA / "movie_lens_hetero_guest.csv").is_file():
        sys.exit(f"{DATA} has no movie_lens data")
    rows = args.rows or (10_000 if args.data == "demo" else 60_000)
    job, common, test = job_for(Path(tempfile.mkdtemp(prefix="bench-frontier-")), args.data, rows, args.pairs)
    tables = pooled_tables(job, common)
    y = tables[0].labels
    lr = _fit_score(np.hstack([_columns(t, test) for t in tables]), y, test)["auc"]
    alone = _fit_score(_columns(tables[0], test), y, test)["auc"]
    k = max(job.model.min_category_rows, job.model.min_rows_per_release)
    vocab = [columns_with_vocabulary(t, test, k) for t in tables]
    lr_k, alone_k = _fit_score(np.hstack(vocab), y, test)["auc"], _fit_score(vocab[0], y, test)["auc"]
    t0 = time.perf_counter()
    unprotected = twin_metrics(job, tables, test)["auc"]
    rows_out = frontier(job, tables, test, seeds=tuple(range(1, args.seeds + 1)))
    print(f"data {args.data}: {len(common)} aligned rows, {int((~test).sum())} train / {int(test.sum())} test; "
          f"model defaults {job.model.epochs} epochs, batch {job.model.batch_for(int((~test).sum()))}, "
          f"lr {job.model.learning_rate}, clip {job.model.clip_norm}, dim {job.model.embedding_dim}, hidden "
          f"{list(job.model.hidden_units)}; twins {time.perf_counter() - t0:.0f} s", flush=True)
    attacks = {}
    if not args.no_attacks:
        keypair = generate_keypair(512)
        base = ModelConfig(type="embedding", epochs=1, batch_size=32, learning_rate=0.05, key_bits=512,
                           allow_short_keys=True)
        # the rows an unprotected host sees alone in an embedding-row release: the direct attack's targets
        off = measured_attacks(replace(base, label_dp="off", min_rows_per_release=1, table_release="eager"),
                               keypair, keep_alone=True)
        attacks["none"] = off
        for eps in EPSILONS:
            model = replace(base, label_dp="off") if math.isinf(eps) else replace(base, dp_epsilon=eps)
            attacks[eps] = measured_attacks(model, keypair, alone=off["alone"])
    print(f"\n{'label-DP epsilon':<18}{'test AUC':>10}{'bound':>8}{'direct':>8}{'lstsq':>8}")
    for eps, r in zip(EPSILONS, rows_out):
        a = attacks.get(eps, {})
        fmt = lambda v: f"{v:>8.3f}" if v is not None else f"{'-':>8}"  # noqa: E731
        print(f"{'inf (off)' if math.isinf(eps) else f'{eps:g}':<18}{r['test_auc']:>10.4f}"
              f"{fmt(r['attack_bound'] if r['epsilon'] else None)}{fmt(a.get('direct'))}{fmt(a.get('least_squares'))}")
    none = attacks.get("none", {})
    print(f"{'no protection':<18}{unprotected:>10.4f}{'':>8}{fmt(none.get('direct'))}{fmt(none.get('least_squares'))}")
    print(f"{'one-hot LR pooled':<18}{lr:>10.4f}")
    print(f"{'guest alone (LR)':<18}{alone:>10.4f}")
    print(f"the same two with the model's vocabulary (values with >= {k} training rows): {lr_k:.4f}, {alone_k:.4f}")


if __name__ == "__main__":
    main()
